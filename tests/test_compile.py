"""Training steps compile once per input shape: no recompilation after the first step
(NDT1-stitch over sessions of different sizes, POYO over its token buckets), and the
donated train state is reused in place."""

import contextlib

import jax
import numpy as np
from flax import nnx

from mtm_jax.tasks import ndt1 as ndt1_task, poyo as poyo_task
from mtm_jax import masking
from mtm_jax.configs import ndt1 as ndt1_config
from mtm_jax.configs import poyo as poyo_config
from mtm_jax.datasets import pipeline, reaching
from mtm_jax.datasets.events import batches as batches_lib
from mtm_jax.datasets.events import windows as windows_lib
from mtm_jax.models import ndt1, poyo
from mtm_jax.training import step as step_lib

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # one per XLA compilation


@contextlib.contextmanager
def count_compilations():
  """Yields a list that gets one entry per XLA backend compilation inside the block."""
  seen = []

  def listener(event, duration, **kwargs):
    if event == COMPILE_EVENT:
      seen.append(duration)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield seen
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def test_ndt1_stitch_steps_compile_once_over_sessions():
  config = ndt1_config.get_config("tiny,stitch")
  sizes = (5, 9)
  model = ndt1.NDT1(sizes, width=16, n_layers=1, n_heads=2, mlp_width=32, stitch_dim=8, max_bins=20, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  tx = ndt1_task.make_optimizer(config)
  rng = np.random.default_rng(0)
  arrays = [{"spikes": rng.poisson(0.5, (12, 20, n)).astype(np.uint8), "trial_index": np.arange(12)} for n in sizes]
  batches = pipeline.multi_session_batches(arrays, 4, seed=0, n_neurons=max(sizes))
  regions = np.full((len(sizes), max(sizes)), -1, np.int32)  # two regions per session, -1 = padding
  for row, n in enumerate(sizes):
    regions[row, :n] = np.arange(n) % 2
  step = jax.jit(ndt1_task.make_train_step(graphdef, tx, config.masking.mode, masking.MaskConfig()), donate_argnums=0)
  key = jax.random.key(0)
  state = step_lib.init_state(params, tx)
  state, _ = step(state, batches[0], regions, key)  # compiles
  rows = set()
  with count_compilations() as compiled:
    for i in range(1, 7):
      batch = batches[i]
      rows.add(int(batch["session"][0]))
      old = state
      state, metrics = step(state, batch, regions, key)
      assert np.isfinite(float(metrics["loss"]))
      assert all(x.is_deleted() for x in jax.tree.leaves(old.params))  # donated: buffers reused
  assert rows == {0, 1}, "both sessions must be stepped on"
  assert compiled == [] and step._cache_size() == 1


def test_poyo_steps_compile_once_per_token_bucket():
  config = poyo_config.get_config("tiny")
  config.data.token_buckets = (96, 128)  # these windows hold 50-115 tokens: two buckets
  sessions = [
    reaching.simulate_reaching_session(i, min_units=10, max_units=40, min_trials=6, max_trials=8) for i in (0, 1)
  ]
  data = windows_lib.prepare(sessions, "train", poyo_task.window_config(config, train=True))
  model = poyo.from_config(config, len(data.vocab.unit_ids), len(data.vocab.session_ids), rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  tx = poyo_task.make_optimizer(config, params)
  step = jax.jit(poyo_task.make_train_step(graphdef, tx, tasks=dict(config.model.tasks)), donate_argnums=0)
  batches = batches_lib.training_batches(data, 4, seed=0)
  state, key = step_lib.init_state(params, tx), jax.random.key(0, impl=config.train.prng_impl)
  lengths, new_compilations = [], []
  with count_compilations() as compiled:
    for i in range(6):
      batch = batches[i]
      before = len(compiled)
      state, metrics = step(state, batch, None, key)
      assert np.isfinite(float(metrics["loss"]))
      lengths.append(batch["unit_index"].shape[1])
      new_compilations.append(len(compiled) - before)
  assert len(set(lengths)) >= 2, f"the batches should cover several buckets, got lengths {lengths}"
  # One executable per bucket, compiled the first time the bucket appears; nothing is
  # compiled on a step whose bucket was seen before.
  assert step._cache_size() == len(set(lengths))
  for i, n in enumerate(lengths):
    first = lengths.index(n) == i
    assert (new_compilations[i] > 0) == first, (i, lengths, new_compilations)
