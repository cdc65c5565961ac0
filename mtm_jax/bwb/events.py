"""A BWB session file as our event session (mtm_jax.datasets.events.session.EventSession).

`event_session(session, splits, window)` turns a read BWB file (mtm_jax.bwb.sessions.Session)
into the event session our data sets are built from (data_builders: spike_events, bwb_binned):

- session_id the eid; unit_ids `<eid>/<unit uuid>` (BWB's TS2 ids); unit_regions the Cosmos
  region; the spikes as stored.
- The split set: `pretrain` (the file's pretrain_train / pretrain_val domains), `ts1` or `ts2`
  (ts1_* / ts2_* train, val, test). Its "trials" are training windows: each split interval tiled
  with non-overlapping `window`-second windows from its start (the rest of an interval, and
  intervals shorter than a window, are dropped and counted in source_info). The session's splits
  are these windows. BWB's pretraining files have no test split; ours needs one (every builder
  writes all three), and no split may overlap another, so `pretrain` keeps BWB's train as train
  and cuts BWB's val windows in two in time: the first half (rounded up) is val, the rest test.
  A val or test split left without a window (a short recording: BWB's TS2 val chunk begins at
  900 s) takes the last tenth of the train windows (`_borrow`, counted in source_info).
- Behaviour: the 50 Hz streams the file has, on their shared grid, in the order wheel_speed,
  whisker_motion_energy, left_paw_speed, right_paw_speed, licking_rate (behaviour_name names them,
  comma-separated). As BWB's TS1 treats them: whisker motion energy and paw speeds z-scored with
  the mean and std (floored at 1e-8) over the movement windows inside the train split (BWB's
  `_get_behavior_normalization`; paw speeds over their confident samples), wheel speed and licking
  rate raw. Paw speeds at unconfident samples are set to 0 (the train mean) and counted. Grid
  samples where a stream is missing or a value is NaN are dropped and counted. Weights are 1.
  A file with no behaviour stream gets one constant-zero dimension `none` at 50 Hz over the
  recording with weights 0 (the MtM families do not train on behaviour; POYO learns nothing from
  it).
"""

from __future__ import annotations

import functools

import numpy as np

from mtm_jax.bwb import sessions as sessions_lib
from mtm_jax.bwb import tasks
from mtm_jax.datasets.events import session as session_lib

SPLIT_SETS = {
  "pretrain": {"train": "pretrain_train", "val": "pretrain_val"},
  "ts1": {"train": "ts1_train", "val": "ts1_val", "test": "ts1_test"},
  "ts2": {"train": "ts2_train", "val": "ts2_val", "test": "ts2_test"},
}
STREAMS = (  # (group, signal) in the order of the behaviour dimensions
  ("wheel", "wheel_speed"),
  ("whisker", "whisker_motion_energy"),
  ("paws", "left_paw_speed"),
  ("paws", "right_paw_speed"),
  ("licks", "licking_rate"),
)
Z_SCORED = ("whisker_motion_energy", "left_paw_speed", "right_paw_speed")  # BWB's normalised signals
CONFIDENCE = {"left_paw_speed": "is_left_paw_confident", "right_paw_speed": "is_right_paw_confident"}
FS = 50.0  # Hz, BWB's behaviour grid
STD_FLOOR = 1e-8
GRID_TOLERANCE = 1e-3  # s: a stream's sample within this of the shared grid is on it


def tile(start: np.ndarray, end: np.ndarray, window: float) -> tuple[np.ndarray, int, float]:
  """Intervals (start (I,), end (I,)) tiled with `window`-second windows from each start:
  ([n, 2] float64 windows, intervals shorter than a window, seconds left over). A window's end
  is the next one's start exactly (no overlap in float64); every window ends by its interval's end."""
  out, short, rest = [], 0, 0.0
  for s, e in zip(np.asarray(start, np.float64), np.asarray(end, np.float64)):
    n = int(np.floor((e - s) / window))
    starts = np.add.accumulate(np.r_[s, np.full(max(n - 1, 0), window)])[:n]
    while n and starts[n - 1] + window > e:
      n -= 1
    starts = starts[:n]
    short += n == 0
    rest += float(e - s) - n * window
    out.append(np.stack([starts, starts + window], axis=1))
  return (np.concatenate(out) if out else np.zeros((0, 2))), short, rest


def _inside(times: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
  """[T] bool: whether each time lies in some [start, end) (intervals may overlap)."""
  opened = np.searchsorted(np.sort(start), times, side="right")
  closed = np.searchsorted(np.sort(end), times, side="right")
  return opened > closed


def _grid(session: sessions_lib.Session, names: list[tuple[str, str]]) -> tuple[np.ndarray, list[np.ndarray]]:
  """The shared 50 Hz grid samples every stream of `names` has: (timestamps [T], per stream the
  row of each grid sample in its own series [T])."""
  groups = list(dict.fromkeys(g for g, _ in names))
  t0 = session.behaviour[groups[0]].timestamps[0]
  steps = {}
  for group in groups:
    times = session.behaviour[group].timestamps
    k = np.rint((times - t0) * FS).astype(np.int64)
    off = np.abs(times - (t0 + k / FS))
    if off.size and (off.max() > GRID_TOLERANCE or np.any(np.diff(k) <= 0)):
      raise sessions_lib.SessionFileError(
        f"{session.path}: field '{group}.timestamps': expected sorted samples on the shared {FS:g} Hz grid "
        f"(of '{groups[0]}'); one is {off.max():.4g} s off it"
      )
    steps[group] = k
  common = functools.reduce(np.intersect1d, steps.values())
  rows = {g: np.searchsorted(k, common) for g, k in steps.items()}
  stamps = session.behaviour[groups[0]].timestamps[rows[groups[0]]]
  return stamps, [rows[g] for g, _ in names]


def behaviour(session: sessions_lib.Session, train: tuple[np.ndarray, np.ndarray]) -> tuple[dict, dict]:
  """The behaviour fields of the event session (module docstring) and what was dropped:
  ({behaviour_name, behaviour_timestamps [T], behaviour_values [T, D], behaviour_weights [T]},
  source_info entries). train: the train split's (start, end) domain, for the z-scoring."""
  names = [(g, s) for g, s in STREAMS if g in session.behaviour]
  if not names:
    start, end = float(session.domain[0].min()), float(session.domain[1].max())
    stamps = start + np.arange(int(np.floor((end - start) * FS)) + 1) / FS
    fields = dict(
      behaviour_name="none",
      behaviour_timestamps=stamps,
      behaviour_values=np.zeros((len(stamps), 1), np.float32),
      behaviour_weights=np.zeros(len(stamps), np.float32),
    )
    return fields, dict(behaviour="none: the file has no behaviour stream")
  stamps, rows = _grid(session, names)
  movement = session.task_aligned["movement_window"]
  in_train = _inside(stamps, *train) & _inside(stamps, movement["start"], movement["end"])
  columns, unconfident, scales = [], 0, {}
  for (group, signal), row in zip(names, rows):
    values = np.asarray(session.behaviour[group].values[signal], np.float64)[row]
    if signal in Z_SCORED:
      confident = np.ones(len(values), bool)
      if signal in CONFIDENCE:
        confident = np.asarray(session.behaviour[group].values[CONFIDENCE[signal]], bool)[row]
      pool = values[in_train & confident & np.isfinite(values)]
      if pool.size == 0:
        pool = values[confident & np.isfinite(values)]  # no movement window in train: all its samples
      mean, std = (float(pool.mean()), max(float(pool.std()), STD_FLOOR)) if pool.size else (0.0, 1.0)
      scales[signal] = dict(mean=mean, std=std)
      values = (values - mean) / std
      unconfident += int(np.sum(~confident))
      values = np.where(confident, values, 0.0)
    columns.append(values)
  values = np.stack(columns, axis=1)
  finite = np.all(np.isfinite(values), axis=1)
  fields = dict(
    behaviour_name=",".join(s for _, s in names),
    behaviour_timestamps=stamps[finite],
    behaviour_values=values[finite].astype(np.float32),
    behaviour_weights=np.ones(int(finite.sum()), np.float32),
  )
  largest = max(len(session.behaviour[g].timestamps) for g, _ in names)
  info = dict(
    behaviour_z_scored=scales,
    behaviour_samples_off_shared_grid=int(largest - len(stamps)),
    behaviour_samples_nan=int(np.sum(~finite)),
    paw_samples_unconfident=unconfident,
  )
  return fields, info


def _borrow(windows: dict) -> dict:
  """Fills an empty val or test split with the last windows of train (a tenth of them, at least
  one, val before test), in place, when train keeps at least one: a short recording (BWB's TS2
  val chunk begins at 900 s; a pretraining val domain of one window) still makes a data set.
  Returns {split: windows lent}. The benchmark never scores these splits: adaptation trains on
  train, the val loss is only logged, and BWB's test windows come from the file (targets)."""
  lent = {}
  for name in ("val", "test"):
    train = windows["train"]
    if len(windows.get(name, ())) == 0 and len(train) >= 2:
      k = max(1, round(0.1 * len(train)))
      windows["train"], windows[name] = train[:-k], train[-k:]
      lent[name] = k
  return lent


def event_session(session: sessions_lib.Session, splits: str, window: float = 1.0) -> session_lib.EventSession:
  """The event session of BWB session `session` with split set `splits` ("pretrain", "ts1",
  "ts2"), its trials `window`-second training windows (module docstring); validated.
  SessionFileError naming the file when it holds no such split domains; ValueError for a bad
  split set or window, or a split left without a window."""
  if splits not in SPLIT_SETS:
    raise ValueError(f"{session.path}: split set {splits!r}: expected one of {list(SPLIT_SETS)}")
  if not (np.isfinite(window) and window > 0):
    raise ValueError(f"{session.path}: window {window!r}: expected a positive number of seconds")
  wanted = SPLIT_SETS[splits]
  missing = [f"{d}_domain" for d in wanted.values() if d not in session.splits]
  if missing:
    kind = "an eval" if session.is_eval else "a pretraining"
    raise sessions_lib.SessionFileError(
      f"{session.path}: no {missing} for split set {splits!r}: it is {kind} session file "
      f"({session.unit_filtering}) holding the split domains {[f'{d}_domain' for d in session.splits]}"
    )
  windows, info = {}, dict(bwb_splits=splits, window=float(window), unit_filtering=session.unit_filtering)
  info.update(dataset_version=session.dataset_version, windows={}, short_intervals={}, dropped_seconds={})
  for name, domain in wanted.items():
    windows[name], short, rest = tile(*session.splits[domain], window)
    info["short_intervals"][name], info["dropped_seconds"][name] = short, round(rest, 6)
  if splits == "pretrain":
    val = windows["val"]
    half = (len(val) + 1) // 2
    windows["val"], windows["test"] = val[:half], val[half:]
    info["test"] = "the later half of the pretrain_val windows (val: the earlier half)"
  borrowed = _borrow(windows)
  if borrowed:
    info["borrowed_from_train"] = borrowed
  empty = [n for n, w in windows.items() if len(w) == 0]
  if empty:
    raise ValueError(
      f"{session.path}: split(s) {empty} of split set {splits!r} hold no {window} s window (train holds "
      f"{len(windows['train'])}: too few to lend val and test one each)"
    )
  info["windows"] = {n: len(w) for n, w in windows.items()}
  trials = np.concatenate(list(windows.values()))
  trials = trials[np.argsort(trials[:, 0], kind="stable")]
  times = session.spike_times
  lo, hi = np.searchsorted(times, trials[:, 0]), np.searchsorted(times, trials[:, 1])
  info["spikes_outside_windows"] = int(len(times) - np.sum(hi - lo))
  fields, behaviour_info = behaviour(session, session.splits[wanted["train"]])
  info.update(behaviour_info)
  out = session_lib.EventSession(
    session_id=session.session_id,
    spike_times=np.asarray(times, np.float64),
    spike_units=np.asarray(session.spike_units, np.int32),
    unit_ids=np.asarray(tasks.unit_ids(session.session_id, session.units.ids)),
    unit_regions=np.asarray(session.units.cosmos).astype(str),
    trial_starts=trials[:, 0].copy(),
    trial_ends=trials[:, 1].copy(),
    splits=windows,
    source_info=info,
    source_files=[session.path],
    **fields,
  )
  out.validate(where=f"{session.path} ({splits})")
  return out
