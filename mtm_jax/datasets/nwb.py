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
                               (+ starting_time): e.g. NLB's hand_vel or finger_vel at 1 kHz.

Splits: the `split` column when it labels trials of all three splits; otherwise the trials
(those with a split label, if the column exists) are drawn 70/10/20 with `split_seed` (NLB's
training files label only train and val: their test trials are in separate files without
behaviour). Trials overlapping an earlier trial are left out (counted), so no spike lies in
two intervals. Behaviour samples with NaN values are left out (counted); values are read
as stored (no unit conversion). Every behaviour sample weighs 1.
"""

from __future__ import annotations

import os

from absl import logging
import numpy as np
import pynwb

from mtm_jax.datasets.events import session as session_lib


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
  flat = np.asarray(index.target.data[:], np.float64)
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


def _read_trials(path: str, nwbfile, split_seed: int):
  """Kept trial starts/ends [K] (sorted, non-overlapping), splits, and what was left out."""
  trials = nwbfile.trials
  if trials is None or len(trials) == 0:
    raise ValueError(
      f"{path}: no trials table (nwbfile.trials) or it has no trials; expected start_time and stop_time per trial"
    )
  for column in ("start_time", "stop_time"):
    if column not in trials.colnames:
      raise ValueError(f"{path}: the trials table has no {column!r} column")
  starts = np.asarray(trials["start_time"].data[:], np.float64)
  stops = np.asarray(trials["stop_time"].data[:], np.float64)
  bad = np.flatnonzero(~np.isfinite(starts) | ~np.isfinite(stops) | (stops <= starts))
  if len(bad):
    raise ValueError(
      f"{path}: trial {bad[0]} has invalid times start_time={starts[bad[0]]}, "
      f"stop_time={stops[bad[0]]} (need finite start < stop)"
    )
  labels = _text(trials["split"].data[:]) if "split" in trials.colnames else None

  order = np.argsort(starts, kind="stable")
  kept, last_end = [], -np.inf
  for k in order:
    if starts[k] >= last_end:
      kept.append(k)
      last_end = stops[k]
  kept = np.array(kept, np.int64)
  info = dict(n_trials=int(len(starts)), dropped_overlapping_trials=int(len(starts) - len(kept)))
  if info["dropped_overlapping_trials"]:
    dropped = sorted(set(range(len(starts))) - set(kept.tolist()))
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


def _read_behaviour(path: str, nwbfile, name: str, stride: int):
  """Timestamps [T] float64, values [T, D] float32 (NaN rows dropped), rows dropped."""
  where = f"processing/behavior/{name}"
  if "behavior" not in nwbfile.processing:
    raise ValueError(
      f"{path}: no processing module 'behavior' (it has {sorted(nwbfile.processing)}); expected "
      f"the behaviour TimeSeries at {where}"
    )
  module = nwbfile.processing["behavior"]
  if name not in module.data_interfaces:
    raise ValueError(f"{path}: no behaviour {name!r} in processing/behavior (it has {sorted(module.data_interfaces)})")
  series = module[name]
  if not isinstance(series, pynwb.TimeSeries):
    raise ValueError(f"{path}: {where} is a {type(series).__name__}, expected a TimeSeries")
  values = np.asarray(series.data[:], np.float64)
  if values.ndim == 1:
    values = values[:, None]
  if values.ndim != 2 or values.shape[0] == 0:
    raise ValueError(f"{path}: {where} data must be [n] or [n, dims] with n > 0, got shape {values.shape}")
  stamps = series.timestamps
  if isinstance(stamps, pynwb.TimeSeries):  # timestamps linked from another series
    stamps = stamps.timestamps
  if stamps is not None:
    stamps = np.asarray(stamps[:], np.float64)
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
  return stamps[finite], values[finite].astype(np.float32), int(np.sum(~finite))


def read_nwb(
  path: str, behaviour: str = "hand_vel", session_id: str | None = None, split_seed: int = 0, behaviour_stride: int = 1
) -> session_lib.EventSession:
  """One NWB file as an event session (mtm_jax.datasets.events.session).

  behaviour: name of the TimeSeries in processing/behavior; session_id: defaults to the
  file name without extension (it prefixes the unit ids, so keep it unique across
  sessions); behaviour_stride: keep every n-th behaviour sample (10 takes NLB's 1 kHz to
  100 Hz). The result also has source_info: file name, split_source ('column' or
  'seeded'), trial and sample counts left out; and source_files: [the file's path]."""
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
    starts, ends, splits, info = _read_trials(path, nwbfile, split_seed)
    stamps, values, dropped = _read_behaviour(path, nwbfile, behaviour, behaviour_stride)
    heldout = nwbfile.units["heldout"].data[:] if "heldout" in nwbfile.units.colnames else []
  finally:
    io.close()
  info.update(file=os.path.basename(path), dropped_nan_behaviour=dropped, n_heldout_units=int(np.sum(heldout)))
  session = session_lib.EventSession(
    session_id=session_id,
    spike_times=spike_times,
    spike_units=spike_units,
    unit_ids=unit_ids,
    unit_regions=regions,
    behaviour_name=behaviour,
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
