"""Tensor parallelism: the same 20 training steps on meshes of 1 to 8 devices, with data
and model axes, give the same losses and parameters; parameters and optimiser moments are
laid out as sharding.RULES say; clear errors when the model axis does not divide."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from mtm_jax.tasks import ndt1 as ndt1_task, poyo as poyo_task
from mtm_jax import masking
from mtm_jax.configs import ndt1 as ndt1_config, poyo as poyo_config
from mtm_jax.models import ndt1, poyo
from mtm_jax.parallel import mesh as mesh_lib, sharding
from mtm_jax.training import step as step_lib

STEPS, BATCH, NEURONS, BINS = 20, 8, 12, 20
MODE = "neuron"
# (data, model) layouts compared with one device: 2, 4 and 8 devices, model-parallel only and both
# axes (each costs a compilation; data-parallel alone is test_training's 1 vs 8 devices).
LAYOUTS = {"ndt1": ((1, 2), (2, 2), (2, 4)), "poyo": ((2, 4),)}


def _ndt1():
  config = ndt1_config.get_config("tiny")
  config.optimizer.learning_rate = 3e-3
  model = ndt1.NDT1(
    NEURONS,
    width=32,
    n_layers=1,
    n_heads=4,
    mlp_width=64,
    max_bins=BINS,
    dropout=0.1,
    attention_dropout=0.1,
    embed_dropout=0.1,
    rngs=nnx.Rngs(0),
  )
  tx = ndt1_task.make_optimizer(config)
  graphdef, params = nnx.split(model, nnx.Param)
  step = ndt1_task.make_train_step(graphdef, tx, MODE, masking.MaskConfig())
  regions = jnp.asarray((np.arange(NEURONS) % 3)[None], jnp.int32)  # [S=1, N]
  rng = np.random.default_rng(0)
  batches = [{"spikes": rng.poisson(0.5, (BATCH, BINS, NEURONS)).astype(np.int32)} for _ in range(STEPS)]

  def on(mesh):
    placed = jax.device_put(regions, mesh_lib.replicated(mesh))
    return lambda state, batch: step(state, batch, placed, jax.random.key(0))

  return model, params, tx, on, batches


def _poyo():
  config = poyo_config.get_config("tiny")
  model = poyo.POYO(
    10,
    2,
    tasks={"velocity": 2},
    dim=32,
    depth=1,
    cross_heads=4,
    self_heads=4,
    latents_per_step=2,
    head_dim=8,
    window_length=0.5,
    rngs=nnx.Rngs(0),
  )
  tx = poyo_task.make_optimizer(config, nnx.state(model, nnx.Param))
  graphdef, params = nnx.split(model, nnx.Param)
  step = poyo_task.make_train_step(graphdef, tx, tasks={"velocity": 2})
  rng = np.random.default_rng(1)
  tokens, queries = 24, 6

  def batch():
    return dict(
      unit_index=rng.integers(1, 11, (BATCH, tokens)).astype(np.int32),
      timestamps=np.sort(rng.uniform(0, 0.5, (BATCH, tokens)), -1).astype(np.float32),
      token_type=np.zeros((BATCH, tokens), np.int32),
      input_mask=rng.uniform(size=(BATCH, tokens)) < 0.9,
      session_index=rng.integers(1, 3, BATCH).astype(np.int32),
      output_timestamps=np.sort(rng.uniform(0, 0.5, (BATCH, queries)), -1).astype(np.float32),
      output_task=np.zeros((BATCH, queries), np.int32),
      output_mask=np.ones((BATCH, queries), bool),
      output_values=rng.normal(size=(BATCH, queries, 2)).astype(np.float32),
      output_weights=np.ones((BATCH, queries), np.float32),
    )

  return (
    model,
    params,
    tx,
    lambda mesh: lambda state, b: step(state, b, None, jax.random.key(0)),
    [batch() for _ in range(STEPS)],
  )


def _run(make, layout):
  """Losses [STEPS] and final parameters (host) of 20 steps on a (data, model) mesh."""
  model, params, tx, step_on, batches = make
  mesh = mesh_lib.make_mesh(*layout)
  state = sharding.place_state(step_lib.init_state(jax.tree.map(jnp.array, params), tx), mesh, model)  # a copy
  train_step = sharding.jit_train_step(step_on(mesh), state, mesh)
  losses = []
  with jax.set_mesh(mesh):
    # The jitted step with its shardings, compiled without LLVM optimisations: 3x faster to
    # compile on CPU, the same arithmetic.
    train_step = train_step.lower(state, mesh_lib.shard_batch(batches[0], mesh)).compile(
      {"xla_backend_optimization_level": 0}
    )
    for b in batches:
      state, metrics = train_step(state, mesh_lib.shard_batch(b, mesh))
      losses.append(metrics["loss"])
  # Each parameter and Adam/LAMB moment keeps the layout its rule gives.
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  for path, leaf in flat:
    spec = sharding.spec_for(sharding.path_name(path), leaf.shape, layout[1])
    assert leaf.sharding.is_equivalent_to(jax.sharding.NamedSharding(mesh, spec), leaf.ndim), path
  split = [sharding.path_name(p) for p, x in flat if mesh_lib.MODEL in tuple(x.sharding.spec)]
  return np.array(jax.device_get(losses)), jax.device_get(state.params), split


def comparable(name: str) -> bool:
  """Whether runs must agree on this parameter: not on attention key biases, which the
  softmax ignores (their gradient is 0 up to rounding, which Adam's normalisation then
  amplifies)."""
  return not name.endswith("attn/key/bias")


def _close(params, ref, layout):
  for (path, a), (_, b) in zip(
    jax.tree_util.tree_flatten_with_path(params)[0], jax.tree_util.tree_flatten_with_path(ref)[0]
  ):
    name = sharding.path_name(path)
    if comparable(name):
      np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-5, err_msg=f"{name}, layout {layout}")


@pytest.mark.parametrize("family", ["ndt1", "poyo"])
def test_loss_trajectory_agrees_across_layouts(family):
  assert len(jax.devices()) == 8
  make = (_ndt1 if family == "ndt1" else _poyo)()
  ref_losses, ref_params, _ = _run(make, (1, 1))
  assert ref_losses[-1] < ref_losses[0]  # it trains
  for layout in LAYOUTS[family]:
    losses, params, split = _run(make, layout)
    np.testing.assert_allclose(losses, ref_losses, rtol=2e-4, atol=1e-5, err_msg=f"layout {layout}")
    _close(params, ref_params, layout)
    if layout[1] > 1:  # q/k/v, out, up and down of every block, in params and both moments
      blocks = 1 if family == "ndt1" else 3
      kernels = [n for n in split if n.startswith("params/") and n.endswith("kernel")]
      assert len(kernels) == 6 * blocks, kernels
      assert any("/mu/" in n for n in split) and any("/nu/" in n for n in split), split


def test_rules():
  assert sharding.spec_for("params/layers/0/attn/query/kernel", (32, 32), 2) == P(None, "model")
  assert sharding.spec_for("opt_state/0/mu/layers/3/attn/out/kernel", (32, 32), 2) == P("model", None)
  assert sharding.spec_for("params/encoder/ffn/up/bias", (256,), 4) == P("model")
  assert sharding.spec_for("params/layers/0/mlp/down/kernel", (64, 32), 2) == P("model", None)
  assert sharding.spec_for("params/layers/0/attn/out/bias", (32,), 2) == P()  # added after the all-reduce
  assert sharding.spec_for("params/readout/kernel", (32, 12), 2) == P()
  assert sharding.spec_for("params/session/embedding", (3, 32), 2) == P()
  assert sharding.spec_for("params/myattn/query/kernel", (32, 32), 2) == P()  # whole path segments only


def test_model_axis_must_divide_heads_and_widths():
  model = ndt1.NDT1(NEURONS, width=24, n_layers=1, n_heads=2, mlp_width=36, rngs=nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  with pytest.raises(
    ValueError, match=r"config.mesh.model: 4 does not divide the 2 attention heads of 'layers/0/attn'"
  ):
    sharding.place_state(state, mesh_lib.make_mesh(2, 4), model)
  with pytest.raises(
    ValueError,
    match=r"config.mesh.model: 8 does not divide dimension \d \(size 36, the MLP width\) "
    r"of parameter 'layers/0/mlp/(up|down)/kernel'",
  ):
    sharding.partition_specs(state, 8)
  with pytest.raises(ValueError, match="config.mesh.model: 3 does not divide the 8 devices"):
    mesh_lib.make_mesh(-1, 3)
