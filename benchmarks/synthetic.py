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


def poyo_mtm_session(units: int, trials: int, rate: float = 10.0, regions: int = 5, seed: int = 0, split="train"):
  """An event session (datasets.events.session) of `trials` whole 2 s trials, 0.5 s apart,
  all in `split`: `units` units in `regions` contiguous regions, each firing as a Poisson
  process of `rate` Hz (so ~2 rate units + 2 units tokens per trial)."""
  from mtm_jax.datasets.events import session as session_lib  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(seed)
  starts = np.arange(trials) * 2.5
  counts = rng.poisson(rate * 2.0, (trials, units))
  units_of = np.repeat(np.tile(np.arange(units), trials), counts.ravel())
  times = np.repeat(np.repeat(starts, units), counts.ravel()) + rng.uniform(0, 2.0, counts.sum())
  order = np.argsort(times, kind="stable")
  stamps = (starts[:, None] + np.arange(0.01, 2.0, 0.02)[None]).ravel()
  sid = f"bench_{units}u_{trials}t"
  return session_lib.EventSession.from_dict(
    dict(
      session_id=sid,
      spike_times=times[order],
      spike_units=units_of[order].astype(np.int32),
      unit_ids=np.array([f"{sid}/u{u}" for u in range(units)]),
      unit_regions=np.array([f"R{u * regions // units}" for u in range(units)]),
      behaviour_name="speed",
      behaviour_timestamps=stamps,
      behaviour_values=np.zeros((len(stamps), 1), np.float32),
      behaviour_weights=np.ones(len(stamps), np.float32),
      trial_starts=starts,
      trial_ends=starts + 2.0,
      splits={split: np.stack([starts, starts + 2.0], 1)},
    ),
    where=sid,
  )


def poyo_mtm_batch(config, batch: int, units: int, rate: float = 10.0, regions: int = 5, seed: int = 0) -> dict:
  """A spike-token MtM training batch (datasets.events.trials.BATCH_KEYS) of `batch` whole
  trials of poyo_mtm_session, tokenised and padded to `config`'s bucket as the trainer's
  batches are (trials.training_batches)."""
  from mtm_jax.datasets.events import trials as trials_lib  # pylint: disable=import-outside-toplevel
  from mtm_jax.tasks import poyo_mtm as poyo_mtm_task  # pylint: disable=import-outside-toplevel

  data = trials_lib.prepare(
    [poyo_mtm_session(units, batch, rate, regions, seed)], "train", poyo_mtm_task.trial_config(config)
  )
  return trials_lib.training_batches(data, batch, seed)[0]
