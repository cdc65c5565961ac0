"""The same numbers on the default device as on the CPU (marked `gpu`: on a GPU machine
`pytest -m gpu tests` compares the GPU with the host's CPU; in the normal suite both
sides are the CPU and the tests check the comparison code itself).

Tolerances (relative to the reference): float32 1e-3 (XLA GPU may run float32 matrix
products in TF32), bfloat16 3e-2.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from benchmarks import synthetic
from mtm_jax.tasks import ndt1 as ndt1_task
from mtm_jax import masking
from mtm_jax.configs import ndt1 as ndt1_config
from mtm_jax.configs import poyo as poyo_config
from mtm_jax.evaluation import activity
from mtm_jax.models import attention, ndt1, poyo
from mtm_jax.training import checkpoint, precision, step as step_lib

pytestmark = pytest.mark.gpu

CPU = jax.devices("cpu")[0]
DEVICE = jax.devices()[0]
RTOL = {"float32": 1e-3, "bfloat16": 3e-2}


def run_on(device, fn, *args):
  """fn(*args) computed on `device` (args moved there first). On a CPU-only host both
  sides are the same device and share one compilation."""
  with jax.default_device(device):
    return fn(*jax.device_put(args, device))


def on_both(fn, *args):
  """(fn(*args) on the default device, fn(*args) on the CPU)."""
  return run_on(DEVICE, fn, *args), run_on(CPU, fn, *args)


def relative_error(got, want) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert np.all(np.isfinite(got)), "non-finite values"
  return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _ndt1(dtype: str, size: str = "mini", neurons: int = 24):
  config = ndt1_config.get_config("demo")
  config.model.size, config.model.dtype = size, dtype
  model = ndt1.from_config(config, neurons, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  return config, graphdef, params


@pytest.mark.parametrize("kv_layout", ["bkhe", "bhek"])
def test_attention_matches_float32_reference(kv_layout):
  """bfloat16 attention on the device (cuDNN on a GPU) vs float32 on the CPU, with a
  NDT1-like causal mask and a POYO-like key-padding mask."""
  keys = jax.random.split(jax.random.key(0), 3)
  b, length, h, e = 4, 102, 4, 64
  q, k, v = (jax.random.normal(kk, (b, length, h, e), jnp.float32) for kk in keys)
  if kv_layout == "bhek":
    k, v = jnp.moveaxis(k, 1, -1), jnp.moveaxis(v, 1, -1)
    mask = (jnp.arange(length) < jnp.array([102, 80, 51, 1])[:, None])[:, None, None, :]
  else:
    mask = jnp.tril(jnp.ones((length, length), bool))[None, None]
  attend = jax.jit(lambda q, k, v, m: attention.attend(q, k, v, m, kv_layout=kv_layout))
  want = run_on(CPU, attend, q, k, v, mask)
  bf16 = lambda x: x.astype(jnp.bfloat16)
  got = run_on(DEVICE, attend, bf16(q), bf16(k), bf16(v), mask)
  assert got.dtype == jnp.bfloat16
  assert relative_error(got, want) < RTOL["bfloat16"]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_ndt1_forward_same_on_device_and_cpu(dtype):
  _, graphdef, params = _ndt1(dtype)
  spikes = jnp.asarray(np.random.default_rng(0).poisson(0.3, (4, 100, 24)), jnp.float32)
  forward = jax.jit(lambda p, x: nnx.merge(graphdef, precision.compute_params(p, dtype))(x).astype(jnp.float32))
  assert relative_error(*on_both(forward, params, spikes)) < RTOL[dtype]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_poyo_forward_same_on_device_and_cpu(dtype):
  config = poyo_config.get_config("tiny")
  config.model.dtype = dtype
  model = poyo.from_config(config, 8, 1, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  batch = jax.tree.map(jnp.asarray, synthetic.poyo_batch(2, 8, 60, 128, 10))
  forward = jax.jit(
    lambda p, x: jax.tree.map(
      lambda y: y.astype(jnp.float32), nnx.merge(graphdef, precision.compute_params(p, dtype))(x)
    )
  )
  got, want = on_both(forward, params, batch)
  for name in want:
    assert relative_error(got[name], want[name]) < RTOL[dtype], name


def test_mtm_masks_identical_on_device_and_cpu():
  spikes, regions = synthetic.ndt1_batch(4, 100, 40, 4)
  apply = jax.jit(lambda key, x, r, s: masking.apply_scheme(key, x["spikes"], r[0], s))
  for scheme in range(len(masking.SCHEMES) + 1):
    args = (jax.random.key(scheme), spikes, regions, jnp.int32(scheme))
    got, want = on_both(apply, *args)
    np.testing.assert_array_equal(got.inputs, want.inputs)
    np.testing.assert_array_equal(got.targets, want.targets)


def test_train_step_same_on_device_and_cpu():
  """One bfloat16 MtM step (attention without dropout: cuDNN's forward and backward on a GPU)."""
  config, graphdef, params = _ndt1("bfloat16", size="tiny", neurons=16)
  tx = ndt1_task.make_optimizer(config)
  mask_config = masking.MaskConfig(config.masking.ratio, config.masking.causal_ratio)
  step = jax.jit(ndt1_task.make_train_step(graphdef, tx, "mtm", mask_config, dtype="bfloat16"))
  data, regions = synthetic.ndt1_batch(4, 100, 16, 3)
  args = (step_lib.init_state(params, tx), data, regions, jax.random.key(1))
  (got_state, got), (want_state, want) = on_both(step, *args)
  assert int(got["scheme"]) == int(want["scheme"])
  for name in ("loss", "grad_norm"):
    assert relative_error(got[name], want[name]) < RTOL["bfloat16"], name
  assert relative_error(jax.tree.leaves(got_state.params)[0], jax.tree.leaves(want_state.params)[0]) < 1e-3


def test_evaluation_same_on_device_and_cpu():
  _, graphdef, params = _ndt1("float32", size="tiny", neurons=16)
  rng = np.random.default_rng(0)
  spikes = rng.poisson(0.3, (6, 100, 16)).astype(np.float32)
  region_ids = np.repeat(np.arange(4), 4).astype(np.int32)
  run = lambda p: activity.evaluate(graphdef, p, spikes, region_ids, causal_trained=True, max_batch=256)
  got, want = on_both(run, params)
  for name in ("co_smoothing_bps", "forward_prediction_bps", "inter_region_bps", "intra_region_bps"):
    np.testing.assert_allclose(got[name], want[name], rtol=1e-3, atol=1e-4, err_msg=name)


def test_checkpoint_restores_across_devices(tmp_path):
  """A train state saved from one device restores onto the other, value for value."""
  config, _, params = _ndt1("float32", size="tiny", neurons=8)
  tx = ndt1_task.make_optimizer(config)
  state = step_lib.init_state(params, tx)
  for i, (source, target) in enumerate(((DEVICE, CPU), (CPU, DEVICE))):
    mngr = checkpoint.manager(str(tmp_path / f"run{i}"))
    checkpoint.save(mngr, 1, jax.device_put(state, source), config, [], key=jax.random.key(0), data_state=None)
    mngr.wait_until_finished()
    restored = checkpoint.restore(mngr, jax.device_put(state, target))
    for got, want in zip(jax.tree.leaves(restored.state), jax.tree.leaves(state)):
      assert got.devices() == {target}
      np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    mngr.close()
