"""Reading and validating the ALF files of one IBL session listed in a ONE cache.

Files read per session (collection `alf`):

  _ibl_trials.table.pqt                       trials: stimOn_times, firstMovement_times,
                                              feedback_times, choice, feedbackType,
                                              probabilityLeft, contrastLeft, contrastRight
  _ibl_wheel.position.npy, .timestamps.npy    wheel angle (rad) and its times (s)
  _ibl_leftCamera.times.npy,                  whisker-pad motion energy and frame times
  leftCamera.ROIMotionEnergy.npy              (the right camera's files when the left's are absent)
  <probe>/[<sorter>/]spikes.times.npy         per probe: spike times (s, sorted), their clusters,
  <probe>/[<sorter>/]spikes.clusters.npy      each cluster's channel, cluster metrics (firing_rate,
  <probe>/[<sorter>/]clusters.channels.npy    label), each channel's Allen CCF 2017 atlas id
  <probe>/[<sorter>/]clusters.metrics.pqt
  <probe>/[<sorter>/]channels.brainLocationIds_ccf_2017.npy

Region of a unit: the acronym of its channel's atlas id (iblatlas BrainRegions, shipped
with the package), at the level of IblOptions.regions (Allen, or the coarser Beryl or
Cosmos). Every inconsistency in the files raises IblDataError naming the file and the
problem. Time arrays (spike, wheel and frame times, the trials table's time columns) are
read through mtm_jax.datasets.recording.float64_times: float32 is used with a warning,
float16 and integer times are refused.
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
import pandas as pd

from mtm_jax.datasets import recording
from mtm_jax.datasets.ibl import configs

TRIALS_FILE = "alf/_ibl_trials.table.pqt"
WHEEL_FILES = ("alf/_ibl_wheel.position.npy", "alf/_ibl_wheel.timestamps.npy")
CAMERA_FILES = {
  side: (f"alf/_ibl_{side}Camera.times.npy", f"alf/{side}Camera.ROIMotionEnergy.npy") for side in ("left", "right")
}
PROBE_FILES = (
  "spikes.times.npy",
  "spikes.clusters.npy",
  "clusters.channels.npy",
  "clusters.metrics.pqt",
  "channels.brainLocationIds_ccf_2017.npy",
)
TRIAL_TIME_COLUMNS = ("stimOn_times", "firstMovement_times", "feedback_times")
TRIAL_COLUMNS = (
  "stimOn_times",
  "firstMovement_times",
  "feedback_times",
  "choice",
  "feedbackType",
  "probabilityLeft",
  "contrastLeft",
  "contrastRight",
)


class IblDataError(ValueError):
  """A session's ALF files are missing, malformed or inconsistent."""


def _session_where(one, eid) -> str:
  return f"session {eid} ({one.eid2path(eid)})"


def dataset_files(one, eid) -> dict[str, str]:
  """{collection/name without revision: absolute path} of a session's datasets: of several
  revisions of a file, the table's default revision, else the latest `#revision#` folder."""
  rows = one.list_datasets(eid, details=True).reset_index()
  root = str(one.eid2path(eid))
  defaults = rows["default_revision"] if "default_revision" in rows else [False] * len(rows)
  entries = []
  for rel, default in zip(rows["rel_path"].astype(str), defaults):
    revision = re.search(r"(?:^|/)#([^/]*)#/", rel)
    key = re.sub(r"(?:^|/)#[^/]*#/", "/", rel).lstrip("/")
    entries.append(((bool(pd.notna(default) and default), revision.group(1) if revision else ""), key, rel))
  return {key: os.path.join(root, rel) for _, key, rel in sorted(entries)}  # later entries win


def probe_collections(files: dict[str, str], sorters, strict: bool = True) -> dict[str, str]:
  """{probe name: collection} of the probes: alf/<probe> or alf/<probe>/<sorter> folders
  holding spike sorting files, the sorter chosen by preference."""
  found: dict[str, set[str]] = {}
  for key in files:
    collection, name = key.rsplit("/", 1) if "/" in key else ("", key)
    parts = collection.split("/")
    if name in PROBE_FILES and len(parts) in (2, 3) and parts[0] == "alf":
      found.setdefault(parts[1], set()).add(collection)
  out = {}
  for probe, collections in sorted(found.items()):
    if len(collections) == 1:
      out[probe] = collections.pop()
      continue
    preferred = [f"alf/{probe}/{s}".rstrip("/") for s in sorters]
    chosen = [c for c in preferred if c in collections]
    if chosen:
      out[probe] = chosen[0]
    elif strict:
      raise IblDataError(
        f"probe {probe}: several spike sortings {sorted(collections)} and none of the preferred "
        f"sorters {list(sorters)}; set IblOptions.sorters"
      )
  return out


def _require(files: dict[str, str], key: str, where: str) -> str:
  path = files.get(key)
  if path is None:
    raise IblDataError(f"{where}: missing required file {key} (not in the ONE cache tables)")
  if not os.path.isfile(path):
    raise IblDataError(f"{where}: missing required file {path} (listed in the ONE cache tables, not on disk)")
  return path


def _load_npy(path: str, where: str) -> np.ndarray:
  try:
    return np.load(path, allow_pickle=False)
  except Exception as e:  # numpy raises several types for unreadable files
    raise IblDataError(f"{where}: {path} is not a readable .npy file ({type(e).__name__}: {e})") from e


def _load_pqt(path: str, where: str) -> pd.DataFrame:
  try:
    return pd.read_parquet(path)
  except Exception as e:  # pyarrow raises several types for unreadable files
    raise IblDataError(f"{where}: {path} is not a readable parquet table ({type(e).__name__}: {e})") from e


def _array_1d(path: str, where: str, what: str) -> np.ndarray:
  """A 1-D array from a .npy file ([n, 1] and [1, n] are flattened)."""
  array = _load_npy(path, where)
  if array.ndim == 2 and 1 in array.shape:
    array = array.reshape(-1)
  if array.ndim != 1:
    raise IblDataError(f"{where}: {path} must hold a 1-D array of {what}, got shape {array.shape}")
  return array


def _floats(path: str, where: str, what: str) -> np.ndarray:
  """[n] float64 from a .npy file."""
  return _array_1d(path, where, what).astype(np.float64)


def _times(path: str, where: str, what: str) -> np.ndarray:
  """[n] float64 seconds from a .npy file of times (recording.float64_times: float32 warns,
  float16 and integers raise)."""
  return recording.float64_times(_array_1d(path, where, what), f"{where}: {path}", what, IblDataError)


def _time_column(trials: pd.DataFrame, column: str, path: str, where: str) -> np.ndarray:
  """[n] float64 seconds of a time column of the trials table (as _times)."""
  values = trials[column]
  dtype = getattr(values.dtype, "numpy_dtype", values.dtype)  # pandas' nullable Float32/Float64
  array = values.to_numpy(dtype, na_value=np.nan) if np.dtype(dtype).kind == "f" else values.to_numpy()
  return recording.float64_times(array, f"{where}: {path}", f"times in column {column!r}", IblDataError)


def _integers(path: str, where: str, what: str) -> np.ndarray:
  """[n] int64 from a .npy file of integers."""
  values = _array_1d(path, where, what)
  if not np.issubdtype(values.dtype, np.integer):
    raise IblDataError(f"{where}: {path} must hold integer {what}, got dtype {values.dtype}")
  return values.astype(np.int64)


def _increasing_times(times: np.ndarray, path: str, where: str, strict: bool = False) -> None:
  if not np.all(np.isfinite(times)):
    raise IblDataError(f"{where}: {path} has {int(np.sum(~np.isfinite(times)))} NaN/inf times")
  bad = np.flatnonzero(np.diff(times) <= 0 if strict else np.diff(times) < 0)
  if len(bad):
    raise IblDataError(
      f"{where}: {path} times are not sorted: entry {bad[0] + 1} ({times[bad[0] + 1]}) follows {times[bad[0]]}"
    )


def _cluster_metrics(path: str, n_clusters: int, channels_path: str, where: str) -> pd.DataFrame:
  """clusters.metrics.pqt with row c = cluster c: ordered by its `cluster_id` column when it
  has one (each of 0 .. n_clusters - 1 exactly once), else taken row by row."""
  metrics = _load_pqt(path, where)
  if "cluster_id" not in metrics.columns:
    if len(metrics) != n_clusters:
      raise IblDataError(
        f"{where}: {path} has {len(metrics)} rows but {channels_path} has {n_clusters} clusters; "
        f"they must have one row per cluster (or a cluster_id column)"
      )
    return metrics.reset_index(drop=True)
  ids = metrics["cluster_id"].to_numpy()
  if not np.issubdtype(ids.dtype, np.integer):
    raise IblDataError(f"{where}: {path}: column cluster_id must hold integers, got dtype {ids.dtype}")
  values, counts = np.unique(ids, return_counts=True)
  problems = []
  if np.any(counts > 1):
    problems.append(f"duplicated cluster_id(s) {values[counts > 1][:5].tolist()}")
  outside = values[(values < 0) | (values >= n_clusters)]
  if len(outside):
    problems.append(f"cluster_id(s) {outside[:5].tolist()} outside the {n_clusters} clusters of {channels_path}")
  missing = np.setdiff1d(np.arange(n_clusters), values)
  if len(missing):
    problems.append(
      f"no row for cluster_id(s) {missing[:5].tolist()} ({len(missing)} of the {n_clusters} clusters "
      f"of {channels_path})"
    )
  if problems:
    raise IblDataError(f"{where}: {path}: {'; '.join(problems)}; expected one row per cluster id 0 .. {n_clusters - 1}")
  return metrics.set_index("cluster_id").loc[np.arange(n_clusters)].reset_index()


def _read_probe(files: dict[str, str], collection: str, where: str, regions) -> dict:
  """One probe's spikes and units, validated (regions: a _Regions)."""
  p = {name: _require(files, f"{collection}/{name}", where) for name in PROBE_FILES}
  times = _times(p["spikes.times.npy"], where, "spike times")
  clusters = _integers(p["spikes.clusters.npy"], where, "cluster indices")
  if len(times) == 0:
    raise IblDataError(f"{where}: empty probe {collection}: {p['spikes.times.npy']} holds no spikes")
  if len(times) != len(clusters):
    raise IblDataError(
      f"{where}: {p['spikes.times.npy']} has {len(times)} spikes but {p['spikes.clusters.npy']} "
      f"has {len(clusters)} cluster indices; they must have the same length"
    )
  _increasing_times(times, p["spikes.times.npy"], where)
  channels = _integers(p["clusters.channels.npy"], where, "channel indices")
  n_clusters = len(channels)
  bad = np.flatnonzero((clusters < 0) | (clusters >= n_clusters))
  if len(bad):
    raise IblDataError(
      f"{where}: {p['spikes.clusters.npy']}: spike {bad[0]} has cluster index {clusters[bad[0]]}, "
      f"outside the clusters table of {n_clusters} clusters ({p['clusters.channels.npy']}); "
      f"{len(bad)} spikes are out of range"
    )
  metrics = _cluster_metrics(p["clusters.metrics.pqt"], n_clusters, p["clusters.channels.npy"], where)
  atlas_ids = _integers(p["channels.brainLocationIds_ccf_2017.npy"], where, "Allen atlas ids")
  bad = np.flatnonzero((channels < 0) | (channels >= len(atlas_ids)))
  if len(bad):
    raise IblDataError(
      f"{where}: {p['clusters.channels.npy']}: cluster {bad[0]} is on channel {channels[bad[0]]}, "
      f"outside the {len(atlas_ids)} channels of {p['channels.brainLocationIds_ccf_2017.npy']}"
    )
  unknown = np.setdiff1d(atlas_ids, regions.valid_ids)
  if len(unknown):
    raise IblDataError(
      f"{where}: {p['channels.brainLocationIds_ccf_2017.npy']} has atlas ids {unknown[:5].tolist()} "
      f"that are not Allen CCF 2017 region ids (iblatlas BrainRegions)"
    )
  return dict(times=times, clusters=clusters, channels=channels, metrics=metrics, atlas_ids=atlas_ids, paths=p)


@dataclasses.dataclass(frozen=True)
class _Regions:
  """Allen atlas id -> acronym at one level, from iblatlas BrainRegions (the tables shipped
  with iblatlas: no download)."""

  level: str

  def __post_init__(self):
    from iblatlas.regions import BrainRegions  # imported only for IBL sources

    object.__setattr__(self, "table", BrainRegions())

  @property
  def valid_ids(self) -> np.ndarray:
    return np.unique(self.table.id)

  def acronyms(self, ids: np.ndarray) -> np.ndarray:
    return np.asarray(self.table.id2acronym(ids, mapping=configs.REGION_LEVELS[self.level]), dtype=object)


def _read_camera(files: dict[str, str], where: str) -> tuple[np.ndarray, np.ndarray, str, str]:
  """Frame times [F], whisker motion energy [F] of the left camera, else the right; the
  side and the frame times' path."""
  for side in ("left", "right"):
    if all(k in files for k in CAMERA_FILES[side]):
      times_path, energy_path = (_require(files, k, where) for k in CAMERA_FILES[side])
      times = _times(times_path, where, "frame times")
      energy = _floats(energy_path, where, "motion energy values")
      if len(times) != len(energy):
        raise IblDataError(
          f"{where}: {times_path} has {len(times)} frame times but {energy_path} has "
          f"{len(energy)} motion energy values; they must have the same length"
        )
      _increasing_times(times, times_path, where)
      return times, energy, side, times_path
  needed = " + ".join(CAMERA_FILES["left"])
  present = [k for side in CAMERA_FILES.values() for k in side if k in files]
  raise IblDataError(
    f"{where}: missing required file(s) {needed} (or the right camera's "
    f"{' + '.join(CAMERA_FILES['right'])}); found only {present or 'neither'}"
  )


def read_session(one, eid: str, options: configs.IblOptions = configs.IblOptions()) -> dict:
  """A session's ALF files, read and validated (no preprocessing): trials table, wheel,
  camera, per probe spikes and units with region acronyms, and `files`: the paths read."""
  eid = str(eid)
  try:
    path = one.eid2path(eid)
  except ValueError as e:  # one-api rejects strings that are not eids
    raise IblDataError(f"session {eid}: not a valid session id (eid) for the ONE cache of {one.cache_dir}: {e}") from e
  if path is None:
    known = [str(e) for e in one.search()]
    raise IblDataError(
      f"session {eid}: not in the ONE cache tables of {one.cache_dir} (it lists {len(known)} "
      f"sessions); list them with `python -m data_builders.build --list_ibl --manual_dir=...`"
    )
  where = _session_where(one, eid)
  files = dataset_files(one, eid)
  trials_path = _require(files, TRIALS_FILE, where)
  trials = _load_pqt(trials_path, where)
  missing = [c for c in TRIAL_COLUMNS if c not in trials.columns]
  if missing:
    raise IblDataError(f"{where}: {trials_path} has no column(s) {missing}; expected {list(TRIAL_COLUMNS)}")
  for column in TRIAL_TIME_COLUMNS:
    trials[column] = _time_column(trials, column, trials_path, where)
  wheel_pos_path, wheel_time_path = (_require(files, k, where) for k in WHEEL_FILES)
  wheel_pos = _floats(wheel_pos_path, where, "wheel positions")
  wheel_times = _times(wheel_time_path, where, "wheel times")
  if len(wheel_pos) != len(wheel_times) or len(wheel_pos) < 2:
    raise IblDataError(
      f"{where}: {wheel_pos_path} has {len(wheel_pos)} positions and {wheel_time_path} "
      f"{len(wheel_times)} times; they must have the same length (at least 2)"
    )
  _increasing_times(wheel_times, wheel_time_path, where)
  camera_times, motion_energy, camera, camera_times_path = _read_camera(files, where)

  probes = probe_collections(files, options.sorters)
  if not probes:
    raise IblDataError(
      f"{where}: no probe: expected spike sorting files {list(PROBE_FILES)} in alf/<probe>/ or alf/<probe>/<sorter>/"
    )
  regions = _Regions(options.regions)
  probe_data = {name: _read_probe(files, collection, where, regions) for name, collection in probes.items()}
  for name, p in probe_data.items():
    p["collection"] = probes[name]
    p["regions"] = regions.acronyms(p["atlas_ids"])
  read = [trials_path, wheel_pos_path, wheel_time_path] + [files[k] for k in CAMERA_FILES[camera]]
  read += [path for p in probe_data.values() for path in p["paths"].values()]
  return {
    "eid": eid,
    "where": where,
    "trials": trials,
    "trials_path": trials_path,
    "wheel_times": wheel_times,
    "wheel_times_path": wheel_time_path,
    "wheel_position": wheel_pos,
    "camera_times": camera_times,
    "camera_times_path": camera_times_path,
    "motion_energy": motion_energy,
    "camera": camera,
    "probes": probe_data,
    "files": sorted(read),
  }
