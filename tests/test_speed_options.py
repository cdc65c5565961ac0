"""Speed options change speed, not results: remat gives the same loss and gradients,
bfloat16 compute keeps float32 parameters, gradients and loss, close to float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mtm_jax import masking
from mtm_jax.configs import ndt1 as ndt1_config
from mtm_jax.models import ndt1
from mtm_jax.training import precision
from mtm_jax.training import step as step_lib


def _loss_and_grads(remat: bool, dtype: str):
  model = ndt1.NDT1(12, width=16, n_layers=2, n_heads=2, mlp_width=32, max_bins=20, remat=remat, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  rng = np.random.default_rng(0)
  batch = {"spikes": jnp.asarray(rng.poisson(1.0, (4, 20, 12)), jnp.int32)}
  regions = jnp.asarray((np.arange(12) % 3)[None], jnp.int32)
  fn = jax.jit(jax.value_and_grad(
      lambda p: step_lib.masked_nll(graphdef, p, batch, regions, jax.random.key(1), mode=masking.MTM,
                                    mask_config=masking.MaskConfig(), train=True, dtype=dtype)[0]))
  return fn(params)


def test_remat_and_bfloat16_keep_the_numbers():
  loss, grads = _loss_and_grads(False, "float32")
  loss_r, grads_r = _loss_and_grads(True, "float32")
  np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads_r), jax.tree.leaves(grads)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  loss_b, grads_b = _loss_and_grads(False, "bfloat16")
  assert loss_b.dtype == jnp.float32 and all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads_b))
  np.testing.assert_allclose(loss_b, loss, rtol=2e-2)  # bfloat16 has 8 bits of mantissa
  cos = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(grads_b), jax.tree.leaves(grads)))
  cos /= jnp.sqrt(sum(jnp.vdot(a, a) for a in jax.tree.leaves(grads_b)) * sum(jnp.vdot(b, b) for b in
                                                                               jax.tree.leaves(grads)))
  assert cos > 0.99


def test_compute_dtype_is_validated():
  config = ndt1_config.get_config("tiny")
  config.model.dtype = "float16"
  with pytest.raises(ValueError, match="config.model.dtype"):
    ndt1_config.validate(config)
  params = {"w": jnp.ones(2), "i": jnp.ones(2, jnp.int32)}
  cast = precision.compute_params(params, "bfloat16")
  assert cast["w"].dtype == jnp.bfloat16 and cast["i"].dtype == jnp.int32
