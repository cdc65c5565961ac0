"""Input pipeline: sessions' splits from their TFDS data sources, batched with grain.

Batches hold trials of one session and have static shapes: with several sessions, spike
counts are zero-padded to the largest session's neuron count and each batch says which
session (row of the model's session tables) it comes from; sessions interleave in
proportion to their training trials. A training data set is a grain `MapDataset` indexed
by step: batch i is a pure function of (seed, i), so a run resumed at step s reads
exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses

import grain
import numpy as np

from mtm_jax.datasets import provenance
from mtm_jax.datasets import schema

MODEL_FIELDS = ("spikes", "trial_index")


def session_info(dataset: str, data_dir: str) -> schema.SessionInfo:
  """Session id and neuron regions from the data set's metadata."""
  meta = provenance.open_built(dataset, data_dir).info.metadata
  for field in ("session_id", "region_names"):
    if field not in meta:
      raise ValueError(f"data set {dataset!r}: metadata has no {field!r}; was it built by data_builders?")
  return schema.SessionInfo(session_id=meta["session_id"], region_names=tuple(meta["region_names"]))


def load_split(dataset: str, data_dir: str, split: str, fields=None) -> dict[str, np.ndarray]:
  """All examples of a split, stacked: {field: [trials, ...]}, in trial order."""
  builder = provenance.open_built(dataset, data_dir)
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


@dataclasses.dataclass(frozen=True)
class Session:
  """One session's neurons and the splits a run reads ({split: {field: [trials, ...]}})."""

  name: str  # TFDS name/config
  info: schema.SessionInfo
  splits: dict


def compact_counts(spikes: np.ndarray) -> np.ndarray:
  """Spike counts in the smallest unsigned type that holds them (host memory)."""
  top = int(spikes.max(initial=0))
  return spikes.astype(np.uint8 if top < 2**8 else np.uint16 if top < 2**16 else np.int32)


def load_sessions(names, data_dir: str, splits=("train", "val"), fields=MODEL_FIELDS) -> list[Session]:
  """Each named session's info and splits; spike counts compacted (see compact_counts)."""
  out = []
  for name in names:
    arrays = {}
    for split in splits:
      arrays[split] = load_split(name, data_dir, split, fields)
      arrays[split]["spikes"] = compact_counts(arrays[split]["spikes"])
    out.append(Session(name, session_info(name, data_dir), arrays))
  return out


def region_table(infos, n_neurons: int) -> np.ndarray:
  """[S, n_neurons] int32 region id of each session's neurons, -1 on padding."""
  table = np.full((len(infos), n_neurons), -1, np.int32)
  for s, info in enumerate(infos):
    table[s, : info.n_neurons] = info.region_ids()
  return table


def pad_neurons(spikes: np.ndarray, n_neurons: int) -> np.ndarray:
  """[..., N] -> [..., n_neurons], zero-padded."""
  pad = n_neurons - spikes.shape[-1]
  if pad < 0:
    raise ValueError(f"a session has {spikes.shape[-1]} neurons, more than the model's {n_neurons}")
  return np.pad(spikes, [(0, 0)] * (spikes.ndim - 1) + [(0, pad)]) if pad else spikes


class Batches:
  """Batch of given trial indices from one session's stacked arrays, spikes padded to
  `n_neurons` and tagged with the session row (a grain map over index batches).

  rows: the part of each index batch to load (multi-host: this process's rows of the
  global batch, mesh.process_rows); the default loads all of it."""

  def __init__(
    self, arrays: dict[str, np.ndarray], session: int = 0, n_neurons: int | None = None, rows: slice = slice(None)
  ):
    self.arrays, self.session, self.n_neurons, self.rows = arrays, session, n_neurons, rows

  def __call__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    indices = np.asarray(indices)[self.rows]
    batch = {k: v[indices] for k, v in self.arrays.items()}
    if self.n_neurons is not None:
      batch["spikes"] = pad_neurons(batch["spikes"], self.n_neurons)
    batch["session"] = np.full(len(indices), self.session, np.int32)
    return batch


def training_batches(
  arrays: dict[str, np.ndarray],
  batch_size: int,
  seed: int,
  *,
  session: int = 0,
  n_neurons: int | None = None,
  rows: slice = slice(None),
) -> grain.MapDataset:
  """Infinite MapDataset of one session's batches {field: [batch_size, ...], session:
  [batch_size]}: shuffled every epoch; spikes padded to n_neurons if given. rows: the
  rows of each batch to load (see Batches); the batches are the same for any rows."""
  n = len(next(iter(arrays.values())))
  if batch_size > n:
    raise ValueError(f"batch size {batch_size} exceeds the {n} training trials of session row {session}")
  return (
    grain.MapDataset.range(n)
    .seed(seed)
    .shuffle()
    .repeat()
    .batch(batch_size, drop_remainder=True)
    .map(Batches(arrays, session, n_neurons, rows))
  )


def multi_session_batches(
  arrays: list[dict[str, np.ndarray]], batch_size: int, seed: int, n_neurons: int, rows: slice = slice(None)
) -> grain.MapDataset:
  """Batches of every session (row s = arrays[s]), interleaved in proportion to their
  trial counts, spikes padded to n_neurons; only `rows` of each loaded (see Batches).
  One session = training_batches."""
  per_session = [
    training_batches(a, batch_size, seed + 7919 * s, session=s, n_neurons=n_neurons, rows=rows)
    for s, a in enumerate(arrays)
  ]
  if len(per_session) == 1:
    return per_session[0]
  weights = [len(a["spikes"]) for a in arrays]
  return grain.MapDataset.mix(per_session, weights=weights)


def iterate_from(dataset: grain.MapDataset, step: int, state: dict | None = None, prefetch: int = 2):
  """Iterator over dataset[step], dataset[step + 1], ... with background prefetch; its
  get_state() is the grain iterator state to checkpoint, and `state` (a saved one)
  positions it instead of `step`. For a MapDataset the state is {"next_index": i}."""
  iterator = iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch)))
  iterator.set_state(dict(state) if state is not None else {"next_index": int(step)})
  return iterator
