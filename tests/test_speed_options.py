"""Speed options change speed, not results: remat gives the same loss and gradients,
bfloat16 compute keeps float32 parameters, gradients and loss, close to float32."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from benchmarks import synthetic
from mtm_jax.tasks import ndt1 as ndt1_task, poyo as poyo_task
from mtm_jax import masking
from mtm_jax.configs import ndt1 as ndt1_config
from mtm_jax.configs import poyo as poyo_config
from mtm_jax.models import ndt1, poyo
from mtm_jax.parallel import sharding
from mtm_jax.training import precision, step as step_lib


def _loss_and_grads(remat: bool, dtype: str, compiler_options=None, width: int = 16):
  model = ndt1.NDT1(
    12, width=width, n_layers=2, n_heads=2, mlp_width=2 * width, max_bins=20, remat=remat, rngs=nnx.Rngs(0)
  )
  graphdef, params = nnx.split(model, nnx.Param)
  rng = np.random.default_rng(0)
  batch = {"spikes": jnp.asarray(rng.poisson(1.0, (4, 20, 12)), jnp.int32)}
  regions = jnp.asarray((np.arange(12) % 3)[None], jnp.int32)
  fn = jax.jit(
    jax.value_and_grad(
      lambda p: ndt1_task.masked_nll(
        graphdef,
        p,
        batch,
        regions,
        jax.random.key(1),
        mode=masking.MTM,
        mask_config=masking.MaskConfig(),
        train=True,
        dtype=dtype,
      )[0]
    ),
    compiler_options=compiler_options,
  )
  return fn(params)


def test_remat_and_bfloat16_keep_the_numbers():
  loss, grads = _loss_and_grads(False, "float32")
  loss_r, grads_r = _loss_and_grads(True, "float32")
  np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads_r), jax.tree.leaves(grads)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # recomputation rounds differently (|grad| up to ~60)
  loss_b, grads_b = _loss_and_grads(False, "bfloat16")
  assert loss_b.dtype == jnp.float32 and all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads_b))
  np.testing.assert_allclose(loss_b, loss, rtol=2e-2)  # bfloat16 has 8 bits of mantissa
  cos = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(grads_b), jax.tree.leaves(grads)))
  cos /= jnp.sqrt(
    sum(jnp.vdot(a, a) for a in jax.tree.leaves(grads_b)) * sum(jnp.vdot(b, b) for b in jax.tree.leaves(grads))
  )
  assert cos > 0.99


def test_compute_dtype_is_validated():
  config = ndt1_config.get_config("tiny")
  config.model.dtype = "float16"
  with pytest.raises(ValueError, match="config.model.dtype"):
    ndt1_task.check_config(config)
  params = {"w": jnp.ones(2), "i": jnp.ones(2, jnp.int32)}
  cast = precision.compute_params(params, "bfloat16")
  assert cast["w"].dtype == jnp.bfloat16 and cast["i"].dtype == jnp.int32


def test_cpu_compiler_options_keep_the_numbers():
  """The bfloat16 train steps' CPU compile options (parallel.sharding.compiler_options)
  change the loss and gradients of a step by rounding only. What XLA does with them
  (which kernels it calls) changes between releases and is not asserted."""
  assert sharding.compiler_options(jax.devices(), "float32") is None
  options = sharding.compiler_options(jax.devices(), "bfloat16")
  if not options:
    available = {name: sharding._cpu_accepts(name) for name in sharding.CPU_BFLOAT16_OPTIONS}
    pytest.skip(f"no CPU compile options on this backend/jaxlib ({jax.default_backend()}, {available})")
  loss, grads = _loss_and_grads(False, "bfloat16", width=256)
  loss_o, grads_o = _loss_and_grads(False, "bfloat16", options, width=256)
  tol = 3e-2  # 8-bit mantissas, another summation order
  np.testing.assert_allclose(loss_o, loss, rtol=tol)
  flat = lambda tree: jnp.concatenate([g.ravel() for g in jax.tree.leaves(tree)])
  error = float(jnp.linalg.norm(flat(grads_o) - flat(grads)) / jnp.linalg.norm(flat(grads)))
  assert error < tol, f"gradients: relative error {error:.2e} with the compile option"  # (key biases' are ~0)


def test_compiler_options_are_left_out_where_xla_does_not_know_them(monkeypatch):
  """An option this jaxlib does not know fails every compilation, so it is never passed:
  the probe tells known from unknown, and compiler_options then gives None."""
  assert not sharding._cpu_accepts("xla_cpu_no_such_option_of_any_release")
  monkeypatch.setattr(sharding, "CPU_BFLOAT16_OPTIONS", {"xla_cpu_no_such_option_of_any_release": True})
  assert sharding.compiler_options(jax.devices(), "bfloat16") is None


def _dot_dtypes(lowered_text: str) -> set:
  """The result element types of the matrix products of a lowered (StableHLO) program."""
  return {result.split("x")[-1] for result in re.findall(r"dot_general.*?-> tensor<([^>]*)>", lowered_text)}


def test_bfloat16_reaches_every_matrix_product():
  """With config.model.dtype = "bfloat16", every product of both models' forward and
  backward passes runs in bfloat16 (nnx.Embed returns its init dtype, float32: position,
  prompt, unit and session embeddings that were added uncast turned the whole
  transformer and the PerceiverIO back to float32)."""
  model = ndt1.NDT1(12, width=16, n_layers=1, n_heads=2, mlp_width=32, max_bins=20, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  batch = {"spikes": jnp.ones((2, 20, 12), jnp.int32)}
  regions = jnp.zeros((1, 12), jnp.int32)
  loss = lambda p: ndt1_task.masked_nll(
    graphdef,
    p,
    batch,
    regions,
    jax.random.key(1),
    mode=masking.MTM,
    mask_config=masking.MaskConfig(),
    train=True,
    dtype="bfloat16",
  )[0]
  assert _dot_dtypes(jax.jit(jax.grad(loss)).lower(params).as_text()) == {"bf16"}

  config = poyo_config.get_config("tiny")
  config.model.dtype = "bfloat16"
  model = poyo.from_config(config, 5, 1, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  tx = poyo_task.make_optimizer(config, params)
  step = poyo_task.make_train_step(graphdef, tx, tasks=dict(config.model.tasks), dtype=jnp.bfloat16)
  batch = jax.tree.map(jnp.asarray, synthetic.poyo_batch(2, 5, 20, 32, 8))
  lowered = jax.jit(step).lower(step_lib.init_state(params, tx), batch, None, jax.random.key(0)).as_text()
  assert _dot_dtypes(lowered) == {"bf16"}
