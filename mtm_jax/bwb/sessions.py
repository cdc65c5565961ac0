"""One BrainWideBench session file (HDF5, torch_brain's `Data` layout) into a typed record.

BWB's pipeline (ibl_brain_wide_bench_2026/pipeline.py) writes one file per session with
torch_brain's `Data.to_hdf5`; `temporaldata` (numpy and h5py, no torch) reads that layout and
is imported only when a file is read. What the file holds, under BWB's names:

- `session.id` (the eid), `subject.id`, `brainset.unit_filtering` (all_units, selected_units,
  custom), `brainset.derived_version` (the dataset version submissions are stamped with);
- `spikes`: timestamps [S] (sorted, seconds), unit_index [S] (into `units`), amplitude, depth;
- `units`: id (uuid), region_cosmos / region_beryl / region_allen, probe_id, firing_rate, label,
  qc_neural, ... and on eval `selected_units` builds `ts2_co_smoothing_is_held_out_{val,test}`;
- `trials` (all IBL trials, renamed): start, end, stim_on_time, movement_onset_time,
  feedback_time, choice (1 left, 0 right, 2 none), feedback_type, reward, stimulus_contrast
  (class 0-4), contrast_left / contrast_right, probability_left, block_prior, stimulus_side,
  is_valid (BWB's exclusions), trial_index;
- `task_aligned_intervals`: per task an interval table (stimulus_side, stimulus_contrast,
  choice, reward, movement_window, licking_window, block_prior; valid trials only) and their
  union `domain`;
- behaviour on a 50 Hz grid, each present only when its QC passed: `wheel` (wheel_speed,
  wheel_vel, wheel_pos), `whisker` (whisker_motion_energy), `paws` (left/right_paw_speed,
  is_left/right_paw_confident, ...), `licks` (licking_rate);
- the split domains BWB computed and stored: eval `ts1_{train,val,test}_domain` and
  `ts2_{train,val,test}_domain`, pretrain `pretrain_{train,val}_domain`.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

TRIAL_FIELDS = (
  "start",
  "end",
  "stim_on_time",
  "movement_onset_time",
  "feedback_time",
  "choice",
  "feedback_type",
  "reward",
  "stimulus_contrast",
  "contrast_left",
  "contrast_right",
  "probability_left",
  "block_prior",
  "stimulus_side",
  "is_valid",
  "trial_index",
)
TASK_INTERVALS = ("stimulus_side", "stimulus_contrast", "choice", "reward", "movement_window", "licking_window")
BEHAVIOUR_FIELDS = {
  "wheel": ("wheel_speed",),
  "whisker": ("whisker_motion_energy",),
  "paws": ("left_paw_speed", "right_paw_speed", "is_left_paw_confident", "is_right_paw_confident"),
  "licks": ("licking_rate",),
}
EVAL_SPLITS = ("ts1_train", "ts1_val", "ts1_test", "ts2_train", "ts2_val", "ts2_test")
PRETRAIN_SPLITS = ("pretrain_train", "pretrain_val")
HELD_OUT = ("ts2_co_smoothing_is_held_out_val", "ts2_co_smoothing_is_held_out_test")


class SessionFileError(ValueError):
  """A BWB session file that is missing a field or holds one of the wrong type or shape."""


@dataclasses.dataclass(frozen=True)
class Units:
  """The session's N units: ids (N,) str uuids, cosmos (N,) str Cosmos regions, the co-smoothing
  held-out masks (N,) bool (None where the build has none), columns: every stored column."""

  ids: np.ndarray
  cosmos: np.ndarray
  held_out_val: np.ndarray | None
  held_out_test: np.ndarray | None
  columns: dict


@dataclasses.dataclass(frozen=True)
class Series:
  """A behaviour stream: timestamps (T,) float64 seconds and values {name: (T, ...)}."""

  timestamps: np.ndarray
  values: dict


@dataclasses.dataclass(frozen=True)
class Session:
  """One BWB session file, read.

  spike_times (S,) float64 sorted; spike_units (S,) int64 in [0, N); trials {column: (T,)};
  task_aligned {task: {column: (K,)}} plus "domain" {start, end}; behaviour {"wheel", "whisker",
  "paws", "licks": Series}, only those stored; domain and splits (start (I,), end (I,)) tuples,
  splits keyed "ts1_train" ... "ts2_test" (eval) or "pretrain_train", "pretrain_val"."""

  path: str
  session_id: str
  subject_id: str
  unit_filtering: str
  dataset_version: str
  spike_times: np.ndarray
  spike_units: np.ndarray
  units: Units
  trials: dict
  task_aligned: dict
  behaviour: dict
  domain: tuple
  splits: dict

  @property
  def is_eval(self) -> bool:
    return "ts2_test" in self.splits


def _fail(path, field, what):
  raise SessionFileError(f"{path}: field {field!r}: {what}")


def _node(data, path, field):
  node = data
  for part in field.split("."):
    if not hasattr(node, part) or getattr(node, part) is None:
      _fail(path, field, "missing")
    node = getattr(node, part)
  return node


def _array(data, path, field, kind, ndim=1, length=None):
  """The field as an array of dtype kind `kind` ("f" float, "i" integer, "b" bool, "U" str;
  "fi" either), `ndim` axes and first axis `length`; SessionFileError otherwise."""
  value = np.asarray(_node(data, path, field))
  got = value.dtype.kind
  ok = got in kind or (kind == "i" and got == "u") or ("f" in kind and got in "iu") or (kind == "b" and got in "iu")
  if not ok or value.ndim != ndim or (length is not None and value.shape[0] != length):
    want = {"f": "float", "i": "integer", "b": "bool", "U": "string", "fi": "number"}[kind]
    shape = f"{ndim} axes" + (f", {length} rows" if length is not None else "")
    _fail(path, field, f"expected a {want} array with {shape}; got {value.dtype} {value.shape}")
  if kind == "b" and got != "b":
    if not np.isin(value, (0, 1)).all():
      _fail(path, field, "expected booleans (0 or 1)")
    value = value.astype(bool)
  return value


def _string(data, path, field):
  value = _node(data, path, field)
  if isinstance(value, bytes):
    value = value.decode()
  if not isinstance(value, str) or not value:
    _fail(path, field, f"expected a non-empty string; got {value!r}")
  return value


def _intervals(data, path, field):
  start = _array(data, path, f"{field}.start", "fi").astype(np.float64)
  end = _array(data, path, f"{field}.end", "fi", length=start.shape[0]).astype(np.float64)
  if np.any(end < start):
    _fail(path, field, "expected intervals with end >= start")
  return start, end


def _table(data, path, field, required):
  node = _node(data, path, field)
  first = _array(data, path, f"{field}.start", "fi")
  out = {}
  for key in node.keys():
    value = np.asarray(getattr(node, key))
    if value.ndim >= 1 and value.shape[0] == first.shape[0]:
      out[key] = value
  for key in required:
    if key not in out:
      if not hasattr(node, key):
        _fail(path, f"{field}.{key}", "missing")
      _fail(path, f"{field}.{key}", f"expected {first.shape[0]} rows; got {np.shape(getattr(node, key))}")
  return out


def _series(data, path, name):
  node = _node(data, path, name)
  try:
    timestamps = np.asarray(node.timestamps, np.float64)
  except (AttributeError, TypeError, ValueError):
    _fail(path, f"{name}.timestamps", "expected a time series (timestamps)")
  values = {}
  for key in BEHAVIOUR_FIELDS[name]:
    kind = "b" if key.startswith("is_") else "f"
    values[key] = _array(data, path, f"{name}.{key}", kind, length=timestamps.shape[0])
  for key in node.keys():
    value = np.asarray(getattr(node, key))
    if key not in values and key != "timestamps" and value.ndim >= 1 and value.shape[0] == timestamps.shape[0]:
      values[key] = value
  return Series(timestamps, values)


def _load(path):
  import h5py  # noqa: PLC0415 - with temporaldata, only needed to read session files
  import temporaldata  # noqa: PLC0415

  if not os.path.isfile(path):
    raise SessionFileError(f"{path}: no such file")
  if not h5py.is_hdf5(path):
    raise SessionFileError(f"{path}: not an HDF5 file (expected a BWB session file written by torch_brain's Data)")
  with h5py.File(path, "r") as f:
    if f.attrs.get("object") != "Data":
      raise SessionFileError(f"{path}: field 'object' (root attribute): expected 'Data' (torch_brain's layout)")
    try:
      return temporaldata.Data.from_hdf5(f, lazy=False)
    except (KeyError, ValueError, TypeError, AssertionError) as error:
      for key, group in f.items():  # name the field temporaldata could not read
        if isinstance(group, h5py.Group):
          try:
            kind = getattr(temporaldata, str(group.attrs.get("object", "")), None)
            if kind is None:
              raise ValueError(f"unknown object kind {group.attrs.get('object')!r}")
            kind.from_hdf5(group, lazy=False) if kind is temporaldata.Data else kind.from_hdf5(group)
          except (KeyError, ValueError, TypeError, AssertionError) as inner:
            raise SessionFileError(f"{path}: field {key!r}: not in torch_brain's Data layout: {inner}") from inner
      raise SessionFileError(f"{path}: not in torch_brain's Data layout: {error!r}") from error


def read_session(path: str) -> Session:
  """The session in BWB session file `path`; SessionFileError naming the file and the field for
  anything missing or malformed."""
  path = os.fspath(path)
  data = _load(path)
  brainset_filtering = _string(data, path, "brainset.unit_filtering")
  times = _array(data, path, "spikes.timestamps", "f").astype(np.float64)
  units_index = _array(data, path, "spikes.unit_index", "i", length=times.shape[0]).astype(np.int64)
  if np.any(np.diff(times) < 0):
    _fail(path, "spikes.timestamps", "expected sorted spike times")
  ids = _array(data, path, "units.id", "U")
  n = ids.shape[0]
  if units_index.size and (units_index.min() < 0 or units_index.max() >= n):
    _fail(path, "spikes.unit_index", f"expected indices into the {n} units")
  splits = {}
  is_eval = hasattr(data, "ts2_test_domain")
  for name in EVAL_SPLITS if is_eval else PRETRAIN_SPLITS:
    splits[name] = _intervals(data, path, f"{name}_domain")
  held = [None, None]
  if (is_eval and brainset_filtering == "selected_units") or hasattr(data.units, HELD_OUT[0]):
    held = [_array(data, path, f"units.{name}", "b", length=n) for name in HELD_OUT]
  unit_columns = {k: np.asarray(getattr(data.units, k)) for k in data.units.keys()}
  units = Units(ids, _array(data, path, "units.region_cosmos", "U", length=n), held[0], held[1], unit_columns)
  task_aligned = {name: _table(data, path, f"task_aligned_intervals.{name}", ()) for name in TASK_INTERVALS}
  start, end = _intervals(data, path, "task_aligned_intervals.domain")
  task_aligned["domain"] = {"start": start, "end": end}
  behaviour = {name: _series(data, path, name) for name in BEHAVIOUR_FIELDS if getattr(data, name, None) is not None}
  return Session(
    path=path,
    session_id=_string(data, path, "session.id"),
    subject_id=_string(data, path, "subject.id"),
    unit_filtering=brainset_filtering,
    dataset_version=_string(data, path, "brainset.derived_version"),
    spike_times=times,
    spike_units=units_index,
    units=units,
    trials=_table(data, path, "trials", TRIAL_FIELDS),
    task_aligned=task_aligned,
    behaviour=behaviour,
    domain=_intervals(data, path, "domain"),
    splits=splits,
  )
