"""The event session: one recording's spikes, behaviour, trials and splits (host only, NumPy).

An `EventSession` holds:
  session_id            str, unique across sessions (it prefixes the unit ids)
  spike_times           [S] float64 seconds, sorted
  spike_units           [S] int32, index into the units of each spike
  unit_ids              [U] str, unique across sessions
  unit_regions          [U] str, brain region of each unit ("unknown" when not recorded)
  behaviour_name        str, e.g. "hand_vel"; "a,b" names each of D = 2 dimensions (output_names)
  behaviour_timestamps  [T] float64 seconds, strictly increasing
  behaviour_values      [T, D] float32
  behaviour_weights     [T] float32 >= 0, loss weight per timestamp (e.g. reach 5.0, hold 0.1)
  trial_starts, trial_ends  [K] float64, sorted, non-overlapping [start, end) trials
  splits                {"train"|"val"|"test": [n, 2] float64} sorted, disjoint [start, end)
and, optionally, where it was read from (source_info: counts of what the reader left out;
source_files: the paths read) and `extras`, whatever else a source knows (the reaching
task's ground truth), which nothing here reads. It is built unchecked;
`validate(where)` checks it, and `EventSession.from_dict(fields, where)` builds and checks
one from a mapping of untrusted fields (float16 spike or behaviour times are refused,
float32 ones warned about: mtm_jax.datasets.recording). See docs/event_data.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from mtm_jax.datasets import recording
from mtm_jax.datasets import schema

SPLITS = ("train", "val", "test")
SESSION_FIELDS = (
  "session_id",
  "spike_times",
  "spike_units",
  "unit_ids",
  "unit_regions",
  "behaviour_name",
  "behaviour_timestamps",
  "behaviour_values",
  "behaviour_weights",
  "trial_starts",
  "trial_ends",
  "splits",
)
# The arrays that follow time: what `interval_data` and `restrict_to_splits` cut.
TIMED_FIELDS = ("spike_times", "spike_units", "behaviour_timestamps", "behaviour_values", "behaviour_weights")


@dataclasses.dataclass(frozen=True, eq=False)
class EventSession:
  """One session of spike events and behaviour (see the module docstring for the fields)."""

  session_id: str
  spike_times: np.ndarray  # [S] float64
  spike_units: np.ndarray  # [S] int32
  unit_ids: np.ndarray  # [U] str
  unit_regions: np.ndarray  # [U] str
  behaviour_name: str
  behaviour_timestamps: np.ndarray  # [T] float64
  behaviour_values: np.ndarray  # [T, D] float32
  behaviour_weights: np.ndarray  # [T] float32
  trial_starts: np.ndarray  # [K] float64
  trial_ends: np.ndarray  # [K] float64
  splits: Mapping[str, np.ndarray]  # {split: [n, 2] float64}
  source_info: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  source_files: Sequence[str] | None = None
  extras: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  @classmethod
  def from_dict(cls, fields: Mapping[str, Any], where: str) -> EventSession:
    """The session of a mapping with the SESSION_FIELDS (other keys go to `extras`), checked
    (`validate`); ValueError naming `where` and the field when it is malformed."""
    missing = [k for k in SESSION_FIELDS if k not in fields]
    if missing:
      raise ValueError(f"{where}: missing fields {missing}")
    own = {f.name for f in dataclasses.fields(cls)}
    extras = dict(fields.get("extras", {}), **{k: v for k, v in fields.items() if k not in own})
    session = cls(**{k: v for k, v in fields.items() if k in own and k != "extras"}, extras=extras)
    session.validate(where)
    return session

  def validate(self, where: str) -> None:
    """Raises ValueError naming `where` and the field when the session is malformed."""
    _validate({k: getattr(self, k) for k in SESSION_FIELDS}, where)


def split_intervals(
  trial_starts: np.ndarray, trial_ends: np.ndarray, seed: int = 0, fractions=schema.SPLIT_FRACTIONS
) -> dict[str, np.ndarray]:
  """Trials drawn into train/val/test (70/10/20 by default) with a fixed seed.

  Returns {split: [n, 2] float64 [start, end) intervals, sorted by start}."""
  starts, ends = np.asarray(trial_starts, np.float64), np.asarray(trial_ends, np.float64)
  parts = schema.split_trials(len(starts), seed=seed, fractions=fractions)
  return {name: np.stack([starts[idx], ends[idx]], axis=1).reshape(-1, 2) for name, idx in parts.items()}


def _check_intervals(intervals, where: str, name: str) -> np.ndarray:
  """[n, 2] float64 intervals, finite, start < end, sorted and non-overlapping."""
  iv = schema.field_array({name: intervals}, name, where, np.float64)
  if iv.ndim != 2 or iv.shape[1] != 2:
    raise ValueError(f"{where}: {name} must be [n, 2] (start, end) intervals, got shape {iv.shape}")
  if not np.all(np.isfinite(iv)):
    raise ValueError(f"{where}: {name} has non-finite interval bounds")
  bad = np.flatnonzero(iv[:, 1] <= iv[:, 0])
  if len(bad):
    raise ValueError(
      f"{where}: {name} interval {bad[0]} is inverted or empty: start {iv[bad[0], 0]} >= end {iv[bad[0], 1]}"
    )
  if np.any(np.diff(iv[:, 0]) < 0):
    raise ValueError(f"{where}: {name} intervals are not sorted by start time")
  overlap = np.flatnonzero(iv[1:, 0] < iv[:-1, 1])
  if len(overlap):
    k = overlap[0]
    raise ValueError(
      f"{where}: {name} intervals {k} [{iv[k, 0]}, {iv[k, 1]}) and {k + 1} [{iv[k + 1, 0]}, {iv[k + 1, 1]}) overlap"
    )
  return iv


def _validate(session: dict, where: str) -> None:
  """Raises ValueError naming `where` and the field when the fields of a session are malformed."""
  if not isinstance(session["session_id"], str) or not session["session_id"]:
    raise ValueError(f"{where}: 'session_id' must be a non-empty string, got {session['session_id']!r}")
  unit_ids = schema.field_array(session, "unit_ids", where)
  regions = schema.field_array(session, "unit_regions", where)
  if unit_ids.ndim != 1 or regions.ndim != 1:
    raise ValueError(
      f"{where}: 'unit_ids' and 'unit_regions' must be 1-D, got shapes {unit_ids.shape}, {regions.shape}"
    )
  n_units = len(unit_ids)
  if n_units == 0:
    raise ValueError(f"{where}: 'unit_ids' is empty (a session needs units)")
  if len(regions) != n_units:
    raise ValueError(f"{where}: 'unit_regions' has {len(regions)} entries for {n_units} units")
  if len(set(unit_ids.tolist())) != n_units:
    raise ValueError(f"{where}: 'unit_ids' are not unique")

  times, units = schema.field_array(session, "spike_times", where), schema.field_array(session, "spike_units", where)
  if times.ndim != 1 or units.ndim != 1:
    raise ValueError(f"{where}: 'spike_times' and 'spike_units' must be 1-D, got shapes {times.shape}, {units.shape}")
  if len(times) != len(units):
    raise ValueError(f"{where}: 'spike_times' has {len(times)} spikes but 'spike_units' has {len(units)}")
  if not np.issubdtype(times.dtype, np.floating):
    raise ValueError(f"{where}: 'spike_times' must be float seconds, got dtype {times.dtype}")
  recording.float64_times(times, where, "'spike_times'")  # float16 refused, float32 warned about
  if not np.all(np.isfinite(times)):
    raise ValueError(f"{where}: 'spike_times' has {int(np.sum(~np.isfinite(times)))} NaN/inf times")
  unsorted = np.flatnonzero(np.diff(times) < 0)
  if len(unsorted):
    raise ValueError(
      f"{where}: 'spike_times' are not sorted (spike {unsorted[0] + 1} at {times[unsorted[0] + 1]} "
      f"comes after {times[unsorted[0]]})"
    )
  if len(units) and not np.issubdtype(units.dtype, np.integer):
    raise ValueError(f"{where}: 'spike_units' must be integer unit indices, got dtype {units.dtype}")
  if len(units) and (units.min() < 0 or units.max() >= n_units):
    raise ValueError(f"{where}: 'spike_units' must index the {n_units} units, got range [{units.min()}, {units.max()}]")

  stamps, values, weights = (
    schema.field_array(session, k, where) for k in ("behaviour_timestamps", "behaviour_values", "behaviour_weights")
  )
  for name, array in (("behaviour_timestamps", stamps), ("behaviour_values", values), ("behaviour_weights", weights)):
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
      raise ValueError(f"{where}: '{name}' must be numbers, got dtype {array.dtype}")
  if stamps.ndim != 1:
    raise ValueError(f"{where}: 'behaviour_timestamps' must be 1-D, got shape {stamps.shape}")
  if np.issubdtype(stamps.dtype, np.floating):
    recording.float64_times(stamps, where, "'behaviour_timestamps'")
  if not np.all(np.isfinite(stamps)):
    raise ValueError(f"{where}: 'behaviour_timestamps' has NaN/inf timestamps")
  if np.any(np.diff(stamps) <= 0):
    raise ValueError(f"{where}: 'behaviour_timestamps' must be strictly increasing (sorted, no repeats)")
  if values.ndim != 2 or values.shape[0] != len(stamps) or values.shape[1] == 0:
    raise ValueError(f"{where}: 'behaviour_values' must be [{len(stamps)}, dims], got shape {values.shape}")
  if not np.all(np.isfinite(values)):
    raise ValueError(f"{where}: 'behaviour_values' has NaN/inf values")
  if weights.shape != stamps.shape:
    raise ValueError(f"{where}: 'behaviour_weights' must have shape {stamps.shape}, got {weights.shape}")
  if not np.all(np.isfinite(weights)) or np.any(weights < 0):
    raise ValueError(f"{where}: 'behaviour_weights' must be finite and >= 0")

  starts, ends = (schema.field_array(session, k, where, np.float64) for k in ("trial_starts", "trial_ends"))
  if starts.shape != ends.shape or starts.ndim != 1:
    raise ValueError(f"{where}: 'trial_starts' {starts.shape} and 'trial_ends' {ends.shape} must be 1-D, same length")
  _check_intervals(np.stack([starts, ends], axis=1), where, "'trial_starts'/'trial_ends'")

  splits = session["splits"]
  if not isinstance(splits, dict) or not splits:
    raise ValueError(f"{where}: 'splits' must be a non-empty dict {{split: [n, 2] intervals}}")
  unknown = sorted(set(splits) - set(SPLITS))
  if unknown:
    raise ValueError(f"{where}: 'splits' has unknown names {unknown}; expected a subset of {list(SPLITS)}")
  for name, iv in splits.items():
    _check_intervals(iv, where, f"split {name!r}")
  combined = np.concatenate([schema.field_array(splits, name, where, np.float64).reshape(-1, 2) for name in splits])
  _check_intervals(combined[np.argsort(combined[:, 0], kind="stable")], where, "'splits' (all splits together)")


def interval_data(session: EventSession, start: float, end: float) -> dict[str, np.ndarray]:
  """The spikes and behaviour samples of one [start, end) interval (views, in time order).

  Returns spike_times [s], spike_units [s], behaviour_timestamps [t], behaviour_values [t, D],
  behaviour_weights [t] (TIMED_FIELDS)."""
  times, stamps = session.spike_times, session.behaviour_timestamps
  lo, hi = np.searchsorted(times, [start, end], side="left")
  blo, bhi = np.searchsorted(stamps, [start, end], side="left")
  return dict(
    spike_times=times[lo:hi],
    spike_units=session.spike_units[lo:hi],
    behaviour_timestamps=stamps[blo:bhi],
    behaviour_values=session.behaviour_values[blo:bhi],
    behaviour_weights=session.behaviour_weights[blo:bhi],
  )


def restrict_to_splits(session: EventSession, names: Sequence[str]) -> EventSession:
  """The session holding only the data inside the intervals of the `names` splits."""
  missing = [n for n in names if n not in session.splits]
  if missing:
    raise ValueError(f"session {session.session_id!r}: no splits {missing}; it has {sorted(session.splits)}")
  intervals = np.concatenate([np.asarray(session.splits[n], np.float64).reshape(-1, 2) for n in names])
  intervals = intervals[np.argsort(intervals[:, 0], kind="stable")]
  parts = [interval_data(session, s, e) for s, e in intervals]
  timed = {key: np.concatenate([p[key] for p in parts]) if parts else getattr(session, key)[:0] for key in TIMED_FIELDS}
  return dataclasses.replace(session, **timed, splits={n: session.splits[n] for n in names})


def behaviour_scale(sessions: Sequence[EventSession], split: str = "train") -> np.ndarray:
  """[D] float32 standard deviation of the behaviour values inside `split`, pooled over the
  sessions (1 where a dimension is constant)."""
  chunks = []
  for s in sessions:
    if split not in s.splits:
      raise ValueError(
        f"session {s.session_id!r}: no split {split!r} to compute the behaviour scale from "
        f"(it has {sorted(s.splits)}); pass scale= from the training data"
      )
    chunks += [interval_data(s, a, b)["behaviour_values"] for a, b in s.splits[split]]
  values = np.concatenate(chunks).astype(np.float64) if chunks else np.zeros((0, 1))
  if len(values) == 0:
    raise ValueError(f"split {split!r} holds no behaviour samples to compute the behaviour scale from")
  std = values.std(axis=0)
  return np.where(std > 0, std, 1.0).astype(np.float32)


def output_names(sessions: Sequence[EventSession]) -> list[str]:
  """Names of the D behaviour dimensions: the comma-separated parts of behaviour_name when
  it names each dimension and every session agrees (IBL: wheel_speed,
  whisker_motion_energy), else dim0 ... dim{D-1}."""
  dims = {int(np.shape(s.behaviour_values)[1]) for s in sessions}
  named = {tuple(str(s.behaviour_name).split(",")) for s in sessions}
  if len(dims) == 1 and len(named) == 1:
    (parts,), (d,) = named, dims
    if len(parts) == d and d > 1 and len(set(parts)) == d and all(parts):
      return list(parts)
  return [f"dim{d}" for d in range(max(dims, default=0))]
