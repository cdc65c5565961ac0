"""BrainWideBench's TS1 scored items of one eval session, as its TS1 test loop draws them, in NumPy.

Read from BWB's code (brainbench-org/ibl-bwb): `ibl_bwb_eval/tasks/ts1.py` (each task's value,
interval, domain, timestamp and mask keys), `src/ts1/ts1_dataset.py` (`get_sampling_intervals`,
`dataset_transform`, `_get_target`), `src/ts1/ts1_test_mixin.py` (a `TrialSampler` over those
intervals, unshuffled: one item per interval, sliced with torch_brain's `Data.slice`), and the
pipeline's `_get_behavior_normalization` and `_fill_interval_confidence_counts`:

- Items of a split: the intervals task_aligned_intervals.domain & ts1_<split>_domain & the task's
  window table (choice: [first movement - 1 s, first movement]; reward, licking_rate: [feedback,
  + 1 s]; stimulus_contrast: [stimOn - 0.9 s, stimOn + 0.1 s]; per-bin tasks but licking:
  movement_window [first movement, + 1 s]) & the task's domain (the window table itself for
  class tasks, the behaviour stream's domain [t0, t0 + n / 50) for per-bin tasks), intersected
  in this order with temporaldata's `Interval.__and__`. Paw tasks first drop the movement
  windows with no confident pose sample (`num_<side>_paw_confident` > 0; computed here as the
  pipeline does when a file lacks the column).
- trial_id: the `trial_index` of the window-table row overlapping the item (end > start and
  start < end, `Interval.slice`); the index into the session's sorted trials table.
- Class labels: the window table's own column (choice 1 left / 0 right; reward 1 / 0;
  stimulus_contrast 0-4 for contrasts 0, .0625, .125, .25, 1), the class indices the scorer's
  argmax is compared with.
- Per-bin values: the 50 Hz stream sliced over [start, end) as `RegularTimeSeries.slice`
  snaps it (ceil of (t - t0) * 50, within 1e-9 of an integer counted as that integer);
  wheel_speed raw; whisker_motion_energy and the paw speeds (x - mean) / std with the file's
  `ts1_normalize.<stream>.<signal>` (mean, std), which the pipeline computes over the samples of
  movement_window & ts1_train_domain (paws: confident samples only, unless a window has none),
  std floored at 1e-8, and which this module recomputes the same way (the session reader does not
  read it); licking_rate round(rate / 50) as int32 (licks per 20 ms bin). Then float32.
- timestamps: the slice's sample times relative to the item start (BWB's writer stores them as
  float32); mask: the paw stream's `is_<side>_paw_confident` over the same samples.
- A session without the task's behaviour stream has no items for it: BWB's
  `get_sampling_intervals` asserts the stream exists, so the task is not run (ts1_items: None).
- An item whose slice is not exactly 50 samples (a window clipped by the stream's domain)
  raises TargetError: BWB's collate cannot stack it either.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from mtm_jax.bwb import tasks, windows

SFREQ = 50.0  # Hz: BEHAVIOR_SFREQ, the grid of every behaviour stream
NORM_EPS = 1e-8  # the pipeline's floor on normalisation std
SLICE_EPS = 1e-9  # RegularTimeSeries.slice's rounding buffer
SPLITS = ("train", "val", "test")
# task -> (window table, stream, signal, mask signal)
TASK_SOURCE = {
  "choice": ("choice", None, None, None),
  "reward": ("reward", None, None, None),
  "stimulus_contrast": ("stimulus_contrast", None, None, None),
  "wheel_speed": ("movement_window", "wheel", "wheel_speed", None),
  "whisker_motion_energy": ("movement_window", "whisker", "whisker_motion_energy", None),
  "left_paw_speed": ("movement_window", "paws", "left_paw_speed", "is_left_paw_confident"),
  "right_paw_speed": ("movement_window", "paws", "right_paw_speed", "is_right_paw_confident"),
  "licking_rate": ("licking_window", "licks", "licking_rate", None),
}
ZSCORED = ("whisker_motion_energy", "left_paw_speed", "right_paw_speed")
PAW_MASK = {"left_paw_speed": "is_left_paw_confident", "right_paw_speed": "is_right_paw_confident"}


class TargetError(ValueError):
  """A session from which BWB's scored items cannot be drawn (BWB's own loop would fail too)."""


@dataclasses.dataclass(frozen=True)
class TS1Items:
  """The K scored items of one TS1 task on one session and split.

  trial_id (K,) int64; window_start (K,) float64 absolute item starts; timestamps (K, 50) float64
  sample times relative to window_start (None for class tasks); values (K,) int64 class labels or
  (K, 50) float32 per-bin targets (licking_rate: counts); mask (K, 50) bool for the paw tasks,
  else None."""

  task: str
  split: str
  trial_id: np.ndarray
  window_start: np.ndarray
  timestamps: np.ndarray | None
  values: np.ndarray
  mask: np.ndarray | None


def _grid(session, stream: str):
  """(t0, n, series) of a behaviour stream on the 50 Hz grid; TargetError if it is not on it."""
  series = session.behaviour[stream]
  t = np.asarray(series.timestamps, np.float64)
  if t.size < 2 or not np.allclose(np.diff(t), 1.0 / SFREQ):
    raise TargetError(f"{session.path}: field {stream!r}: expected a time series on the {SFREQ:g} Hz grid")
  return float(t[0]), t.size, series


def _time_to_idx(time: float, t0: float, n: int) -> tuple[int, float]:
  """RegularTimeSeries._time_to_idx: (sample index, its time) for `time`, clamped to the domain."""
  end = t0 + n / SFREQ
  if time <= t0:
    return 0, t0
  if time > end:
    return n, end
  idx_float = (time - t0) * SFREQ
  rounded = round(idx_float)
  if abs(idx_float - rounded) < SLICE_EPS:
    idx_float = float(rounded)
  idx = math.ceil(idx_float)
  return idx, t0 + idx / SFREQ


def slice_indices(start: float, end: float, t0: float, n: int) -> tuple[int, int, float]:
  """(first, last + 1, first sample time) of RegularTimeSeries.slice(start, end) on a contiguous
  stream of n samples from t0 (empty: first == last)."""
  i0, out_start = _time_to_idx(start, t0, n)
  i1, out_end = _time_to_idx(end, t0, n)
  lo, hi = max(t0, out_start), min(t0 + n / SFREQ, out_end)
  if not lo < hi:
    return i0, i0, out_start
  return i0, i1, lo


def _confident_counts(session, table: dict, mask_name: str) -> np.ndarray:
  """(K,) confident paw samples in each window (the pipeline's num_<side>_paw_confident)."""
  key = "num_" + mask_name.removeprefix("is_")
  if key in table:
    return np.asarray(table[key])
  t0, n, series = _grid(session, "paws")
  mask = np.asarray(series.values[mask_name], bool)
  spans = [slice_indices(s, e, t0, n) for s, e in zip(table["start"], table["end"], strict=True)]
  return np.array([mask[a:b].sum() for a, b, _ in spans], np.int64)


def normalization(session, stream: str, signal: str) -> tuple[float, float]:
  """(mean, std) of `signal` as BWB's pipeline stores it in ts1_normalize: over the samples of
  movement_window & ts1_train_domain (paw signals: the confident ones, all when a window has
  none), std (ddof 0) floored at 1e-8."""
  table = session.task_aligned["movement_window"]
  starts, ends = windows.intersect(table["start"], table["end"], *session.splits["ts1_train"])
  t0, n, series = _grid(session, stream)
  values = np.asarray(series.values[signal])
  mask_name = PAW_MASK.get(signal) if stream == "paws" else None
  chunks = []
  for s, e in zip(starts, ends, strict=True):
    a, b, _ = slice_indices(s, e, t0, n)
    chunk = values[a:b]
    if mask_name is not None:
      confident = np.asarray(series.values[mask_name], bool)[a:b]
      chunk = chunk[confident] if confident.any() else chunk
    if chunk.size:
      chunks.append(chunk)
  if not chunks:
    raise TargetError(f"{session.path}: no {stream}.{signal} sample in the train split's movement windows")
  pooled = np.concatenate(chunks)
  return float(pooled.mean()), float(max(pooled.std(), NORM_EPS))


def ts1_items(session, task: str, split: str) -> TS1Items | None:
  """The scored items of TS1 `task` ("choice", ... or "ts1-choice") on eval `session` (a read
  Session, TS1 is reported on the all_units build) for `split` "train", "val" or "test";
  None when the session has no stream for the task (BWB does not run it there)."""
  task = tasks.ts1_spec(task).task
  if split not in SPLITS:
    raise ValueError(f"split {split!r}: expected one of {SPLITS}")
  if not session.is_eval:
    raise TargetError(f"{session.path}: not an eval session (no ts1_{split}_domain)")
  table_name, stream, signal, mask_name = TASK_SOURCE[task]
  if stream is not None and (stream not in session.behaviour or signal not in session.behaviour[stream].values):
    return None
  table = session.task_aligned[table_name]
  for key in ("start", "end", "trial_index") + ((table_name,) if stream is None else ()):
    if key not in table:
      raise TargetError(f"{session.path}: field 'task_aligned_intervals.{table_name}.{key}': missing")
  rows = np.arange(len(table["start"]))
  if mask_name is not None:
    rows = rows[_confident_counts(session, table, mask_name) > 0]
  w_start, w_end = np.asarray(table["start"], np.float64)[rows], np.asarray(table["end"], np.float64)[rows]
  dom = session.task_aligned["domain"]
  starts, ends = windows.intersect(dom["start"], dom["end"], *session.splits[f"ts1_{split}"])
  starts, ends = windows.intersect(starts, ends, w_start, w_end)
  if stream is None:
    starts, ends = windows.intersect(starts, ends, w_start, w_end)
  else:
    t0, n, series = _grid(session, stream)
    starts, ends = windows.intersect(starts, ends, [t0], [t0 + n / SFREQ])
  order = np.argsort(w_start, kind="stable")  # Interval.slice sorts; rows overlapping [s, e)
  sorted_start, sorted_end = w_start[order], w_end[order]
  lo = np.searchsorted(sorted_end, starts, side="right")
  hi = np.searchsorted(sorted_start, ends, side="left")
  if np.any(hi - lo != 1):
    i = int(np.flatnonzero(hi - lo != 1)[0])
    raise TargetError(
      f"{session.path}: ts1-{task} item [{starts[i]!r}, {ends[i]!r}) overlaps {hi[i] - lo[i]} rows of "
      f"task_aligned_intervals.{table_name} (BWB's collate expects one trial per item)"
    )
  picked = rows[order[lo]]
  trial_id = np.asarray(table["trial_index"])[picked].astype(np.int64)
  if stream is None:
    values = np.asarray(table[table_name])[picked].astype(np.int64)
    return TS1Items(task, split, trial_id, starts, None, values, None)
  spans = [slice_indices(s, e, t0, n) for s, e in zip(starts, ends, strict=True)]
  short = [i for i, (a, b, _) in enumerate(spans) if b - a != tasks.TIMESTEPS]
  if short:
    i = short[0]
    raise TargetError(
      f"{session.path}: ts1-{task} item [{starts[i]!r}, {ends[i]!r}) holds {spans[i][1] - spans[i][0]} samples of "
      f"{stream}, not {tasks.TIMESTEPS} (BWB's collate cannot stack it)"
    )
  index = np.array([a for a, _, _ in spans], np.int64)[:, None] + np.arange(tasks.TIMESTEPS)
  first = np.array([t for _, _, t in spans], np.float64)
  timestamps = (first - starts)[:, None] + np.arange(tasks.TIMESTEPS, dtype=np.float64) / SFREQ
  raw = np.asarray(series.values[signal])[index]
  if task == "licking_rate":
    values = np.round(raw / SFREQ).astype(np.int32).astype(np.float32)
  elif task in ZSCORED:
    mean, std = normalization(session, stream, signal)
    values = ((raw - mean) / std).astype(np.float32)
  else:
    values = raw.astype(np.float32)
  mask = np.asarray(series.values[mask_name], bool)[index] if mask_name is not None else None
  return TS1Items(task, split, trial_id, starts, timestamps, values, mask)
