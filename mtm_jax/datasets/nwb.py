"""Neurodata Without Borders (NWB) files in the Neural Latents Benchmark layout -> event sessions.

Reads with pynwb, into an event session (mtm_jax.datasets.events.session):
  units                        Units table (required): spike_times of every unit. Region of a
                               unit: `location` of its first electrode (`electrodes` column),
                               else a `location` column, else "unknown". Held-out units of NLB
                               (`heldout` column) are read like the others.
  trials                       start_time, stop_time (required). Optional `split` column:
                               'train' / 'val' / 'test' labels (NLB); other labels (e.g.
                               'none') leave a trial out of every split.
  processing/behavior/<name>   a TimeSeries [n] or [n, dims], with timestamps or a rate
                               (+ starting_time): e.g. NLB's hand_vel or finger_vel at 1 kHz;
                               `<container>/<series>` inside a Position or BehavioralTimeSeries;
                               behaviour=None reads the only series there (several: an error
                               listing them).

Splits: the `split` column when it labels trials of all three splits; otherwise the trials
(those with a split label, if the column exists) are drawn 70/10/20 with `split_seed` (NLB's
training files label only train and val: their test trials are in separate files without
behaviour). Left out and counted in source_info, with a warning naming the file, in order:
  trials outside the spike recording: every unit's observation intervals (the Units table's
    `obs_intervals`) when the file has them, else from the first to the last spike of all
    units (a sorting that starts late or stops early would give trials of silence);
  trials outside the behaviour series: more than 1.5 sampling intervals of the trial before
    its first sample or after its last (trials without behaviour to train or score on);
  trials overlapping an earlier trial, so no spike lies in two intervals.
No trial left is an error naming the file. Behaviour samples with NaN values are left out
(counted); values are read as stored (no unit conversion). Every behaviour sample weighs 1.
Times (spike times, observation intervals, trial times, behaviour timestamps) are read
through mtm_jax.datasets.recording.float64_times: float32 is used with a warning, float16
and integer times are refused.
"""

from __future__ import annotations

import os
import re
from typing import Sequence

from absl import logging
import numpy as np
import pynwb

from mtm_jax.datasets import recording
from mtm_jax.datasets.events import session as session_lib

BEHAVIOUR_GAP = 1.5  # sampling intervals a trial may extend past its behaviour series' first or last sample


def _text(values) -> list[str]:
  return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _read_units(path: str, nwbfile, session_id: str):
  """Spike times [S] (sorted), unit index [S], unit ids [U], regions [U]."""
  units = nwbfile.units
  if units is None or len(units) == 0:
    raise ValueError(
      f"{path}: no Units table (nwbfile.units) or it has no units; expected sorted units with spike_times"
    )
  if "spike_times" not in units.colnames:
    raise ValueError(f"{path}: the Units table has no spike_times column (it has {list(units.colnames)})")
  index = units["spike_times"]  # VectorIndex: end offset of each unit's spike times
  ends = np.asarray(index.data[:], np.int64)
  flat = recording.float64_times(index.target.data[:], path, "Units spike_times")
  ids = np.asarray(units.id.data[:])
  counts = np.diff(np.concatenate([[0], ends]))
  owner = np.repeat(np.arange(len(ends)), counts)
  bad = np.flatnonzero(~np.isfinite(flat))
  if len(bad):
    raise ValueError(f"{path}: Units row {owner[bad[0]]} (id {ids[owner[bad[0]]]}) has NaN/inf spike_times")
  down = np.flatnonzero((np.diff(flat) < 0) & (owner[1:] == owner[:-1]))
  if len(down):
    u = owner[down[0]]
    raise ValueError(
      f"{path}: Units row {u} (id {ids[u]}): spike_times are not sorted ({flat[down[0] + 1]} after {flat[down[0]]})"
    )
  order = np.argsort(flat, kind="stable")

  regions = ["unknown"] * len(ends)
  if "electrodes" in units.colnames:
    e_index = units["electrodes"]  # VectorIndex over a DynamicTableRegion of the electrodes table
    region = e_index.target
    if "location" in region.table.colnames:
      locations = _text(region.table["location"].data[:])
      rows = np.asarray(region.data[:], np.int64)
      e_ends = np.asarray(e_index.data[:], np.int64)
      e_starts = np.concatenate([[0], e_ends[:-1]])
      regions = [locations[rows[a]] if b > a else "unknown" for a, b in zip(e_starts, e_ends)]
  elif "location" in units.colnames:
    regions = _text(units["location"].data[:])
  regions = [r if r.strip() else "unknown" for r in regions]
  unit_ids = np.array([f"{session_id}/{i}" for i in ids], dtype=object)
  return flat[order], owner[order].astype(np.int32), unit_ids, np.array(regions, dtype=object)


def _trial_times(path: str, nwbfile):
  """start_time, stop_time [K] float64 of the trials table (finite, start < stop) and its
  split labels (None without a `split` column)."""
  trials = nwbfile.trials
  if trials is None or len(trials) == 0:
    raise ValueError(
      f"{path}: no trials table (nwbfile.trials) or it has no trials; expected start_time and stop_time per trial"
    )
  for column in ("start_time", "stop_time"):
    if column not in trials.colnames:
      raise ValueError(f"{path}: the trials table has no {column!r} column")
  starts = recording.float64_times(trials["start_time"].data[:], path, "trials start_time")
  stops = recording.float64_times(trials["stop_time"].data[:], path, "trials stop_time")
  bad = np.flatnonzero(~np.isfinite(starts) | ~np.isfinite(stops) | (stops <= starts))
  if len(bad):
    raise ValueError(
      f"{path}: trial {bad[0]} has invalid times start_time={starts[bad[0]]}, "
      f"stop_time={stops[bad[0]]} (need finite start < stop)"
    )
  labels = _text(trials["split"].data[:]) if "split" in trials.colnames else None
  return starts, stops, labels


def _merged(intervals: np.ndarray) -> np.ndarray:
  """[n, 2] intervals -> the sorted, disjoint intervals of their union."""
  out: list[list[float]] = []
  for a, b in intervals[np.argsort(intervals[:, 0], kind="stable")]:
    if out and a <= out[-1][1]:
      out[-1][1] = max(out[-1][1], b)
    else:
      out.append([a, b])
  return np.array(out, np.float64).reshape(-1, 2)


def _inside_any(starts: np.ndarray, stops: np.ndarray, intervals: np.ndarray) -> np.ndarray:
  """[K] bool: the trial lies inside the union of `intervals` [n, 2]."""
  union = _merged(intervals)
  if len(union) == 0:
    return np.zeros(len(starts), bool)
  j = np.searchsorted(union[:, 0], starts, side="right") - 1
  return (j >= 0) & (stops <= union[np.maximum(j, 0), 1])


def _observation_intervals(path: str, units) -> list[np.ndarray]:
  """Each unit's observation intervals [n_u, 2] (the Units table's obs_intervals)."""
  column = units["obs_intervals"]
  if hasattr(column, "target"):  # VectorIndex: end offset of each unit's rows
    ends = np.asarray(column.data[:], np.int64)
    flat = recording.float64_times(column.target.data[:], path, "Units obs_intervals")
  else:
    flat = recording.float64_times(column.data[:], path, "Units obs_intervals")
    ends = np.arange(1, len(flat) + 1)
  if flat.ndim != 2 or flat.shape[1] != 2 or (len(ends) and ends[-1] != len(flat)):
    raise ValueError(f"{path}: Units obs_intervals must be [n, 2] (start, stop) rows, got shape {flat.shape}")
  bad = np.flatnonzero(~np.all(np.isfinite(flat), axis=1) | (flat[:, 1] < flat[:, 0]))
  if len(bad):
    raise ValueError(f"{path}: Units obs_intervals row {bad[0]} is {flat[bad[0]].tolist()} (need finite start <= stop)")
  return np.split(flat, ends[:-1])


def _spike_coverage(path: str, units, spike_times: np.ndarray, starts: np.ndarray, stops: np.ndarray):
  """[K] bool: the trials inside the spike recording, and that recording in words."""
  if "obs_intervals" not in units.colnames:
    if len(spike_times) == 0:
      return np.zeros(len(starts), bool), "the spike recording (the units hold no spikes)"
    first, last = spike_times[0], spike_times[-1]
    covered = recording.inside(starts, stops, first, last)
    return covered, f"the spike recording (its first to last spike, {first:.3f} .. {last:.3f} s)"
  ids = np.asarray(units.id.data[:])
  covered, short = np.ones(len(starts), bool), []
  for u, intervals in enumerate(_observation_intervals(path, units)):
    inside = _inside_any(starts, stops, intervals)
    if not inside.all():
      short.append(str(ids[u]))
    covered &= inside
  return covered, f"the observation intervals (obs_intervals) of units {short[:5]}{' ...' * (len(short) > 5)}"


def _select_trials(path: str, starts, stops, labels, recorded, split_seed: int):
  """Kept trial starts/ends [K] (sorted, non-overlapping), splits, and what was left out.

  recorded: [(count name, recording in words, [K] bool trials inside it)]: a trial outside
  one is dropped and counted (once, under the first); then overlapping trials."""
  info = dict(n_trials=int(len(starts)))
  ok = np.ones(len(starts), bool)
  for count, name, covered in recorded:
    info[count] = int(np.sum(ok & ~covered))
    ok &= covered
    if not covered.all():
      logging.warning(
        "%s: %d of %d trials lie outside %s and are left out (trial rows %s)",
        path,
        int(np.sum(~covered)),
        len(starts),
        name,
        np.flatnonzero(~covered)[:10].tolist(),
      )
  if not ok.any():
    held = "; ".join(f"{name} holds {int(np.sum(covered))}" for _, name, covered in recorded)
    raise ValueError(
      f"{path}: none of the {len(starts)} trials ({starts.min():.3f} .. {stops.max():.3f} s) lies inside every "
      f"recording: {held}; is the file complete?"
    )

  order = np.flatnonzero(ok)[np.argsort(starts[ok], kind="stable")]
  kept, last_end = [], -np.inf
  for k in order:
    if starts[k] >= last_end:
      kept.append(k)
      last_end = stops[k]
  kept = np.array(kept, np.int64)
  info["dropped_overlapping_trials"] = int(ok.sum() - len(kept))
  if info["dropped_overlapping_trials"]:
    dropped = sorted(set(np.flatnonzero(ok).tolist()) - set(kept.tolist()))
    logging.warning(
      "%s: %d of %d trials overlap an earlier trial and are left out (trial rows %s)",
      path,
      len(dropped),
      len(starts),
      dropped[:10],
    )

  if labels is not None:
    labels = np.array(labels, dtype=object)[kept]
    parts = {name: kept[labels == name] for name in session_lib.SPLITS}
    if all(len(p) for p in parts.values()):
      info["split_source"] = "column"
      splits = {name: np.stack([starts[p], stops[p]], 1).reshape(-1, 2) for name, p in parts.items()}
      return starts[kept], stops[kept], splits, info
    labelled = kept[np.isin(labels, session_lib.SPLITS)]
  else:
    labelled = kept
  if len(labelled) < len(session_lib.SPLITS):
    raise ValueError(
      f"{path}: {len(labelled)} usable trials; need at least {len(session_lib.SPLITS)} for train/val/test"
    )
  info["split_source"] = "seeded"
  splits = session_lib.split_intervals(starts[labelled], stops[labelled], seed=split_seed)
  return starts[kept], stops[kept], splits, info


def behaviour_series(module) -> dict:
  """{name: TimeSeries} of a processing module: its TimeSeries, and those inside its
  containers (e.g. Position, BehavioralTimeSeries) as `<container>/<series>`."""
  out = {}
  for name, obj in module.data_interfaces.items():
    if isinstance(obj, pynwb.TimeSeries):
      out[name] = obj
    for attr in ("time_series", "spatial_series"):
      for child, series in (getattr(obj, attr, None) or {}).items():
        out[f"{name}/{child}"] = series
  return out


def _read_behaviour(path: str, nwbfile, name: str | None, stride: int):
  """The series' name, timestamps [T] float64, values [T, D] float32 (NaN rows dropped),
  rows dropped, and the series' timestamps (NaN rows kept: the span it was recorded over).
  name None: the one TimeSeries of processing/behavior."""
  if "behavior" not in nwbfile.processing:
    raise ValueError(
      f"{path}: no processing module 'behavior' (it has {sorted(nwbfile.processing)}); expected "
      f"the behaviour TimeSeries at processing/behavior/{name or '<name>'}"
    )
  found = behaviour_series(nwbfile.processing["behavior"])
  if name is None:
    if len(found) != 1:
      raise ValueError(
        f"{path}: processing/behavior holds {len(found)} TimeSeries {sorted(found)}; expected exactly one, or name "
        "the series to read with --nwb_behaviour=<name>"
      )
    name = next(iter(found))
  where = f"processing/behavior/{name}"
  if name not in found:
    raise ValueError(f"{path}: no behaviour {name!r} in processing/behavior (it has {sorted(found)})")
  series = found[name]
  values = np.asarray(series.data[:], np.float64)
  if values.ndim == 1:
    values = values[:, None]
  if values.ndim != 2 or values.shape[0] == 0:
    raise ValueError(f"{path}: {where} data must be [n] or [n, dims] with n > 0, got shape {values.shape}")
  stamps = series.timestamps
  if isinstance(stamps, pynwb.TimeSeries):  # timestamps linked from another series
    stamps = stamps.timestamps
  if stamps is not None:
    stamps = recording.float64_times(stamps[:], path, f"{where} timestamps")
  elif series.rate:
    stamps = (series.starting_time or 0.0) + np.arange(len(values)) / series.rate
  else:
    raise ValueError(f"{path}: {where} has neither timestamps nor a rate")
  if len(stamps) != len(values):
    raise ValueError(f"{path}: {where} has {len(stamps)} timestamps for {len(values)} samples")
  stamps, values = stamps[::stride], values[::stride]
  if not np.all(np.isfinite(stamps)) or np.any(np.diff(stamps) <= 0):
    raise ValueError(f"{path}: {where} timestamps must be finite and strictly increasing")
  finite = np.all(np.isfinite(values), axis=1)
  return name, stamps[finite], values[finite].astype(np.float32), int(np.sum(~finite)), stamps, series


_DIM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


def behaviour_dim_names(path: str, name: str, series, width: int, given: Sequence[str] | None) -> list[str] | None:
  """The names of the `width` columns of the behaviour series `name`: `given`
  (--nwb_behaviour_dims; ValueError naming the file and the series when their number is not
  the series' width), else those the file gives unambiguously: a series of 2 or more columns
  whose `comments` or `description` is exactly a comma-separated list of that many distinct
  names ("x,y"; TimeSeries has no field for them), else None (dim0, dim1, ...)."""
  if given:
    given = [str(g).strip() for g in given]
    if len(given) != width or len(set(given)) != width or not all(given):
      raise ValueError(
        f"{path}: --nwb_behaviour_dims={','.join(given)} names {len(given)} dimensions, but the behaviour series "
        f"processing/behavior/{name} has {width} columns; give {width} distinct names"
      )
    return given
  for text in (getattr(series, "comments", None), getattr(series, "description", None)):
    parts = [p.strip() for p in str(text or "").split(",")]
    if width > 1 and len(parts) == width == len(set(parts)) and all(_DIM_NAME.fullmatch(p) for p in parts):
      return parts
  return None


def _behaviour_coverage(name: str, stamps: np.ndarray, starts: np.ndarray, stops: np.ndarray):
  """[K] bool: the trials with behaviour samples from start to stop (no more than
  BEHAVIOUR_GAP sampling intervals of a trial before the first or after the last), and the
  series in words."""
  gap = BEHAVIOUR_GAP * float(np.median(np.diff(stamps))) if len(stamps) > 1 else 0.0
  covered = (stamps[0] <= starts + gap) & (stamps[-1] >= stops - gap)
  return covered, f"the behaviour series processing/behavior/{name} ({stamps[0]:.3f} .. {stamps[-1]:.3f} s)"


def read_nwb(
  path: str,
  behaviour: str | None = "hand_vel",
  session_id: str | None = None,
  split_seed: int = 0,
  behaviour_stride: int = 1,
  behaviour_dims: Sequence[str] | None = None,
) -> session_lib.EventSession:
  """One NWB file as an event session (mtm_jax.datasets.events.session).

  behaviour: name of the TimeSeries in processing/behavior (`<container>/<series>` for one
  inside a container such as Position), None for the only one there; session_id: defaults to the
  file name without extension (it prefixes the unit ids, so keep it unique across
  sessions); behaviour_stride: keep every n-th behaviour sample (10 takes NLB's 1 kHz to
  100 Hz); behaviour_dims: names of the series' columns (behaviour_dim_names: else those the
  file gives, else none). behaviour_name is the names joined by commas ("x,y": output_names),
  else the series' name. The result also has source_info: file name, split_source ('column'
  or 'seeded'), trial and sample counts left out, behaviour_series and behaviour_dims; and
  source_files: [the file's path]."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such NWB file")
  if behaviour_stride < 1:
    raise ValueError(f"behaviour_stride must be >= 1, got {behaviour_stride}")
  session_id = session_id or os.path.splitext(os.path.basename(path))[0]
  try:
    io = pynwb.NWBHDF5IO(path, "r")
    nwbfile = io.read()
  except Exception as e:  # h5py and hdmf raise many types for unreadable files
    raise ValueError(f"{path}: not a readable NWB file ({type(e).__name__}: {e})") from e
  try:
    spike_times, spike_units, unit_ids, regions = _read_units(path, nwbfile, session_id)
    starts, stops, labels = _trial_times(path, nwbfile)
    behaviour, stamps, values, dropped, series_stamps, series = _read_behaviour(
      path, nwbfile, behaviour, behaviour_stride
    )
    dims = behaviour_dim_names(path, behaviour, series, values.shape[1], behaviour_dims)
    spikes_in, spikes_name = _spike_coverage(path, nwbfile.units, spike_times, starts, stops)
    behaviour_in, behaviour_name = _behaviour_coverage(behaviour, series_stamps, starts, stops)
    recorded = [
      ("dropped_outside_spike_recording", spikes_name, spikes_in),
      ("dropped_outside_behaviour_recording", behaviour_name, behaviour_in),
    ]
    starts, ends, splits, info = _select_trials(path, starts, stops, labels, recorded, split_seed)
    heldout = nwbfile.units["heldout"].data[:] if "heldout" in nwbfile.units.colnames else []
  finally:
    io.close()
  info.update(
    file=os.path.basename(path),
    dropped_nan_behaviour=dropped,
    n_heldout_units=int(np.sum(heldout)),
    behaviour_series=behaviour,
    behaviour_dims=None if dims is None else ",".join(dims),
  )
  session = session_lib.EventSession(
    session_id=session_id,
    spike_times=spike_times,
    spike_units=spike_units,
    unit_ids=unit_ids,
    unit_regions=regions,
    behaviour_name=behaviour if dims is None else ",".join(dims),
    behaviour_timestamps=stamps,
    behaviour_values=values,
    behaviour_weights=np.ones(len(stamps), np.float32),
    trial_starts=starts,
    trial_ends=ends,
    splits=splits,
    source_info=info,
    source_files=[os.path.abspath(path)],
  )
  session.validate(where=path)
  return session
