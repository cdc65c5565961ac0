"""BrainWideBench's split protocol, recomputed from a session's own data, and a check of a file.

Read from BWB's pipeline (brainbench-org/ibl-bwb, ibl_brain_wide_bench_2026/pipeline.py):
`load_trials` and `EXCLUDED_TRIALS_QUERY` (trial exclusions), `extract_task_aligned_intervals`
(the per-task windows and their union), `get_causal_splits` (TS1 and pretraining),
`get_chunked_splits` (TS2) and `co_smoothing_held_out_mask` (the co-smoothing hold-out), with
the constants PRETRAIN_*_RATIO, EVAL_*_RATIO, MIN_SPLIT_GAP_SEC, SPLIT_CHUNK_DURATION_SEC and
TS2_CO_SMOOTHING_{VAL,TEST}_SALT. Every operation is redone in the same float64 order, so a
file BWB wrote compares bit for bit.

Intervals are (start (I,), end (I,)) float64 pairs. The intersections use temporaldata's
`Interval.__and__` (windows.intersect); BWB ran torch_brain.data's copy of it. Chunk edges use
np.linspace as temporaldata's `Interval.arange` does; BWB pinned numpy 1.24.4.

Not read: filters that BWB's training code (src/core) may add per task (e.g. paw windows by
their confident-sample counts); the pipeline's own exclusion is one `is_valid` for all tasks,
plus the unbiased blocks dropped from block_prior.
"""

from __future__ import annotations

import hashlib

import numpy as np

from mtm_jax.bwb import windows

PRETRAIN_RATIOS = (0.9, 0.1, 0.0)
EVAL_RATIOS = (0.4, 0.2, 0.4)
MIN_SPLIT_GAP = 20.0  # seconds between two adjacent splits
CHUNK = 300  # seconds: TS2's chunks (an int in BWB's code)
CHUNK_PATTERN = ("train", "test", "train", "val", "test")  # chunk i gets CHUNK_PATTERN[i % 5]
END_TOL = 1e-6  # a task-aligned interval within this of the recording end "contains" it
GAP_EPS = 1e-12  # added to a gap's end that falls outside every task interval
SALT_VAL = "ts2_co_smoothing_val"
SALT_TEST = "ts2_co_smoothing_test"
HELD_OUT_RATIO = 0.1
MIN_RT, MAX_RT = 0.0, 10.0  # reaction time = movement onset - stimulus onset
REQUIRED = ("stim_on_time", "choice", "feedback_time", "probability_left", "movement_onset_time", "feedback_type")
NO_CHOICE = 2  # stored choice of a raw ONE choice 0
BLOCK_UNBIASED = -1  # stored block_prior of probability_left 0.5


class SplitError(ValueError):
  """Inputs from which BWB's split protocol cannot be computed (BWB's pipeline would stop)."""


class SplitMismatch(ValueError):
  """A session file whose stored splits, masks or exclusions differ from the recomputed ones."""


def valid_trials(trials: dict) -> np.ndarray:
  """(T,) bool: BWB's `is_valid` from the stored trial columns {name: (T,)}: dropped when the
  reaction time (movement_onset_time - stim_on_time) is < 0 or > 10 s, a REQUIRED column is NaN,
  or choice is no-choice (stored 2, ONE's raw 0). BWB evaluates this on ONE's raw table; the
  stored columns are the same values renamed (choice remapped, NaN kept)."""
  missing = [k for k in REQUIRED if k not in trials]
  if missing:
    raise SplitError(f"trials: missing column(s) {missing} (needed for BWB's trial exclusions)")
  col = {k: np.asarray(trials[k], np.float64) for k in REQUIRED}
  rt = col["movement_onset_time"] - col["stim_on_time"]
  with np.errstate(invalid="ignore"):
    bad = (rt < MIN_RT) | (rt > MAX_RT) | (col["choice"] == NO_CHOICE)
  for k in REQUIRED:
    bad |= np.isnan(col[k])
  return ~bad


def task_aligned(trials: dict, is_valid: np.ndarray | None = None) -> dict:
  """BWB's task-aligned intervals of the valid trials: {task: (start (K,), end (K,), trial_index
  (K,))} for stimulus_side, stimulus_contrast ([stim - 0.9, stim + 0.1]), choice ([move - 1,
  move]), reward and licking_window ([feedback, + 1]), movement_window ([move, + 1]),
  block_prior ([stim - 1, stim], biased blocks only), and "domain" (start, end): per trial the
  union's hull. is_valid (T,) defaults to valid_trials(trials)."""
  valid = valid_trials(trials) if is_valid is None else np.asarray(is_valid, bool)
  index = np.arange(valid.shape[0])[valid]
  stim, move, fb = (
    np.asarray(trials[k], np.float64)[valid] for k in ("stim_on_time", "movement_onset_time", "feedback_time")
  )
  out = {
    "stimulus_side": (stim - 0.9, stim + 0.1, index),
    "stimulus_contrast": (stim - 0.9, stim + 0.1, index),
    "choice": (move - 1.0, move, index),
    "reward": (fb, fb + 1.0, index),
    "movement_window": (move, move + 1.0, index),
    "licking_window": (fb, fb + 1.0, index),
  }
  biased = np.asarray(trials["block_prior"])[valid] != BLOCK_UNBIASED
  out["block_prior"] = (stim[biased] - 1.0, stim[biased], index[biased])
  starts, ends = np.full(index.shape[0], np.inf), np.full(index.shape[0], -np.inf)
  for name in ("stimulus_side", "stimulus_contrast", "choice", "movement_window", "licking_window", "reward"):
    starts, ends = np.minimum(starts, out[name][0]), np.maximum(ends, out[name][1])
  starts[biased] = np.minimum(starts[biased], out["block_prior"][0])
  ends[biased] = np.maximum(ends[biased], out["block_prior"][1])
  out["domain"] = (starts, ends)
  return out


def _offset_time(offset, total, cum, starts, ends):
  """The task-interval edge nearest (in cumulative task time) to `offset` seconds of task time."""
  offset = float(np.clip(offset, 0.0, total))
  idx = min(int(np.searchsorted(cum, offset, side="left")), cum.shape[0] - 1)
  prev = 0.0 if idx == 0 else float(cum[idx - 1])
  nxt = float(cum[idx])
  return float(starts[idx]) if (offset - prev) <= (nxt - offset) else float(ends[idx])


def _after_gap(boundary, gap, starts, ends, edges, label):
  """`boundary` + gap, moved to the next task-interval edge when it falls inside an interval."""
  gap_end = boundary + gap
  if np.any((starts < gap_end) & (gap_end < ends)):
    later = edges[edges >= gap_end]
    if not later.size:
      raise SplitError(f"{label}: no task-interval edge after {gap_end}")
    shifted = float(later[0])
  else:
    shifted = float(gap_end) + GAP_EPS
  if np.any((starts < shifted) & (shifted < ends)) or shifted - boundary < gap:
    raise SplitError(f"{label} {shifted}: inside a task interval or less than {gap} s after {boundary}")
  return shifted


def _one(start, end):
  return np.array([start], np.float64), np.array([end], np.float64)


def causal_splits(domain, task_domain, ratios=EVAL_RATIOS, gap=MIN_SPLIT_GAP) -> dict:
  """BWB's get_causal_splits: {"train", "val", "test"} -> (start (1,), end (1,)) ("test" (0,)
  when its ratio is 0, as in pretraining: then "val" runs to the recording end).

  domain (start (I,), end (I,)): the recording (data.domain); task_domain: the task-aligned
  domain, clipped to domain. The cuts sit at ratios of the total task-aligned time, each moved
  to the nearer edge of the task interval it falls in; val and test then start `gap` s later
  (moved on to the next task edge if that lands inside a task interval, else + 1e-12). A gap
  ending exactly on a task start, + 1e-12, lands inside that interval: BWB's assertion stops its
  pipeline there, and SplitError is raised here."""
  train_ratio, val_ratio, test_ratio = ratios
  if not np.isclose(train_ratio + val_ratio + test_ratio, 1.0) or gap < 0:
    raise SplitError(f"ratios {ratios} must sum to 1 and gap {gap} must be >= 0")
  d_start, d_end = (np.asarray(x, np.float64) for x in domain)
  if not d_start.size:
    raise SplitError("domain: empty (expected the recording's interval)")
  starts, ends = windows.intersect(*task_domain, d_start, d_end)
  if not starts.size:
    raise SplitError("task-aligned domain: no interval inside the recording")
  cum = np.cumsum(ends - starts)
  total = float(np.sum(ends - starts))
  edges = np.sort(np.concatenate([starts, ends]))
  train_end = _offset_time(total * train_ratio, total, cum, starts, ends)
  val_end = _offset_time(total * (train_ratio + val_ratio), total, cum, starts, ends)
  val_start = _after_gap(train_end, gap, starts, ends, edges, "val_start")
  out = {"train": _one(d_start[0], train_end)}
  if test_ratio > 0:
    out["val"] = _one(val_start, val_end)
    out["test"] = _one(_after_gap(val_end, gap, starts, ends, edges, "test_start"), d_end[-1])
  else:
    out["val"] = _one(val_start, d_end[-1])
    out["test"] = (np.zeros(0), np.zeros(0))
  return out


def chunk_edges(start: float, end: float, step=CHUNK) -> tuple[np.ndarray, np.ndarray]:
  """(start (C,), end (C,)): temporaldata's Interval.arange(start, end, step, include_end=True),
  whole steps by np.linspace and a shorter last chunk up to `end`."""
  whole = int(np.floor((end - start) / step))
  t = np.linspace(start, start + whole * step, whole + 1, dtype=np.float64)
  if t[-1] < end:
    t = np.append(t, end)
  return t[:-1].copy(), t[1:].copy()


def chunked_splits(domain, task_domain, gap=MIN_SPLIT_GAP, tol=END_TOL) -> dict:
  """BWB's get_chunked_splits: {"train", "val", "test"} -> (start (C_s,), end (C_s,)).

  The recording [domain start, domain end] in 300 s chunks, chunk i assigned
  CHUNK_PATTERN[i % 5] = train, test, train, val, test (repeating). A task-aligned interval
  (task_domain, not clipped) overlapping two chunks moves their shared edge to its end (or its
  start, when the second chunk holds more of it). An interval containing the recording end
  (within tol) is skipped. Then each chunk after the first starts at the first task-interval
  start >= the previous chunk's end + gap (its own end if none); empty chunks are dropped.

  BWB's code asserts that the interval containing the recording end overlaps no chunk, which
  the last chunk (ending at the recording end) always contradicts: BWB's pipeline would stop on
  such a session, so its files cannot hold one. Here the interval is skipped, as BWB's comment
  and warning describe."""
  d_start, d_end = (np.asarray(x, np.float64) for x in domain)
  if not d_start.size:
    raise SplitError("domain: empty (expected the recording's interval)")
  rec_end = d_end[-1]
  c_start, c_end = chunk_edges(d_start[0], rec_end)
  t_start, t_end = (np.asarray(x, np.float64) for x in task_domain)
  for i, (s, e) in enumerate(zip(t_start, t_end, strict=True)):
    hit = np.flatnonzero((c_start <= e) & (c_end >= s))
    if s - tol <= rec_end <= e + tol:
      continue
    if hit.size > 2:
      raise SplitError(f"task-aligned domain interval {i} [{s}, {e}] overlaps {hit.size} chunks (BWB expects <= 2)")
    if hit.size == 2:
      a, b = hit
      first = min(e, c_end[a]) - max(s, c_start[a])
      second = min(e, c_end[b]) - max(s, c_start[b])
      c_end[a] = c_start[b] = e if first >= second else s
  if gap > 0:
    for i in range(1, c_start.shape[0]):
      later = t_start[t_start >= c_end[i - 1] + gap]
      c_start[i] = min(later[0], c_end[i]) if later.size else c_end[i]
  kind = np.array([CHUNK_PATTERN[i % 5] for i in range(c_start.shape[0])])
  keep = c_start < c_end
  if np.any(c_start[keep][1:] - c_end[keep][:-1] < gap - tol):
    raise SplitError(f"two adjacent TS2 chunks are closer than {gap} s")
  return {name: (c_start[keep & (kind == name)], c_end[keep & (kind == name)]) for name in ("train", "val", "test")}


def held_out_mask(unit_ids, salt: str, ratio: float = HELD_OUT_RATIO) -> np.ndarray:
  """(N,) bool: the k = max(1, round(ratio * N)) units first in the order of the hex digest of
  sha256("<salt>:<unit uuid>") (Python's round: halves to even, round(2.5) = 2)."""
  ids = [u.decode() if isinstance(u, bytes) else str(u) for u in unit_ids]
  k = max(1, round(ratio * len(ids)))
  digests = [hashlib.sha256(f"{salt}:{u}".encode()).hexdigest() for u in ids]
  mask = np.zeros(len(ids), bool)
  mask[sorted(range(len(ids)), key=digests.__getitem__)[:k]] = True
  return mask


def session_splits(session) -> dict:
  """The splits BWB's protocol gives a read session (mtm_jax.bwb.sessions.Session), keyed as
  Session.splits: eval "ts1_{train,val,test}" (causal 40/20/40) and "ts2_{train,val,test}"
  (chunks); pretrain "pretrain_{train,val}" (causal 90/10). From the stored domain and the
  stored task-aligned domain (check_session checks both against the data first)."""
  dom = session.task_aligned["domain"]
  task_domain = (dom["start"], dom["end"])
  if session.is_eval:
    ts1 = causal_splits(session.domain, task_domain, EVAL_RATIOS)
    ts2 = chunked_splits(session.domain, task_domain)
    return {**{f"ts1_{k}": v for k, v in ts1.items()}, **{f"ts2_{k}": v for k, v in ts2.items()}}
  pre = causal_splits(session.domain, task_domain, PRETRAIN_RATIOS)
  return {"pretrain_train": pre["train"], "pretrain_val": pre["val"]}


def _compare(path, field, stored, expected):
  stored, expected = np.asarray(stored), np.asarray(expected)
  if stored.shape != expected.shape:
    raise SplitMismatch(f"{path}: {field}: stored {stored.shape[0]} entries, BWB's protocol gives {expected.shape[0]}")
  diff = np.flatnonzero(~((stored == expected) | ((stored != stored) & (expected != expected))))
  if diff.size:
    i = diff[0]
    raise SplitMismatch(
      f"{path}: {field}[{i}]: stored {stored[i].item()!r}, BWB's protocol gives {expected[i].item()!r}"
    )


def check_session(session) -> None:
  """Recomputes what BWB's pipeline derives from a read session and compares it, exactly, with
  what the file stores: trials.is_valid, the task-aligned tables (start, end, trial_index) and
  their domain, the recording domain ([first spike, last spike]), every split, and on eval
  selected_units builds the co-smoothing held-out masks (other builds must have none).
  SplitMismatch names the file, the split or field and the first difference."""
  path = session.path
  valid = valid_trials(session.trials)
  _compare(path, "trials.is_valid", np.asarray(session.trials["is_valid"], bool), valid)
  tasks = task_aligned(session.trials, valid)
  for name, table in session.task_aligned.items():
    want = tasks[name]
    for j, key in enumerate(("start", "end", "trial_index")):
      if key in table or j < 2:
        _compare(path, f"task_aligned_intervals.{name}.{key}", table.get(key, np.zeros(0)), want[j])
  if session.spike_times.size:  # data.domain = spikes.domain, "auto": [first spike, last spike]
    _compare(path, "domain.start", session.domain[0], session.spike_times[:1])
    _compare(path, "domain.end", session.domain[1], session.spike_times[-1:])
  for name, (start, end) in session_splits(session).items():
    _compare(path, f"{name}_domain.start", session.splits[name][0], start)
    _compare(path, f"{name}_domain.end", session.splits[name][1], end)
  units = session.units
  if session.is_eval and session.unit_filtering == "selected_units":
    for field, mask, salt in (("val", units.held_out_val, SALT_VAL), ("test", units.held_out_test, SALT_TEST)):
      _compare(path, f"units.ts2_co_smoothing_is_held_out_{field}", mask, held_out_mask(units.ids, salt))
  elif units.held_out_val is not None or units.held_out_test is not None:
    raise SplitMismatch(f"{path}: units.ts2_co_smoothing_is_held_out_*: stored, but BWB's pipeline writes none here")
