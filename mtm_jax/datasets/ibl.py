"""IBL Neuropixels sessions from a local ONE cache (ALF files) -> binned trials and event sessions.

A ONE cache root holds sessions as `<lab>/Subjects/<subject>/<date>/<number>/` folders and
the cache tables `sessions.pqt` + `datasets.pqt`. It is read with one-api in local mode
(`one.api.One(cache_dir=root, mode='local')`: never the network); when the tables are
missing they are built with one-api's `one.alf.cache.make_parquet_db`, each session's eid
then a uuid3 (like one-api's own ids) of its `<lab>/<subject>/<date>/<number>`
(session_eid: the same at every rebuild of the tables). Files read per
session (collection `alf`):

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

Preprocessing (as the MtM reference): trials aligned at stimOn_times, -0.5 .. +1.5 s in
20 ms bins (100 bins); all probes merged (neurons ordered by probe name, then cluster
id); trials kept when firstMovement_times - stimOn_times is in [0.08, 2] s, none of the
trial events is NaN and choice != 0; per trial choice (IBL sign: -1 counter-clockwise /
stimulus reported on the right, +1 clockwise / left), block (probabilityLeft), signed
contrast (contrastRight - contrastLeft), reward (feedbackType == 1), reaction time; per
bin the whisker motion energy interpolated to the bin centres and the wheel speed
|position(bin end) - position(bin start)| / 20 ms (rad/s, position interpolated
linearly); optionally only units with a minimum firing rate or quality label; trials
drawn 70/10/20 into train/val/test with a fixed seed. Region of a unit: the acronym of
its channel's atlas id (iblatlas BrainRegions, shipped with the package), optionally at
the coarser Beryl or Cosmos level.

Every inconsistency in the files raises IblDataError naming the file and the problem.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
import uuid

from absl import logging
import numpy as np
import pandas as pd

from mtm_jax.datasets import events
from mtm_jax.datasets import schema

T_AFTER = schema.N_BINS * schema.BIN_SIZE - schema.T_BEFORE  # 1.5 s after stimulus onset
TRIALS_FILE = "alf/_ibl_trials.table.pqt"
WHEEL_FILES = ("alf/_ibl_wheel.position.npy", "alf/_ibl_wheel.timestamps.npy")
CAMERA_FILES = {side: (f"alf/_ibl_{side}Camera.times.npy", f"alf/{side}Camera.ROIMotionEnergy.npy")
                for side in ("left", "right")}
PROBE_FILES = ("spikes.times.npy", "spikes.clusters.npy", "clusters.channels.npy", "clusters.metrics.pqt",
               "channels.brainLocationIds_ccf_2017.npy")
TRIAL_COLUMNS = ("stimOn_times", "firstMovement_times", "feedback_times", "choice", "feedbackType",
                 "probabilityLeft", "contrastLeft", "contrastRight")
# Events whose NaN drops a trial (contrasts are NaN on the side without a stimulus).
NAN_EXCLUDE = ("stimOn_times", "firstMovement_times", "feedback_times", "choice", "feedbackType", "probabilityLeft")
REGION_LEVELS = {"allen": "Allen", "beryl": "Beryl", "cosmos": "Cosmos"}
CACHE_TABLES = ("sessions.pqt", "datasets.pqt")
# Namespace of the eids of sessions in cache tables this project builds (session_eid).
SESSION_NAMESPACE = uuid.uuid3(uuid.NAMESPACE_URL, "mtm_jax/ibl-session")
BEHAVIOUR_NAMES = ("wheel_speed", "whisker_motion_energy")  # event sessions: behaviour dims in this order
_EID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"


class IblDataError(ValueError):
  """A session's ALF files are missing, malformed or inconsistent."""


@dataclasses.dataclass(frozen=True)
class IblOptions:
  """How a session is preprocessed (its builder config name encodes the non-defaults)."""

  regions: str = "allen"  # region level: "allen" (finest acronym), "beryl" or "cosmos"
  min_firing_rate: float = 0.0  # Hz, clusters.metrics firing_rate; 0 keeps every unit
  good_units_only: bool = False  # keep units with clusters.metrics label == 1 only
  min_reaction_time: float = 0.08  # s, firstMovement_times - stimOn_times
  max_reaction_time: float = 2.0
  sorters: tuple[str, ...] = ("iblsorter", "pykilosort", "")  # preferred alf/<probe>/<sorter> ("" = none)
  split_seed: int = 0

  def __post_init__(self):
    if self.regions not in REGION_LEVELS:
      raise ValueError(f"IblOptions.regions: {self.regions!r}; expected one of {sorted(REGION_LEVELS)}")
    if self.min_firing_rate < 0:
      raise ValueError(f"IblOptions.min_firing_rate must be >= 0, got {self.min_firing_rate}")


def config_name(eid: str, options: IblOptions = IblOptions()) -> str:
  """Builder config name of a session: the eid, then `_beryl`/`_cosmos`, `_rate<Hz>`, `_good`."""
  name = str(eid)
  if options.regions != "allen":
    name += f"_{options.regions}"
  if options.min_firing_rate > 0:
    name += f"_rate{options.min_firing_rate:g}"
  if options.good_units_only:
    name += "_good"
  return name


def parse_config_name(name: str) -> tuple[str, IblOptions] | None:
  """(eid, options) of a config name made by config_name; None if `name` is not one."""
  match = re.fullmatch(rf"({_EID})((?:_[a-z]+[0-9.]*)*)", name)
  if not match:
    return None
  kwargs = {}
  for part in filter(None, match.group(2).split("_")):
    if part in ("beryl", "cosmos") and "regions" not in kwargs:
      kwargs["regions"] = part
    elif part == "good" and "good_units_only" not in kwargs:
      kwargs["good_units_only"] = True
    elif re.fullmatch(r"rate[0-9]+(\.[0-9]+)?", part) and "min_firing_rate" not in kwargs:
      kwargs["min_firing_rate"] = float(part[4:])
    else:
      raise ValueError(f"IBL config {name!r}: unknown or repeated option {part!r}; options are _beryl or "
                       f"_cosmos (region level), _rate<Hz> (minimum firing rate), _good (label == 1 units)")
  return match.group(1).lower(), IblOptions(**kwargs)


def canonical_config_name(name: str) -> str | None:
  """The one name of the data set `name` stands for (options in config_name's order, lower
  case eid); None if `name` is not an IBL config name."""
  parsed = parse_config_name(name)
  return None if parsed is None else config_name(*parsed)


def builder_config_kwargs(name: str) -> dict | None:
  """Keyword arguments of the TFDS builder config of IBL config name `name` (both IBL
  builders take them); None when `name` is not an IBL config name. A name that is not
  canonical (canonical_config_name) is refused, so one data set has one name."""
  parsed = parse_config_name(name)
  if parsed is None:
    return None
  eid, options = parsed
  if name != config_name(eid, options):
    raise ValueError(f"IBL config {name!r}: this data set is named {config_name(eid, options)!r} (lower-case eid, "
                     f"options in the order _beryl/_cosmos, _rate<Hz>, _good)")
  return dict(name=name, source="ibl", eid=eid, ibl_options=options, split_seed=options.split_seed,
              description=f"IBL session {eid} from the ONE cache in manual_dir ({options}).")


# ------------------------------------------------------------------------------------------
# The ONE cache
# ------------------------------------------------------------------------------------------


def open_cache(root: str):
  """one.api.One on a local cache root, offline; builds the cache tables when missing
  (make_cache_tables). Tables that exist are used as they are."""
  from one import api as one_api  # one-api is imported only for IBL sources

  root = os.path.abspath(os.path.expanduser(str(root)))
  if not os.path.isdir(root):
    raise IblDataError(f"{root}: not a directory; expected a ONE cache root holding "
                       f"<lab>/Subjects/<subject>/<date>/<number>/alf/ session folders")
  if not all(os.path.isfile(os.path.join(root, t)) for t in CACHE_TABLES):
    logging.info("%s: no ONE cache tables; building them with one.alf.cache.make_parquet_db", root)
    make_cache_tables(root)
  return one_api.One(cache_dir=root, mode="local")


def session_eid(session_id: str) -> str:
  """The eid given to a session when this project builds the cache tables: a uuid3 (like
  one-api's own ids) of one-api's relative session id `<lab>/<subject>/<date>/<number>`,
  so the same on every machine and at every rebuild of the tables."""
  return str(uuid.uuid3(SESSION_NAMESPACE, session_id))


def make_cache_tables(root: str) -> None:
  """Writes the cache tables of root with one-api's make_parquet_db (its session ids are
  relative session paths), then gives sessions their session_eid and datasets a uuid3 of
  (eid, relative path). Each table is written to a temporary file and renamed."""
  from iblutil.io import parquet  # pylint: disable=g-import-not-at-top  (a one-api dependency)
  from one.alf import cache as one_cache  # pylint: disable=g-import-not-at-top

  with tempfile.TemporaryDirectory(dir=root, prefix=".cache_tables.") as tmp:
    one_cache.make_parquet_db(root, out_dir=tmp, hash_ids=False)
    (sessions, ses_meta), (datasets, dsets_meta) = (parquet.load(os.path.join(tmp, t)) for t in CACHE_TABLES)
    eids = {i: session_eid(i) for i in sessions["id"]}
    sessions = sessions.assign(id=sessions["id"].map(eids)).set_index("id").sort_index()
    eid = datasets["eid"].map(eids)
    ids = [str(uuid.uuid3(uuid.UUID(e), r)) for e, r in zip(eid, datasets["rel_path"])]
    datasets = datasets.assign(eid=eid, id=ids).set_index(["eid", "id"]).sort_index()
    for name, table, meta in zip(CACHE_TABLES, (sessions, datasets), (ses_meta, dsets_meta)):
      parquet.save(os.path.join(tmp, f"{name}.new"), table, meta)
    for name in CACHE_TABLES:
      os.replace(os.path.join(tmp, f"{name}.new"), os.path.join(root, name))


def _session_where(one, eid) -> str:
  return f"session {eid} ({one.eid2path(eid)})"


def list_sessions(root: str) -> list[dict]:
  """The sessions of a cache root whose folder exists: eid, path, probe collections."""
  one = open_cache(root)
  out = []
  for eid in one.search():
    path = one.eid2path(eid)
    if path is None or not os.path.isdir(path):
      continue
    datasets = _dataset_files(one, eid)
    out.append(dict(eid=str(eid), path=os.path.relpath(str(path), one.cache_dir),
                    probes=sorted(_probe_collections(datasets, IblOptions().sorters, strict=False).values())))
  return out


def _dataset_files(one, eid) -> dict[str, str]:
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


def _probe_collections(files: dict[str, str], sorters, strict: bool = True) -> dict[str, str]:
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
      raise IblDataError(f"probe {probe}: several spike sortings {sorted(collections)} and none of the preferred "
                         f"sorters {list(sorters)}; set IblOptions.sorters")
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
    raise IblDataError(f"{where}: {path} times are not sorted: entry {bad[0] + 1} ({times[bad[0] + 1]}) follows "
                       f"{times[bad[0]]}")


# ------------------------------------------------------------------------------------------
# Reading and validating the files
# ------------------------------------------------------------------------------------------


def _cluster_metrics(path: str, n_clusters: int, channels_path: str, where: str) -> pd.DataFrame:
  """clusters.metrics.pqt with row c = cluster c: ordered by its `cluster_id` column when it
  has one (each of 0 .. n_clusters - 1 exactly once), else taken row by row."""
  metrics = _load_pqt(path, where)
  if "cluster_id" not in metrics.columns:
    if len(metrics) != n_clusters:
      raise IblDataError(f"{where}: {path} has {len(metrics)} rows but {channels_path} has {n_clusters} clusters; "
                         f"they must have one row per cluster (or a cluster_id column)")
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
    problems.append(f"no row for cluster_id(s) {missing[:5].tolist()} ({len(missing)} of the {n_clusters} clusters "
                    f"of {channels_path})")
  if problems:
    raise IblDataError(f"{where}: {path}: {'; '.join(problems)}; expected one row per cluster id 0 .. "
                       f"{n_clusters - 1}")
  return metrics.set_index("cluster_id").loc[np.arange(n_clusters)].reset_index()


def _read_probe(files: dict[str, str], collection: str, where: str, regions) -> dict:
  """One probe's spikes and units, validated (regions: a _Regions)."""
  p = {name: _require(files, f"{collection}/{name}", where) for name in PROBE_FILES}
  times = _floats(p["spikes.times.npy"], where, "spike times")
  clusters = _integers(p["spikes.clusters.npy"], where, "cluster indices")
  if len(times) == 0:
    raise IblDataError(f"{where}: empty probe {collection}: {p['spikes.times.npy']} holds no spikes")
  if len(times) != len(clusters):
    raise IblDataError(f"{where}: {p['spikes.times.npy']} has {len(times)} spikes but {p['spikes.clusters.npy']} "
                       f"has {len(clusters)} cluster indices; they must have the same length")
  _increasing_times(times, p["spikes.times.npy"], where)
  channels = _integers(p["clusters.channels.npy"], where, "channel indices")
  n_clusters = len(channels)
  bad = np.flatnonzero((clusters < 0) | (clusters >= n_clusters))
  if len(bad):
    raise IblDataError(f"{where}: {p['spikes.clusters.npy']}: spike {bad[0]} has cluster index {clusters[bad[0]]}, "
                       f"outside the clusters table of {n_clusters} clusters ({p['clusters.channels.npy']}); "
                       f"{len(bad)} spikes are out of range")
  metrics = _cluster_metrics(p["clusters.metrics.pqt"], n_clusters, p["clusters.channels.npy"], where)
  atlas_ids = _integers(p["channels.brainLocationIds_ccf_2017.npy"], where, "Allen atlas ids")
  bad = np.flatnonzero((channels < 0) | (channels >= len(atlas_ids)))
  if len(bad):
    raise IblDataError(f"{where}: {p['clusters.channels.npy']}: cluster {bad[0]} is on channel {channels[bad[0]]}, "
                       f"outside the {len(atlas_ids)} channels of {p['channels.brainLocationIds_ccf_2017.npy']}")
  unknown = np.setdiff1d(atlas_ids, regions.valid_ids)
  if len(unknown):
    raise IblDataError(f"{where}: {p['channels.brainLocationIds_ccf_2017.npy']} has atlas ids {unknown[:5].tolist()} "
                       f"that are not Allen CCF 2017 region ids (iblatlas BrainRegions)")
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
    return np.asarray(self.table.id2acronym(ids, mapping=REGION_LEVELS[self.level]), dtype=object)


def _read_camera(files: dict[str, str], where: str) -> tuple[np.ndarray, np.ndarray, str]:
  """Frame times [F], whisker motion energy [F] of the left camera, else the right."""
  for side in ("left", "right"):
    if all(k in files for k in CAMERA_FILES[side]):
      times_path, energy_path = (_require(files, k, where) for k in CAMERA_FILES[side])
      times = _floats(times_path, where, "frame times")
      energy = _floats(energy_path, where, "motion energy values")
      if len(times) != len(energy):
        raise IblDataError(f"{where}: {times_path} has {len(times)} frame times but {energy_path} has "
                           f"{len(energy)} motion energy values; they must have the same length")
      _increasing_times(times, times_path, where)
      return times, energy, side
  needed = " + ".join(CAMERA_FILES["left"])
  present = [k for side in CAMERA_FILES.values() for k in side if k in files]
  raise IblDataError(f"{where}: missing required file(s) {needed} (or the right camera's "
                     f"{' + '.join(CAMERA_FILES['right'])}); found only {present or 'neither'}")


def read_session(one, eid: str, options: IblOptions = IblOptions()) -> dict:
  """A session's ALF files, read and validated (no preprocessing): trials table, wheel,
  camera, per probe spikes and units with region acronyms, and `files`: the paths read."""
  eid = str(eid)
  try:
    path = one.eid2path(eid)
  except ValueError as e:  # one-api rejects strings that are not eids
    raise IblDataError(f"session {eid}: not a valid session id (eid) for the ONE cache of {one.cache_dir}: {e}") from e
  if path is None:
    known = [str(e) for e in one.search()]
    raise IblDataError(f"session {eid}: not in the ONE cache tables of {one.cache_dir} (it lists {len(known)} "
                       f"sessions); list them with `python -m data_builders.build --list_ibl --manual_dir=...`")
  where = _session_where(one, eid)
  files = _dataset_files(one, eid)
  trials_path = _require(files, TRIALS_FILE, where)
  trials = _load_pqt(trials_path, where)
  missing = [c for c in TRIAL_COLUMNS if c not in trials.columns]
  if missing:
    raise IblDataError(f"{where}: {trials_path} has no column(s) {missing}; expected {list(TRIAL_COLUMNS)}")
  wheel_pos_path, wheel_time_path = (_require(files, k, where) for k in WHEEL_FILES)
  wheel_pos = _floats(wheel_pos_path, where, "wheel positions")
  wheel_times = _floats(wheel_time_path, where, "wheel times")
  if len(wheel_pos) != len(wheel_times) or len(wheel_pos) < 2:
    raise IblDataError(f"{where}: {wheel_pos_path} has {len(wheel_pos)} positions and {wheel_time_path} "
                       f"{len(wheel_times)} times; they must have the same length (at least 2)")
  _increasing_times(wheel_times, wheel_time_path, where)
  camera_times, motion_energy, camera = _read_camera(files, where)

  probes = _probe_collections(files, options.sorters)
  if not probes:
    raise IblDataError(f"{where}: no probe: expected spike sorting files {list(PROBE_FILES)} in "
                       f"alf/<probe>/ or alf/<probe>/<sorter>/")
  regions = _Regions(options.regions)
  probe_data = {name: _read_probe(files, collection, where, regions) for name, collection in probes.items()}
  for name, p in probe_data.items():
    p["collection"] = probes[name]
    p["regions"] = regions.acronyms(p["atlas_ids"])
  read = [trials_path, wheel_pos_path, wheel_time_path] + [files[k] for k in CAMERA_FILES[camera]]
  read += [path for p in probe_data.values() for path in p["paths"].values()]
  return dict(eid=eid, where=where, trials=trials, trials_path=trials_path, wheel_times=wheel_times,
              wheel_position=wheel_pos, camera_times=camera_times, motion_energy=motion_energy, camera=camera,
              probes=probe_data, files=sorted(read))


# ------------------------------------------------------------------------------------------
# Preprocessing (pure functions of arrays)
# ------------------------------------------------------------------------------------------


def select_trials(trials: pd.DataFrame, options: IblOptions = IblOptions()) -> tuple[np.ndarray, dict]:
  """Indices of the kept trials (table rows) and how many each rule dropped.

  Rules in order: NaN stimOn_times (alignment), NaN in another event of NAN_EXCLUDE,
  choice 0 (no-go), reaction time outside [min, max]."""
  stim = trials["stimOn_times"].to_numpy(np.float64)
  nan_align = ~np.isfinite(stim)
  nan_other = ~nan_align & np.any([~np.isfinite(trials[c].to_numpy(np.float64)) for c in NAN_EXCLUDE], axis=0)
  ok = ~nan_align & ~nan_other
  no_choice = ok & (trials["choice"].to_numpy(np.float64) == 0)
  ok &= ~no_choice
  rt = trials["firstMovement_times"].to_numpy(np.float64) - stim
  with np.errstate(invalid="ignore"):
    bad_rt = ok & ((rt < options.min_reaction_time) | (rt > options.max_reaction_time))
  ok &= ~bad_rt
  counts = dict(n_trials_in_table=int(len(stim)), dropped_nan_stim_on=int(nan_align.sum()),
                dropped_nan_events=int(nan_other.sum()), dropped_no_choice=int(no_choice.sum()),
                dropped_reaction_time=int(bad_rt.sum()))
  return np.flatnonzero(ok), counts


def bin_edges(align_times: np.ndarray) -> np.ndarray:
  """[K, N_BINS + 1] bin edges (s) of trials aligned at align_times [K]."""
  offsets = -schema.T_BEFORE + schema.BIN_SIZE * np.arange(schema.N_BINS + 1)
  return np.asarray(align_times, np.float64)[:, None] + offsets[None, :]


def bin_centres(align_times: np.ndarray) -> np.ndarray:
  """[K, N_BINS] bin centres (s)."""
  edges = bin_edges(align_times)
  return 0.5 * (edges[:, 1:] + edges[:, :-1])


def bin_spikes(times: np.ndarray, columns: np.ndarray, n_columns: int, align_times: np.ndarray) -> np.ndarray:
  """[K, N_BINS, n_columns] int32 spike counts per trial, bin and column.

  times [S] sorted spike times; columns [S] column (neuron) of each spike, -1 = not kept."""
  edges = bin_edges(align_times)
  counts = np.zeros((len(edges), schema.N_BINS, n_columns), np.int32)
  for k, e in enumerate(edges):
    lo, hi = np.searchsorted(times, [e[0], e[-1]], side="left")
    cols = columns[lo:hi]
    bins = np.searchsorted(e, times[lo:hi], side="right") - 1
    keep = (cols >= 0) & (bins >= 0) & (bins < schema.N_BINS)
    np.add.at(counts[k], (bins[keep], cols[keep]), 1)
  return counts


def interpolate_to_bins(times: np.ndarray, values: np.ndarray, align_times: np.ndarray) -> np.ndarray:
  """[K, N_BINS] values interpolated linearly at the bin centres (NaN samples skipped)."""
  finite = np.isfinite(values)
  return np.interp(bin_centres(align_times), times[finite], values[finite]).astype(np.float32)


def wheel_speed(times: np.ndarray, position: np.ndarray, align_times: np.ndarray) -> np.ndarray:
  """[K, N_BINS] wheel speed (rad/s): |position(end) - position(start)| / bin size per bin,
  with the position interpolated linearly at the bin edges."""
  at_edges = np.interp(bin_edges(align_times), times, position)
  return (np.abs(np.diff(at_edges, axis=1)) / schema.BIN_SIZE).astype(np.float32)


def _covered(align_times: np.ndarray, times: np.ndarray) -> np.ndarray:
  """[K] bool: the trial window lies inside [times[0], times[-1]]."""
  return (align_times - schema.T_BEFORE >= times[0]) & (align_times + T_AFTER <= times[-1])


def select_units(probe: dict, options: IblOptions, where: str) -> tuple[np.ndarray, int]:
  """Cluster ids kept on one probe (sorted) and how many spike-less clusters were dropped."""
  n_clusters = len(probe["channels"])
  keep = np.zeros(n_clusters, bool)
  keep[np.unique(probe["clusters"])] = True
  n_silent = int(n_clusters - keep.sum())
  metrics, path = probe["metrics"], probe["paths"]["clusters.metrics.pqt"]
  for column, wanted in (("firing_rate", options.min_firing_rate > 0), ("label", options.good_units_only)):
    if wanted and column not in metrics.columns:
      raise IblDataError(f"{where}: {path} has no {column!r} column, needed by the unit filter")
  if options.min_firing_rate > 0:
    keep &= metrics["firing_rate"].to_numpy(np.float64) >= options.min_firing_rate
  if options.good_units_only:
    keep &= metrics["label"].to_numpy(np.float64) == 1
  return np.flatnonzero(keep), n_silent


def preprocess(raw: dict, options: IblOptions = IblOptions()) -> dict:
  """A read session (read_session) -> binned session in the schema of
  mtm_jax.datasets.schema, plus trial_index [K] (trials table rows), trial_split [K] str,
  unit_ids [N], spike_times/spike_units of the kept units, source_info (counts) and
  source_files (the paths read)."""
  where = raw["where"]
  trials = raw["trials"]
  kept, info = select_trials(trials, options)
  stim = trials["stimOn_times"].to_numpy(np.float64)
  covered = (_covered(stim[kept], raw["wheel_times"]) & _covered(stim[kept], raw["camera_times"]))
  info["dropped_outside_behaviour_recording"] = int(np.sum(~covered))
  kept = kept[covered]
  if info["dropped_nan_stim_on"]:
    logging.warning("%s: %d of %d trials have NaN stimOn_times (alignment) in %s: dropped", where,
                    info["dropped_nan_stim_on"], info["n_trials_in_table"], raw["trials_path"])
  logging.info("%s: trials kept %d; dropped %s", where, len(kept),
               {k: v for k, v in info.items() if k.startswith("dropped")})
  if len(kept) == 0:
    raise IblDataError(f"{where}: no usable trials in {raw['trials_path']} ({info['n_trials_in_table']} trials; "
                       f"dropped: {', '.join(f'{k}={v}' for k, v in info.items() if k.startswith('dropped'))})")
  if len(kept) < len(schema.SPLIT_FRACTIONS):
    raise IblDataError(f"{where}: only {len(kept)} usable trials in {raw['trials_path']}; need at least "
                       f"{len(schema.SPLIT_FRACTIONS)} for the train/val/test split")
  align = stim[kept]

  spikes, regions, unit_ids, spike_times, spike_units = [], [], [], [], []
  n_units = 0
  info["dropped_silent_clusters"] = info["dropped_by_unit_filter"] = 0
  for name, probe in sorted(raw["probes"].items()):
    ids, n_silent = select_units(probe, options, where)
    info["dropped_silent_clusters"] += n_silent
    info["dropped_by_unit_filter"] += int(len(probe["channels"]) - n_silent - len(ids))
    columns = np.full(len(probe["channels"]), -1, np.int64)
    columns[ids] = np.arange(len(ids))
    spike_columns = columns[probe["clusters"]]
    spikes.append(bin_spikes(probe["times"], spike_columns, len(ids), align))
    regions += list(probe["regions"][probe["channels"][ids]])
    unit_ids += [f"{name}/{c}" for c in ids]
    on = spike_columns >= 0
    spike_times.append(probe["times"][on])
    spike_units.append(spike_columns[on] + n_units)
    n_units += len(ids)
  if n_units == 0:
    raise IblDataError(f"{where}: no units left after the unit filter (min_firing_rate={options.min_firing_rate}, "
                       f"good_units_only={options.good_units_only})")
  times = np.concatenate(spike_times)
  order = np.argsort(times, kind="stable")

  choice = trials["choice"].to_numpy(np.float64)[kept]
  contrast = (np.nan_to_num(trials["contrastRight"].to_numpy(np.float64)[kept])
              - np.nan_to_num(trials["contrastLeft"].to_numpy(np.float64)[kept]))
  split = np.empty(len(kept), dtype=object)
  for name, idx in schema.split_trials(len(kept), seed=options.split_seed).items():
    split[idx] = name
  info.update(n_trials=int(len(kept)), n_units=int(n_units), camera=raw["camera"],
              probes={name: p["collection"] for name, p in sorted(raw["probes"].items())})
  return dict(
      spikes=np.concatenate(spikes, axis=2),
      regions=np.array(regions, dtype=object),
      choice=choice.astype(np.int32),
      block=trials["probabilityLeft"].to_numpy(np.float32)[kept],
      contrast=contrast.astype(np.float32),
      reward=(trials["feedbackType"].to_numpy(np.float64)[kept] == 1).astype(np.int32),
      reaction_time=(trials["firstMovement_times"].to_numpy(np.float64)[kept] - align).astype(np.float32),
      whisker_motion_energy=interpolate_to_bins(raw["camera_times"], raw["motion_energy"], align),
      wheel_speed=wheel_speed(raw["wheel_times"], raw["wheel_position"], align),
      trial_index=kept.astype(np.int32),
      trial_split=split,
      align_times=align,
      unit_ids=np.array(unit_ids, dtype=object),
      spike_times=times[order],
      spike_units=np.concatenate(spike_units)[order].astype(np.int32),
      source_info=info,
      source_files=raw["files"],
  )


def event_session(binned: dict, session_id: str) -> dict:
  """A preprocessed session (preprocess) -> event session (mtm_jax.datasets.events schema).

  Trials are the aligned windows [stimOn - 0.5, stimOn + 1.5) s, in their binned split;
  a window overlapping the previous kept one is left out (counted in source_info).
  Behaviour: BEHAVIOUR_NAMES at the 20 ms bin centres of the kept windows, weight 1."""
  align = binned["align_times"]
  order = np.argsort(align, kind="stable")
  kept, last_end = [], -np.inf
  for k in order:
    if align[k] - schema.T_BEFORE >= last_end:
      kept.append(k)
      last_end = align[k] + T_AFTER
  kept = np.array(kept, np.int64)
  starts, ends = align[kept] - schema.T_BEFORE, align[kept] + T_AFTER
  labels = binned["trial_split"][kept]
  splits = {s: np.stack([starts[labels == s], ends[labels == s]], 1).reshape(-1, 2) for s in events.SPLITS}
  empty = [s for s, iv in splits.items() if len(iv) == 0]
  if empty:
    raise IblDataError(f"session {session_id}: no trials left in split(s) {empty} after removing overlapping "
                       f"trial windows; the event data set needs all of {list(events.SPLITS)}")
  values = np.stack([binned[name][kept] for name in BEHAVIOUR_NAMES], axis=-1)  # [K, N_BINS, 2]
  info = dict(binned["source_info"], dropped_overlapping_windows=int(len(align) - len(kept)))
  return dict(
      session_id=session_id,
      spike_times=binned["spike_times"],
      spike_units=binned["spike_units"],
      unit_ids=np.array([f"{session_id}/{u}" for u in binned["unit_ids"]], dtype=object),
      unit_regions=binned["regions"],
      behaviour_name=",".join(BEHAVIOUR_NAMES),
      behaviour_timestamps=bin_centres(align[kept]).reshape(-1),
      behaviour_values=values.reshape(-1, len(BEHAVIOUR_NAMES)).astype(np.float32),
      behaviour_weights=np.ones(len(kept) * schema.N_BINS, np.float32),
      trial_starts=starts,
      trial_ends=ends,
      splits=splits,
      source_info=info,
      source_files=binned["source_files"],
  )


def load_session(root: str, eid: str, options: IblOptions = IblOptions()) -> dict:
  """Reads, validates and preprocesses session `eid` of the ONE cache at `root` (preprocess)."""
  return preprocess(read_session(open_cache(root), eid, options), options)
