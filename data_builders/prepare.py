"""Preparing this project's TFDS data sets (array_record, no TensorFlow)."""

from __future__ import annotations

import os

from absl import logging
import tensorflow_datasets as tfds
import tqdm

import data_builders.ibl_binned  # noqa: F401  (registers the builder)
import data_builders.spike_events  # noqa: F401  (registers the builder)


def build(datasets: list[str], data_dir: str, manual_dir: str | None = None) -> list[str]:
  """Prepares each data set (skipping finished ones); returns their directories.

  manual_dir: where NWB configs find their files (default <data_dir>/downloads/manual).
  TFDS writes into a temporary directory and renames it when complete, so an
  interrupted build never leaves a data set that reads would take for finished."""
  data_dir = os.path.abspath(os.path.expanduser(data_dir))
  registered = set(tfds.list_builders(with_community_datasets=False))
  out = []
  for name in tqdm.tqdm(datasets, desc="data sets", unit="set", disable=len(datasets) < 2):
    builder_name = name.split("/")[0]
    if builder_name not in registered:
      raise ValueError(f"--dataset: unknown data set {builder_name!r} in {name!r}; this project builds "
                       f"'ibl_binned/<config>' and 'spike_events/<config>'")
    try:
      builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    except (ValueError, KeyError, tfds.core.registered.DatasetNotFoundError) as e:
      raise ValueError(f"--dataset: {name!r} is not a known config: {e}") from e
    if builder.is_prepared():
      logging.info("%s: already built in %s", name, builder.data_dir)
    else:
      download_config = None
      if manual_dir is not None:
        download_config = tfds.download.DownloadConfig(manual_dir=os.path.abspath(os.path.expanduser(manual_dir)))
      builder.download_and_prepare(download_config=download_config)
    out.append(builder.data_dir)
  return out
