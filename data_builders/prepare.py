"""Preparing this project's TFDS data sets (array_record, no TensorFlow)."""

from __future__ import annotations

import os

from absl import logging
import tensorflow_datasets as tfds
import tqdm

from data_builders.ibl_binned import ibl_binned  # registers the builder
from data_builders.spike_events import spike_events  # registers the builder
from mtm_jax.datasets import ibl

# Builders whose configs for IBL sessions (`<eid>[_options]`) are made on demand.
_IBL_CONFIGS = {"ibl_binned": ibl_binned.ibl_config, "spike_events": spike_events.ibl_config}


class BuildError(ValueError):
  """Some of the requested data sets failed to build (the others were built)."""


def _builder(name: str, data_dir: str, registered: set[str]):
  builder_name, _, config = name.partition("/")
  if builder_name not in registered:
    raise ValueError(f"--dataset: unknown data set {builder_name!r} in {name!r}; this project builds "
                     f"'ibl_binned/<config>' and 'spike_events/<config>'")
  try:
    if builder_name in _IBL_CONFIGS and config not in tfds.builder_cls(builder_name).builder_configs:
      ibl_config = _IBL_CONFIGS[builder_name](config)
      if ibl_config is not None:
        return tfds.builder(builder_name, config=ibl_config, data_dir=data_dir, file_format="array_record")
    return tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except (ValueError, KeyError, tfds.core.registered.DatasetNotFoundError) as e:
    raise ValueError(f"--dataset: {name!r} is not a known config: {e}") from e


def build(datasets: list[str], data_dir: str, manual_dir: str | None = None, keep_going: bool = False) -> list[str]:
  """Prepares each data set (skipping finished ones); returns their directories.

  manual_dir: where NWB configs find their files and IBL configs their ONE cache (default
  <data_dir>/downloads/manual). TFDS writes into a temporary directory and renames it when
  complete, so a failed or interrupted build never leaves a data set that reads would take
  for finished, and data sets built before stay as they are. keep_going: build the other
  data sets when one fails, then raise BuildError naming every failure."""
  data_dir = os.path.abspath(os.path.expanduser(data_dir))
  registered = set(tfds.list_builders(with_community_datasets=False))
  out, failures = [], []
  for name in tqdm.tqdm(datasets, desc="data sets", unit="set", disable=len(datasets) < 2):
    builder = _builder(name, data_dir, registered)
    if builder.is_prepared():
      logging.info("%s: already built in %s", name, builder.data_dir)
      out.append(builder.data_dir)
      continue
    download_config = None
    if manual_dir is not None:
      download_config = tfds.download.DownloadConfig(manual_dir=os.path.abspath(os.path.expanduser(manual_dir)))
    try:
      builder.download_and_prepare(download_config=download_config)
    except Exception as e:  # pylint: disable=broad-except  (reported with the data set's name)
      if not keep_going:
        raise
      logging.error("%s: build failed: %s", name, e)
      failures.append(f"{name}: {type(e).__name__}: {e}")
      continue
    out.append(builder.data_dir)
  if failures:
    raise BuildError(f"{len(failures)} of {len(datasets)} data sets failed to build (the others were built):\n"
                     + "\n".join(failures))
  return out


def ibl_dataset_names(manual_dir: str, sessions: list[str], builders=tuple(_IBL_CONFIGS),
                      options: list[str] = ()) -> list[str]:
  """`<builder>/<eid>[_options]` names of IBL sessions of the ONE cache at manual_dir.

  sessions: eids, or ["all"] for every session whose folder is in the cache; options:
  config name options, e.g. ["beryl", "rate2", "good"] (see mtm_jax.datasets.ibl)."""
  unknown = [b for b in builders if b not in _IBL_CONFIGS]
  if unknown:
    raise ValueError(f"--ibl_builders: unknown builder(s) {unknown}; expected some of {list(_IBL_CONFIGS)}")
  if list(sessions) == ["all"]:
    sessions = [s["eid"] for s in ibl.list_sessions(manual_dir)]
    if not sessions:
      raise ValueError(f"--ibl_sessions=all: no session folders in the ONE cache {manual_dir}")
  suffix = "".join(f"_{o}" for o in options)
  names = []
  for eid in sessions:
    if ibl.parse_config_name(f"{eid}{suffix}") is None:
      raise ValueError(f"--ibl_sessions: {eid!r} is not an IBL session id (eid, a UUID)")
    names += [f"{b}/{eid}{suffix}" for b in builders]
  return names
