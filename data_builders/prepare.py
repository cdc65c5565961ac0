"""Preparing this project's TFDS data sets (array_record, no TensorFlow)."""

from __future__ import annotations

import contextlib
import glob
import io
import os
import shutil
import time

from absl import logging
import tensorflow_datasets as tfds
import tqdm

from data_builders.bwb_binned import bwb_binned  # registers the builder
from data_builders.ibl_binned import ibl_binned  # registers the builder
from data_builders.nwb_binned import nwb_binned  # registers the builder
from data_builders.spike_events import spike_events  # registers the builder
from mtm_jax import files
from mtm_jax.bwb import datasets as bwb_datasets
from mtm_jax.datasets import nwb_sets
from mtm_jax.datasets import provenance
from mtm_jax.datasets.ibl import cache
from mtm_jax.datasets.ibl import configs

# Builders whose configs for IBL sessions (`<eid>[_options]`) are made on demand.
_IBL_CONFIGS = {"ibl_binned": ibl_binned.ibl_config, "spike_events": spike_events.ibl_config}
# Builders whose configs for a user's NWB files (`nwb_<stem>`, nwb_sets) are made on demand,
# with the build's nwb_options (behaviour, window).
_NWB_CONFIGS = {"spike_events": spike_events.nwb_config, "nwb_binned": nwb_binned.nwb_config}
# Builders whose configs for BWB session files (`bwb_<all|sel>_<split set>_<eid>`, mtm_jax.bwb.datasets)
# are made on demand.
_BWB_CONFIGS = {"spike_events": spike_events.bwb_config, "bwb_binned": bwb_binned.bwb_config}
NWB_FLAGS = dict(
  behaviour="--nwb_behaviour", dims="--nwb_behaviour_dims", window="--nwb_window"
)  # the flag of each NWB option
LOCKS_DIR = ".locks"  # <data_dir>/.locks/<builder>.<config>.lock: one lock per data set (lock_path)


class BuildError(ValueError):
  """Some of the requested data sets failed to build."""


def failure_summary(failures: list[str], n_datasets: int) -> str:
  """`k of n data sets failed to build[; the other m were built]:` and one line per failure."""
  head = f"{len(failures)} of {n_datasets} data sets failed to build"
  built = n_datasets - len(failures)
  if built:
    head += f"; the other {built} {'was' if built == 1 else 'were'} built"
  return head + ":\n" + "\n".join(failures)


def _builder(name: str, data_dir: str, registered: set[str], nwb_options: dict | None = None):
  builder_name, _, config = name.partition("/")
  if not config:
    raise ValueError(
      f"--dataset: {name!r} names no config; expected <builder>/<config>, e.g. "
      f"'ibl_binned/synthetic_000' or 'spike_events/<eid>'"
    )
  if builder_name not in registered:
    raise ValueError(
      f"--dataset: unknown data set {builder_name!r} in {name!r}; this project builds "
      f"'ibl_binned/<config>', 'spike_events/<config>', 'nwb_binned/nwb_<stem>' and 'bwb_binned/bwb_<...>'"
    )
  try:
    if builder_name in _BWB_CONFIGS and bwb_datasets.parse(config) is not None:
      return tfds.builder(
        builder_name, config=_BWB_CONFIGS[builder_name](config), data_dir=data_dir, file_format="array_record"
      )
    if builder_name in _NWB_CONFIGS and config not in tfds.builder_cls(builder_name).builder_configs:
      nwb_config = _NWB_CONFIGS[builder_name](config, **(nwb_options or {}))
      if nwb_config is not None:
        return tfds.builder(builder_name, config=nwb_config, data_dir=data_dir, file_format="array_record")
    if builder_name in _IBL_CONFIGS and config not in tfds.builder_cls(builder_name).builder_configs:
      ibl_config = _IBL_CONFIGS[builder_name](config)
      if ibl_config is not None:
        return tfds.builder(builder_name, config=ibl_config, data_dir=data_dir, file_format="array_record")
    return tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except (ValueError, KeyError, tfds.core.registered.DatasetNotFoundError) as e:
    raise ValueError(f"--dataset: {name!r} is not a known config: {e}") from e


def _clear_leftovers(builder) -> bool:
  """Before building: restores a data set a killed rebuild had moved aside (replaced.*) and
  removes the temporary folders (TFDS incomplete.*) of killed builds of this config.
  Returns whether a data set was restored (the builder must then be made again)."""
  config_dir, version = os.path.split(builder.data_dir)
  aside, restored = provenance.aside_dir(builder.data_dir), False
  if os.path.isdir(aside):
    if not os.path.exists(builder.data_dir):
      logging.warning("%s: restoring the data set an interrupted rebuild had moved aside", builder.data_dir)
      os.rename(aside, builder.data_dir)
      restored = True
    else:
      logging.warning("%s: removing the previous data set left by an interrupted rebuild", aside)
      shutil.rmtree(aside)
  for path in sorted(glob.glob(os.path.join(config_dir, f"{tfds.core.constants.INCOMPLETE_PREFIX}*{version}"))):
    logging.warning("%s: removing the unfinished build of a killed run", path)
    shutil.rmtree(path)
  return restored


@contextlib.contextmanager
def _kept_aside(data_dir: str):
  """Moves a built version aside for the block: deleted if the block succeeds, put back if
  it fails (a kill leaves it for _clear_leftovers)."""
  os.rename(data_dir, provenance.aside_dir(data_dir))
  try:
    yield
  except BaseException:
    if os.path.exists(data_dir):
      shutil.rmtree(data_dir)
    os.rename(provenance.aside_dir(data_dir), data_dir)
    raise
  shutil.rmtree(provenance.aside_dir(data_dir))


def _prepare(builder, manual_dir: str | None) -> None:
  """Builds one data set. A failed build removes the config folder it created (when empty)."""
  config_dir = os.path.dirname(builder.data_dir)
  created = not os.path.exists(config_dir)
  download_config = None
  if manual_dir is not None:
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
  start = time.monotonic()
  try:
    # TFDS prints two lines of its own per build (sizes it does not know yet: "Unknown
    # size"); one log line below says what was built instead.
    with contextlib.redirect_stdout(io.StringIO()):
      builder.download_and_prepare(download_config=download_config)
  except BaseException:
    if created and os.path.isdir(config_dir) and not os.listdir(config_dir):
      os.rmdir(config_dir)
    raise
  splits = ", ".join(f"{n} {s.num_examples}" for n, s in builder.info.splits.items())
  logging.info(
    "built %s/%s (%s examples) in %s, %.0f s",
    builder.name,
    builder.builder_config.name,
    splits,
    builder.data_dir,
    time.monotonic() - start,
  )


def _source_check(name: str, builder, data_dir: str, manual_dir: str | None, nwb_options: dict | None) -> None:
  """Raises provenance.SourceChangedError when a built data set's source files changed, or
  it was built with NWB options other than those asked for."""
  source = builder.info.metadata.get(provenance.RECORD_KEY)
  if source is not None and nwb_options:
    requested = {k: None if v is None else round(v, 6) if k == "window" else v for k, v in nwb_options.items()}
    provenance.check_options(name, data_dir, source, requested, NWB_FLAGS)
  if source is None and getattr(builder.builder_config, "source", "nwb") in ("nwb", "ibl", "bwb"):
    logging.warning(
      "%s: built without a record of its source files, so they cannot be checked; %s",
      name,
      provenance.rebuild_hint(name, data_dir, manual_dir),
    )
  provenance.check(name, data_dir, source, manual_dir)


def lock_path(data_dir: str, name: str) -> str:
  """The lock file of data set `name` (<builder>/<config>): <data_dir>/.locks/<builder>.<config>.lock
  (hidden, and outside the builder's folder: TFDS never takes it for a config or version)."""
  return os.path.join(data_dir, LOCKS_DIR, name.replace("/", ".", 1) + ".lock")


def _stamp(builder) -> tuple[int, int] | None:
  """Which build of the data set is there: the inode and mtime of its dataset_info.json, in
  its folder or moved aside by a rebuild (provenance.aside_dir); None when there is none."""
  for folder in (builder.data_dir, provenance.aside_dir(builder.data_dir)):
    try:
      info = os.stat(os.path.join(folder, tfds.core.constants.DATASET_INFO_FILENAME))
    except FileNotFoundError:
      continue
    return info.st_ino, info.st_mtime_ns
  return None


def _build_locked(name: str, data_dir: str, registered, manual_dir: str | None, rebuild: bool, before, nwb_options):
  """Builds (or rebuilds, or checks) data set `name` while holding its lock; returns its
  TFDS builder, made here (another process may have built it while this one waited).
  before: _stamp of the data set before waiting; a data set another process built or
  rebuilt while this one waited (the stamp changed) is used as it is, even with `rebuild`."""
  make = lambda: _builder(name, data_dir, registered, nwb_options)
  builder = make()
  if _clear_leftovers(builder):
    builder = make()
  if not provenance.is_built(builder):
    _prepare(builder, manual_dir)
  elif rebuild and _stamp(builder) == before:
    with _kept_aside(builder.data_dir):
      builder = make()  # made without the previous version's info
      _prepare(builder, manual_dir)
  else:
    if rebuild:
      logging.info("%s: rebuilt by another process while this one waited; not rebuilt again", name)
    _source_check(name, builder, data_dir, manual_dir, nwb_options)
    logging.info("%s: already built in %s", name, builder.data_dir)
  return builder


def build(
  datasets: list[str],
  data_dir: str,
  manual_dir: str | None = None,
  keep_going: bool = False,
  rebuild=(),
  nwb_options: dict | None = None,
) -> list[str]:
  """Prepares each data set (skipping finished ones); returns their directories.

  manual_dir: where NWB configs find their files and IBL configs their ONE cache (default
  <data_dir>/downloads/manual). TFDS writes into a temporary directory and renames it when
  complete, so a failed or interrupted build never leaves a data set that reads would take
  for finished, and data sets built before stay as they are. A finished data set whose
  source files changed (mtm_jax.datasets.provenance) is a failure, unless it is in
  `rebuild`: those are built again (the previous version is kept until the new one is
  complete). keep_going: build the other data sets when one fails, then raise BuildError
  naming every failure.

  Several processes may build into one data_dir at once (two programs, the hosts of one
  job): each data set is built under its lock (lock_path), which covers clearing what
  killed builds left, the is-it-built check and the build; a process that finds it held
  logs `waiting for another process building <name> (pid N on host H, lock file ...)`,
  waits, and then uses what the other built (a rebuild too). Different data sets build in
  parallel.

  nwb_options: for the data sets of a user's NWB files (`<builder>/nwb_<stem>`), dict(
  behaviour=the series of processing/behavior (None: the only one), dims=comma-separated names
  of its columns (None: from the file, else none), window=trials cut to
  this many s from their start (None: nwb_binned the median trial, spike_events whole trials)); a data set built with other options is refused
  like a changed source (provenance.check_options) unless rebuilt."""
  data_dir = os.path.abspath(os.path.expanduser(data_dir))
  if manual_dir is not None:
    manual_dir = os.path.abspath(os.path.expanduser(manual_dir))
  unknown = sorted(set(rebuild) - set(datasets))
  if unknown:
    raise ValueError(f"--rebuild: {unknown} are not among the data sets to build {datasets}")
  registered = set(tfds.list_builders(with_community_datasets=False))
  out, failures = [], []
  for name in tqdm.tqdm(datasets, desc="data sets", unit="set", disable=len(datasets) < 2):
    builder = _builder(name, data_dir, registered, nwb_options)
    try:
      before = _stamp(builder)
      with files.waiting(lock_path(data_dir, f"{builder.name}/{builder.builder_config.name}"), f"building {name}"):
        builder = _build_locked(name, data_dir, registered, manual_dir, name in rebuild, before, nwb_options)
    except Exception as e:  # pylint: disable=broad-except  (reported with the data set's name)
      if not keep_going:
        raise
      logging.error("%s: build failed: %s", name, e)
      failures.append(f"{name}: {type(e).__name__}: {e}")
      continue
    out.append(builder.data_dir)
  if failures:
    raise BuildError(failure_summary(failures, len(datasets)))
  return out


def ibl_dataset_names(
  manual_dir: str, sessions: list[str], builders=tuple(_IBL_CONFIGS), options: list[str] = ()
) -> list[str]:
  """`<builder>/<eid>[_options]` names of IBL sessions of the ONE cache at manual_dir.

  sessions: eids, or ["all"] for every session whose folder is in the cache; options:
  config name options, e.g. ["beryl", "rate2", "good"] (see mtm_jax.datasets.ibl.configs), in any
  order, repeats ignored: the names are canonical (configs.canonical_config_name)."""
  unknown = [b for b in builders if b not in _IBL_CONFIGS]
  if unknown:
    raise ValueError(f"--ibl_builders: unknown builder(s) {unknown}; expected some of {list(_IBL_CONFIGS)}")
  if list(sessions) == ["all"]:
    sessions = [s["eid"] for s in cache.list_sessions(manual_dir)]
    if not sessions:
      raise ValueError(f"--ibl_sessions=all: no session folders in the ONE cache {manual_dir}")
  for eid in sessions:
    if configs.parse_config_name(eid) is None:
      raise ValueError(f"--ibl_sessions: {eid!r} is not an IBL session id (eid, a UUID)")
  for option in options if sessions else ():
    if configs.parse_config_name(f"{sessions[0]}_{option}") is None:  # not even of an option's form
      raise ValueError(
        f"--ibl_options: {option!r} is not an option; options are beryl or cosmos (region level), "
        "rate<Hz> (minimum firing rate, e.g. rate2 or rate0.5), good (label == 1 units)"
      )
  suffix = "".join(f"_{o}" for o in dict.fromkeys(options))  # each option once
  return [f"{b}/{configs.canonical_config_name(f'{eid}{suffix}')}" for eid in sessions for b in builders]


def nwb_dataset_names(manual_dir: str, stems: list[str], builders=tuple(_NWB_CONFIGS)) -> list[str]:
  """`<builder>/nwb_<stem>` names of NWB files under manual_dir (nwb_sets.list_files).

  stems: data set names (nwb_<stem>), file stems or file names, or ["all"] for every file."""
  unknown = [b for b in builders if b not in _NWB_CONFIGS]
  if unknown:
    raise ValueError(f"--nwb_builders: unknown builder(s) {unknown}; expected some of {list(_NWB_CONFIGS)}")
  files = nwb_sets.list_files(manual_dir)
  if list(stems) == ["all"]:
    if not files:
      raise ValueError(f"--nwb_files=all: no *.nwb file under manual_dir {manual_dir}")
    names = list(files)
  else:
    names = [s if s in files else nwb_sets.config_name(s if s.endswith(".nwb") else s + ".nwb") for s in stems]
    missing = [s for s, n in zip(stems, names) if n not in files]
    if missing:
      raise ValueError(f"--nwb_files: no NWB file under {manual_dir} for {missing}; the files there are {files}")
  return [f"{b}/{n}" for n in names for b in builders]


def bwb_dataset_names(manual_dir: str, sessions: list[str], builders=tuple(_BWB_CONFIGS)) -> list[str]:
  """`<builder>/bwb_<all|sel>_<split set>_<eid>` names of BWB sessions under BWB root manual_dir:
  each session's default data sets (mtm_jax.bwb.datasets.default_configs: pretrain sessions as
  `pretrain` from selected_units, eval sessions as `ts1` from all_units and `ts2` from
  selected_units). sessions: eids, or ["all"] for every session there."""
  unknown = [b for b in builders if b not in _BWB_CONFIGS]
  if unknown:
    raise ValueError(f"--bwb_builders: unknown builder(s) {unknown}; expected some of {list(_BWB_CONFIGS)}")
  return [f"{b}/{n}" for n in bwb_datasets.dataset_configs(manual_dir, sessions) for b in builders]
