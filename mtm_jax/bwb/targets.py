"""BrainWideBench's scored items and ground truth, regenerated from session files as BWB's protocol does.

BWB does not distribute ground truth: its test loops compute the targets from the session files.
This module redoes that in NumPy (read from brainbench-org/ibl-bwb: `src/ts2/ts2_dataset.py`,
`src/ts2/ts2_test_mixin.py`, `src/ts3/protocol.py`, `src/core/dataset.py`, torch_brain 0.2.0a0's
`bin_spikes`, `SequentialFixedWindowSampler` and `Data.slice`; TS1 in mtm_jax.bwb.ts1_targets):

- TS2 windows: SequentialFixedWindowSampler (1 s, stride 0.02 s) over task_aligned_intervals.domain
  & ts2_<split>_domain (windows.window_starts, bit for bit); an interval shorter than 1 s raises,
  as the sampler does.
- TS2 targets: torch_brain's `bin_spikes` of each window's slice, as float32 counts. A window
  [s, e = fl(s + 1.0)) keeps the spikes with s <= t < e, at rel = fl(t - s); bins are counted from
  the spike domain's start within the window (0 inside [first spike, last spike]); when the
  window's length exceeds 50 bins by a rounding excess d = len - floor(len / 0.02 + 1e-3) * 0.02 > 0
  (about half of all windows, d < 1e-12), the spikes with rel < d are dropped and rel - d is binned;
  the bin is floor(rel * 50). This is not start + i * 0.02 edges: spikes within ~1e-12 s of an edge
  can land in the other bin (see bin_counts). Co-smoothing scores the units with
  units.ts2_co_smoothing_is_held_out_<split> in unit-table order; forecasting all units over the
  last int(0.1 * 50) = 5 bins. Unit ids are `<session id>/<uuid>` (torch_brain's uniquified
  units.id).
- TS3 (`get_md_from_dataset`): the eval selected_units units with qc_neural == PASS,
  qc_neural_alignment == PASS, label == 1, firing_rate > 1 and region_cosmos not void or root,
  sessions in the order given, units in file order; entity ids `<session id>/<uuid>` (BWB's
  dataset uniquifies units.id before the unit table is built). BWB also checks the total
  (3,222 eval units), which this module does not.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from mtm_jax.bwb import scoring, sessions, tasks, windows
from mtm_jax.bwb.ts1_targets import TargetError, TS1Items, ts1_items  # noqa: F401  (re-exported)

BIN_EPS = 1e-3  # bin_spikes' eps on the bin count
FORECAST_RATIO = 0.1
TS1_BUILD = "all_units"  # the build BWB reports TS1 on
EXCLUDED_REGIONS = ("void", "root")
MAX_PAIRS = 1 << 22  # (window, spike) pairs held at once by bin_counts


def bin_counts(
  spike_times,
  spike_units,
  starts,
  n_units: int,
  n_bins: int = 50,
  bin_size: float = 0.02,
  *,
  units=None,
  bins=None,
  domain=None,
  max_pairs: int = MAX_PAIRS,
) -> np.ndarray:
  """[W, n_bins, n_units] int32: spike counts of windows [s, s + n_bins * bin_size), as torch_brain's
  bin_spikes counts a window's slice (see the module docstring for its float rules).

  spike_times [S] float64 sorted; spike_units [S] in [0, n_units); starts [W] float64. units:
  unit indices to keep (output columns in that order), bins: an index or slice of the n_bins bins
  to keep (e.g. slice(-5, None)), both to save memory (a session has ~70k windows x 500 units).
  domain: (first, last) of the spike domain (default: the first and last spike times). Windows
  are processed in chunks of at most max_pairs (window, spike) pairs. TargetError for a window
  bin_spikes would not give n_bins bins (BWB's loop fails there)."""
  times = np.asarray(spike_times, np.float64)
  unit_of = np.asarray(spike_units, np.int64)
  starts = np.asarray(starts, np.float64)
  if times.ndim != 1 or unit_of.shape != times.shape or starts.ndim != 1:
    raise ValueError(f"bin_counts: expected [S] times and units and [W] starts; got {times.shape}, {starts.shape}")
  if times.size and (unit_of.min() < 0 or unit_of.max() >= n_units):
    raise ValueError(f"bin_counts: spike unit indices must lie in [0, {n_units})")
  column = np.full(n_units, -1, np.int64)
  keep_units = np.arange(n_units) if units is None else np.asarray(units, np.int64).reshape(-1)
  column[keep_units] = np.arange(keep_units.size)
  keep_bins = np.arange(n_bins)[slice(None) if bins is None else bins].reshape(-1)
  bin_column = np.full(n_bins, -1, np.int64)
  bin_column[keep_bins] = np.arange(keep_bins.size)
  out = np.zeros((starts.size, keep_bins.size, keep_units.size), np.int32)
  if not starts.size:
    return out
  first, last = (times[0], times[-1]) if domain is None else (float(domain[0]), float(domain[1]))
  ends = starts + n_bins * bin_size
  lo_rel = np.maximum(first, starts) - starts  # the sliced spike domain, relative to the window
  hi_rel = np.minimum(last, ends) - starts
  length = hi_rel - lo_rel
  discard = length - np.floor(length / bin_size + BIN_EPS) * bin_size
  origin = np.where(discard > 0, lo_rel + discard, lo_rel)
  got = np.round((hi_rel - origin) / bin_size)
  if np.any(got != n_bins):
    i = int(np.flatnonzero(got != n_bins)[0])
    raise TargetError(f"window at {starts[i]!r}: bin_spikes gives {int(got[i])} bins, not {n_bins} (spike domain)")
  lo = np.searchsorted(times, starts, side="left")
  hi = np.searchsorted(times, ends, side="left")
  counts = hi - lo
  cum = np.cumsum(counts)
  edges = np.unique(np.concatenate([[0], np.flatnonzero(np.diff(cum // max(1, max_pairs))) + 1, [starts.size]]))
  for a, b in zip(edges[:-1], edges[1:], strict=True):
    c = counts[a:b]
    window = np.repeat(np.arange(a, b), c)
    spike = np.arange(c.sum()) + np.repeat(lo[a:b] - np.concatenate([[0], np.cumsum(c)[:-1]]), c)
    rel = times[spike] - starts[window]
    kept = rel >= origin[window]
    window, spike, rel = window[kept], spike[kept], rel[kept]
    shifted = np.where(discard[window] > 0, rel - origin[window], rel)
    ts = np.where(discard[window] > 0, shifted, shifted - lo_rel[window])
    index = np.floor(ts * (1.0 / bin_size)).astype(np.int64)
    if index.size and (index.min() < 0 or index.max() >= n_bins):
      raise TargetError(f"bin_counts: a spike falls outside the {n_bins} bins of its window (bin_spikes fails too)")
    b_col, u_col = bin_column[index], column[unit_of[spike]]
    ok = (b_col >= 0) & (u_col >= 0)
    flat = ((window[ok] - a) * keep_bins.size + b_col[ok]) * keep_units.size + u_col[ok]
    size = (b - a) * keep_bins.size * keep_units.size
    out[a:b] += np.bincount(flat, minlength=size).reshape(b - a, keep_bins.size, keep_units.size).astype(np.int32)
  return out


def ts2_starts(session, split: str = "test") -> np.ndarray:
  """[W] float64: the TS2 window starts of `split` on eval `session`, bit for bit as BWB's sampler
  draws them over task_aligned_intervals.domain & ts2_<split>_domain."""
  if f"ts2_{split}" not in session.splits:
    raise TargetError(f"{session.path}: no ts2_{split}_domain (expected an eval session and split train/val/test)")
  dom = session.task_aligned["domain"]
  starts, ends = windows.intersect(dom["start"], dom["end"], *session.splits[f"ts2_{split}"])
  return windows.window_starts(starts, ends)


def ts2_targets(session, task: str, starts, split: str = "test") -> tuple[np.ndarray, list[str]]:
  """(targets, unit_ids) of TS2 `task` on the windows `starts` [W]: co_smoothing [W, 50, k] counts
  of the units held out for `split` (units.ts2_co_smoothing_is_held_out_<split>, in unit order);
  forecasting [W, 5, N] counts of all N units over the last 5 bins. float32 (bin_spikes'
  dtype in BWB's dataset); unit ids `<session id>/<uuid>`."""
  task = task.removeprefix("ts2-")
  if task not in tasks.TS2_TASKS:
    raise ValueError(f"TS2 task {task!r}: expected one of {tasks.TS2_TASKS}")
  if session.unit_filtering != tasks.SELECTED_UNITS:
    raise TargetError(f"{session.path}: TS2 needs the selected_units build; got {session.unit_filtering!r}")
  n = session.units.ids.shape[0]
  domain = (session.domain[0][0], session.domain[1][-1])
  if task == "co_smoothing":
    mask = session.units.held_out_test if split == "test" else session.units.held_out_val
    if mask is None or split not in ("val", "test"):
      raise TargetError(f"{session.path}: no units.ts2_co_smoothing_is_held_out_{split}")
    units, bins = np.flatnonzero(mask), None
  else:
    units, bins = np.arange(n), slice(tasks.TIMESTEPS - int(FORECAST_RATIO * tasks.TIMESTEPS), None)
  counts = bin_counts(
    session.spike_times,
    session.spike_units,
    starts,
    n,
    tasks.TIMESTEPS,
    tasks.BIN_SIZE,
    units=units,
    bins=bins,
    domain=domain,
  )
  return counts.astype(np.float32), tasks.unit_ids(session.session_id, session.units.ids[units])


def ts3_keep(session) -> np.ndarray:
  """(N,) bool: the units of an eval session BWB's TS3 scores (get_md_from_dataset's eval rules)."""
  cols = session.units.columns
  for key in ("qc_neural", "qc_neural_alignment", "label", "firing_rate"):
    if key not in cols:
      raise TargetError(f"{session.path}: field 'units.{key}': missing (TS3's unit rules need it)")
  return (
    (cols["qc_neural"].astype(str) == "PASS")
    & (cols["qc_neural_alignment"].astype(str) == "PASS")
    & (np.asarray(cols["label"], np.float64) == 1.0)
    & (np.asarray(cols["firing_rate"], np.float64) > 1.0)
    & ~np.isin(session.units.cosmos.astype(str), EXCLUDED_REGIONS)
  )


def ts3_probe_units(session) -> np.ndarray:
  """(N,) bool: the units of a pretrain session TS3's probe is fit on (BWB's load-time rules for
  pretrain sessions, docs/bwb.md: qc_neural not FAIL (WARNING kept), qc_neural_alignment PASS, a
  Cosmos region of COSMOS_LABELS, so not void or root); a QC column the file lacks is not applied."""
  cols = session.units.columns
  keep = np.isin(session.units.cosmos.astype(str), tasks.COSMOS_LABELS)
  if "qc_neural" in cols:
    keep &= cols["qc_neural"].astype(str) != "FAIL"
  if "qc_neural_alignment" in cols:
    keep &= cols["qc_neural_alignment"].astype(str) == "PASS"
  return keep


def ts3_targets(session_list) -> tuple[list[str], np.ndarray]:
  """(unit ids, labels [n] int64) of TS3 over eval selected_units sessions, in the order given:
  ids `<session id>/<uuid>`, labels indices into tasks.COSMOS_LABELS."""
  ids, labels = [], []
  for session in session_list:
    if not session.is_eval or session.unit_filtering != tasks.SELECTED_UNITS:
      raise TargetError(f"{session.path}: TS3 scores eval sessions of the selected_units build only")
    keep = ts3_keep(session)
    regions = session.units.cosmos.astype(str)[keep]
    unknown = sorted(set(regions) - set(tasks.COSMOS_LABELS))
    if unknown:
      raise TargetError(f"{session.path}: units.region_cosmos {unknown} are not TS3 labels {tasks.COSMOS_LABELS}")
    ids += tasks.unit_ids(session.session_id, session.units.ids[keep])
    labels.append(np.array([tasks.COSMOS_LABELS.index(r) for r in regions], np.int64))
  return ids, np.concatenate(labels) if labels else np.zeros(0, np.int64)


def _builds(session_paths) -> dict:
  """{(session id, build): Session} of the eval sessions among session_paths."""
  out = {}
  for path in session_paths:
    session = sessions.read_session(path)
    if not session.is_eval:
      continue
    key = (session.session_id, session.unit_filtering)
    if key in out:
      raise ValueError(f"{path}: session {key[0]} build {key[1]} given twice (also {out[key].path})")
    out[key] = session
  return out


def write_ground_truth(session_paths, gt_dir, suites=("ts1", "ts2", "ts3")) -> list[str]:
  """Writes BWB's ground truth of the eval sessions among session_paths (both builds may be given;
  pretrain sessions are ignored) under gt_dir with mtm_jax.bwb.scoring's writers; returns the
  files written. TS1 (test split, every task the session has a stream for) from each session's
  all_units build, TS2 (test windows) and TS3 from the selected_units builds. A session lacking
  the build a suite needs is skipped for that suite with a warning (TS1 is never taken from
  the selected_units build: its splits follow that build's spike domain, so its items differ).
  The recording id is the session id (BWB names each file <eid>.h5)."""
  unknown = set(suites) - {"ts1", "ts2", "ts3"}
  if unknown:
    raise ValueError(f"suites {sorted(unknown)}: expected ts1, ts2 or ts3")
  builds = _builds(session_paths)
  ids = sorted({sid for sid, _ in builds})
  written, missing = [], {}
  for sid in ids:
    for suite, build in (("ts1", TS1_BUILD), ("ts2", tasks.SELECTED_UNITS), ("ts3", tasks.SELECTED_UNITS)):
      if suite in suites and (sid, build) not in builds:
        missing.setdefault(suite, []).append(sid)
    if "ts1" in suites and (sid, TS1_BUILD) in builds:
      session = builds[(sid, TS1_BUILD)]
      for task in tasks.TS1_TASKS:
        items = ts1_items(session, task, "test")
        if items is None or not items.trial_id.size:
          continue
        written.append(scoring.write_ground_truth_ts1(gt_dir, task, sid, items.values, items.trial_id, items.mask))
    if "ts2" in suites and (sid, tasks.SELECTED_UNITS) in builds:
      session = builds[(sid, tasks.SELECTED_UNITS)]
      starts = ts2_starts(session, "test")
      for task in tasks.TS2_TASKS:
        targets, unit_ids = ts2_targets(session, task, starts)
        written.append(scoring.write_ground_truth_ts2(gt_dir, task, sid, targets, starts, unit_ids))
  if "ts3" in suites:
    selected = [builds[(sid, tasks.SELECTED_UNITS)] for sid in ids if (sid, tasks.SELECTED_UNITS) in builds]
    if selected:
      unit_ids, labels = ts3_targets(selected)
      if unit_ids:
        written.append(scoring.write_ground_truth_ts3(gt_dir, unit_ids, labels))
  for suite, sids in missing.items():
    warnings.warn(f"{suite}: no build for eval session(s) {sids}; no {suite} ground truth for them", stacklevel=2)
  return [os.fspath(p) for p in written]
