"""Reading a built spike_events data set (data_builders/spike_events) back into an event session."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mtm_jax.datasets import provenance
from mtm_jax.datasets.events import session as session_lib

# What every example of a spike_events data set holds; any other feature is an extra.
EXAMPLE_FIELDS = (
  "interval_index",
  "interval_start",
  "interval_end",
  "spike_times",
  "spike_units",
  "behaviour_timestamps",
  "behaviour_values",
  "behaviour_weights",
)


def load_event_session(
  dataset: str, data_dir: str, splits: Sequence[str] = session_lib.SPLITS
) -> session_lib.EventSession:
  """A session read back from a built spike_events data set, holding the data of `splits`.

  Its `splits` holds only the splits read. Its `extras` hold the data set's metadata
  "extras" (lists as arrays, e.g. the synthetic sessions' split_trials and pool_ids) and,
  stacked, every example feature beyond EXAMPLE_FIELDS: [n, ...], one row per interval
  read, in time order (e.g. the synthetic sessions' rates [n, 100, U] and trial variables)."""
  builder = provenance.open_built(dataset, data_dir)
  meta = builder.info.metadata
  for field in (
    "session_id",
    "unit_ids",
    "unit_regions",
    "behaviour_name",
    "behaviour_dim",
    "trial_intervals",
    "split_intervals",
  ):
    if field not in meta:
      raise ValueError(f"data set {dataset!r}: metadata has no {field!r}; was it built by data_builders.spike_events?")
  parts = []
  for split in splits:
    if split not in builder.info.splits:
      raise ValueError(f"data set {dataset!r}: no split {split!r}; it has {sorted(builder.info.splits)}")
    source = builder.as_data_source(split=split)
    parts += source.__getitems__(list(range(len(source)))) if len(source) else []
  parts.sort(key=lambda e: float(e["interval_start"]))
  dim = int(meta["behaviour_dim"])

  def cat(key, dtype, shape=(0,)):
    arrays = [np.asarray(e[key], dtype) for e in parts]
    return np.concatenate(arrays) if arrays else np.zeros(shape, dtype)

  trials = np.asarray(meta["trial_intervals"], np.float64).reshape(-1, 2)
  extras = _as_arrays(dict(meta.get("extras", {})))
  for key in builder.info.features:
    if key not in EXAMPLE_FIELDS:
      shape, dtype = builder.info.features[key].shape, builder.info.features[key].np_dtype
      rows = [np.asarray(e[key], dtype) for e in parts]
      extras[key] = np.stack(rows) if rows else np.zeros((0,) + tuple(0 if d is None else d for d in shape), dtype)
  return session_lib.EventSession(
    session_id=str(meta["session_id"]),
    spike_times=cat("spike_times", np.float64),
    spike_units=cat("spike_units", np.int32),
    unit_ids=np.array(meta["unit_ids"], dtype=object),
    unit_regions=np.array(meta["unit_regions"], dtype=object),
    behaviour_name=str(meta["behaviour_name"]),
    behaviour_timestamps=cat("behaviour_timestamps", np.float64),
    behaviour_values=cat("behaviour_values", np.float32, (0, dim)).reshape(-1, dim),
    behaviour_weights=cat("behaviour_weights", np.float32),
    trial_starts=trials[:, 0],
    trial_ends=trials[:, 1],
    splits={s: np.asarray(meta["split_intervals"][s], np.float64).reshape(-1, 2) for s in splits},
    extras=extras,
  )


def _as_arrays(value):
  """Metadata read back from JSON: dicts kept, lists as NumPy arrays."""
  if isinstance(value, dict):
    return {k: _as_arrays(v) for k, v in value.items()}
  return np.asarray(value) if isinstance(value, (list, tuple)) else value
