"""Synthetic batches of the benchmarks (and the device checks), generated in-process.

No absl flags here: the benchmark programs define theirs at import, so code that needs
batches of two models imports this module rather than two programs.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from mtm_jax.datasets.events import tokens


def ndt1_batch(batch: int, bins: int, neurons: int, regions: int, seed: int = 0):
  """({"spikes": [B, T, N] int32}, regions [1, N] int32): Poisson(0.2) counts, neurons in
  `regions` contiguous regions."""
  rng = np.random.default_rng(seed)
  spikes = rng.poisson(0.2, (batch, bins, neurons)).astype(np.int32)
  region_ids = (np.arange(neurons) * regions // neurons).astype(np.int32)
  return {"spikes": jnp.asarray(spikes)}, jnp.asarray(region_ids[None])


def poyo_batch(batch: int, units: int, spikes: int, length: int, queries: int, seed: int = 0) -> dict:
  """A POYO batch (models/poyo.py) of `batch` 1 s windows: spikes at uniform times from
  uniformly drawn units, start/end tokens per unit, padded to `length` tokens."""
  rng = np.random.default_rng(seed)
  n = spikes + 2 * units
  if n > length:
    raise ValueError(f"--tokens: {n} tokens per window do not fit in {length}")
  unit = np.concatenate([rng.integers(1, units + 1, (batch, spikes)), np.tile(np.arange(1, units + 1), (batch, 2))], 1)
  times = np.concatenate([rng.uniform(0, 1, (batch, spikes)), np.zeros((batch, units)), np.ones((batch, units))], 1)
  kind = np.concatenate(
    [
      np.full((batch, spikes), tokens.SPIKE),
      np.full((batch, units), tokens.START),
      np.full((batch, units), tokens.END),
    ],
    1,
  )
  pad = lambda x, dtype: np.pad(x, ((0, 0), (0, length - n))).astype(dtype)
  return dict(
    unit_index=pad(unit, np.int32),
    timestamps=pad(times, np.float32),
    token_type=pad(kind, np.int32),
    input_mask=pad(np.ones((batch, n)), bool),
    session_index=np.ones(batch, np.int32),
    output_timestamps=np.tile(np.linspace(0, 1, queries, dtype=np.float32), (batch, 1)),
    output_values=rng.normal(size=(batch, queries, 2)).astype(np.float32),
    output_weights=np.ones((batch, queries), np.float32),
    output_task=np.zeros((batch, queries), np.int32),
    output_mask=np.ones((batch, queries), bool),
  )
