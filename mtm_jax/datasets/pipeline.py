"""Input pipeline: a session's split from its TFDS data source, batched with grain.

Batches hold trials of one session and have static shapes. A training data set is a
grain `MapDataset` indexed by step: batch i is a pure function of (seed, i), so a run
resumed at step s reads exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import os

import grain
import numpy as np
import tensorflow_datasets as tfds

from mtm_jax.datasets import schema

MODEL_FIELDS = ("spikes", "trial_index")


def _prepared_builder(dataset: str, data_dir: str):
  data_dir = os.path.abspath(os.path.expanduser(data_dir))
  try:
    builder = tfds.builder(dataset, data_dir=data_dir)
  except Exception as e:  # tfds raises several types for unknown names and configs
    raise FileNotFoundError(
        f"data set {dataset!r} not found under {data_dir}: build it first with "
        f"`python -m data_builders.build --dataset={dataset} --data_dir={data_dir}` ({e})") from e
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"data set {dataset!r} is not prepared under {data_dir}: build it with "
        f"`python -m data_builders.build --dataset={dataset} --data_dir={data_dir}`")
  return builder


def session_info(dataset: str, data_dir: str) -> schema.SessionInfo:
  """Session id and neuron regions from the data set's metadata."""
  meta = _prepared_builder(dataset, data_dir).info.metadata
  for field in ("session_id", "region_names"):
    if field not in meta:
      raise ValueError(f"data set {dataset!r}: metadata has no {field!r}; was it built by data_builders?")
  return schema.SessionInfo(session_id=meta["session_id"], region_names=tuple(meta["region_names"]))


def load_split(dataset: str, data_dir: str, split: str, fields=None) -> dict[str, np.ndarray]:
  """All examples of a split, stacked: {field: [trials, ...]}, in trial order."""
  builder = _prepared_builder(dataset, data_dir)
  if split not in builder.info.splits:
    raise ValueError(f"data set {dataset!r}: no split {split!r}; it has {sorted(builder.info.splits)}")
  source = builder.as_data_source(split=split)
  if len(source) == 0:
    raise ValueError(f"data set {dataset!r}: split {split!r} is empty")
  examples = source.__getitems__(list(range(len(source))))
  fields = [f for f in (fields or examples[0].keys()) if f not in ("regions", "session_id")]
  out = {f: np.stack([np.asarray(e[f]) for e in examples]) for f in fields}
  order = np.argsort(out["trial_index"]) if "trial_index" in out else slice(None)
  return {f: v[order] for f, v in out.items()}


class _Batches:
  """Random access to batch i of stacked arrays (grain map over index batches)."""

  def __init__(self, arrays: dict[str, np.ndarray]):
    self.arrays = arrays

  def __call__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[indices] for k, v in self.arrays.items()}


def training_batches(arrays: dict[str, np.ndarray], batch_size: int, seed: int) -> grain.MapDataset:
  """Infinite MapDataset of batches {field: [batch_size, ...]}: shuffled every epoch."""
  n = len(next(iter(arrays.values())))
  if batch_size > n:
    raise ValueError(f"batch size {batch_size} exceeds the {n} training trials of the session")
  return (grain.MapDataset.range(n).seed(seed).shuffle().repeat()
          .batch(batch_size, drop_remainder=True).map(_Batches(arrays)))


def iterate_from(dataset: grain.MapDataset, step: int, prefetch: int = 2):
  """Iterator over dataset[step], dataset[step + 1], ... with background prefetch."""
  ds = dataset[step:].to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch))
  return iter(ds)
