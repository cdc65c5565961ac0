"""How the evaluation of a spike-token MtM batches its masked copies of trials
(evaluation.poyo_mtm): which trials' tokens a chunk of copies reads, over which
units' tokens (context_units, context_tokens), padded to few compiled shapes, and placed on the
mesh. Shapes: Bt distinct trials (or trial contexts) of a chunk, L tokens, n unit slots."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mtm_jax import masking
from mtm_jax.datasets.events import buckets as buckets_lib
from mtm_jax.datasets.events import trials as trials_lib
from mtm_jax.parallel import mesh as mesh_lib

# The token fields a copy reads from its trial's row (token_masking.keep_tokens).
COPY_KEYS = ("token_unit", "timestamps", "token_type", "input_mask")


def row_bucket(n: int, max_rows: int, n_data: int) -> int:
  """Decoder rows a pass of n real rows is padded to: the next power of two (a multiple of
  n_data, at most max_rows), so few shapes compile and little padding is decoded."""
  size = 1 << max(0, (n - 1).bit_length())
  return min(max_rows, -(-size // n_data) * n_data)


def place(batch: dict, n_rows: int, mesh) -> dict:
  """This process's rows of a batch of n_rows, on the mesh's data axis (device arrays without a mesh)."""
  return {k: jnp.asarray(v) for k, v in batch.items()} if mesh is None else mesh_lib.shard_batch(batch, mesh, n_rows)


def place_replicated(batch: dict, mesh) -> dict:
  """A batch every process holds whole, on every device of the mesh (device arrays without a mesh)."""
  if mesh is None:
    return {k: jnp.asarray(v) for k, v in batch.items()}
  sharding = mesh_lib.replicated(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def chunk_trials(trials: Sequence, batch_size: int) -> tuple[list, np.ndarray]:
  """The distinct trials (or (trial, context) pairs) of a chunk of copies (in order of
  appearance, padded with the last to a power of two, at most batch_size, so few shapes
  compile) and each copy's row among them."""
  distinct = list(dict.fromkeys(trials))
  rows = np.array([distinct.index(t) for t in trials], np.int32)
  size = min(batch_size, 1 << max(0, (len(distinct) - 1).bit_length()))
  return distinct + [distinct[-1]] * (size - len(distinct)), rows


def context_units(masks: masking.EvalMasks) -> tuple[np.ndarray, np.ndarray]:
  """(units [G, n] bool, group [M] int): the masks of `masks` in groups whose copies see
  only tokens of units[group[m]] (each unit some mask of the group leaves visible in a bin
  or scores). Intra-region masks keep one region: its copies attend over that region's
  tokens alone, not the whole trial's (same outputs, a fraction of the work)."""
  hidden_everywhere = masks.hide_neurons & bool(np.all(masks.hide_bins))  # [M, n]
  units, group = np.unique(~hidden_everywhere | masks.score_neurons, axis=0, return_inverse=True)
  return units, group.reshape(-1)


def context_tokens(data: trials_lib.TrialData, picks: Sequence[tuple[int, int]], units: np.ndarray) -> dict:
  """The token fields (unit_index and COPY_KEYS) [Bt, L] of the (trial, group) picks: each
  trial's tokens of the units of units[group] ([G, n_slots] bool, context_units padded to
  the unit slots), in their order, padded (input_mask False) to the bucket of the longest row."""
  trials = [k for k, _ in picks]
  batch = trials_lib.collate(data, trials, int(data.token_counts()[trials].max()))
  keep = batch["input_mask"] & np.take_along_axis(units[[g for _, g in picks]], batch["token_unit"], axis=1)
  count = keep.sum(axis=1)
  length = buckets_lib.bucket_length(int(count.max()), data.config.bucket_lengths)
  order = np.argsort(~keep, axis=1, kind="stable")[:, :length]  # the kept tokens first, in their order
  real = np.arange(length)[None] < count[:, None]
  return {
    k: np.where(real, np.take_along_axis(batch[k], order, axis=1), 0).astype(batch[k].dtype)
    for k in ("unit_index",) + COPY_KEYS
  }
