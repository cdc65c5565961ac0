"""The attention implementation choice (einsum path or cuDNN) and the fused wrapper."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtm_jax.models import attention

CUDA = dict(masked=True, dropout=False, cudnn=True)


def test_selector_picks_cudnn_only_where_it_runs(monkeypatch):
  monkeypatch.delenv(attention.ATTENTION_ENV, raising=False)
  choose = attention.attention_implementation
  assert choose(jnp.bfloat16, 64, 102, 102, **CUDA) == "cudnn"
  assert choose(jnp.float16, 128, 128, 4096, **CUDA) == "cudnn"
  assert choose(jnp.bfloat16, 64, 102, 102, masked=True, dropout=False, cudnn=False) is None  # CPU
  assert choose(jnp.float32, 64, 102, 102, **CUDA) is None  # cuDNN: bf16/fp16 only
  assert choose(jnp.bfloat16, 12, 102, 102, **CUDA) is None  # head dim not a multiple of 8
  assert choose(jnp.bfloat16, 256, 102, 102, **CUDA) is None  # head dim over 128
  assert choose(jnp.bfloat16, 64, 101, 102, **CUDA) is None  # odd length with a mask
  assert choose(jnp.bfloat16, 64, 101, 101, masked=False, dropout=False, cudnn=True) == "cudnn"
  assert choose(jnp.bfloat16, 64, 102, 102, masked=True, dropout=True, cudnn=True) is None  # dropout


def test_selector_env_override(monkeypatch):
  monkeypatch.setenv(attention.ATTENTION_ENV, "xla")
  assert attention.attention_implementation(jnp.bfloat16, 64, 102, 102, **CUDA) is None
  monkeypatch.setenv(attention.ATTENTION_ENV, "flash")
  with pytest.raises(ValueError, match="MTM_JAX_ATTENTION.*'auto' or 'xla'"):
    attention.attention_implementation(jnp.bfloat16, 64, 102, 102, **CUDA)


@pytest.mark.gpu
def test_lowering_uses_cudnn_only_on_a_cuda_gpu():
  """On the CPU no cuDNN call is lowered; on a CUDA GPU (pytest -m gpu there) one is."""
  if jax.default_backend() == "cpu":
    assert not attention.cudnn_backend()
  q = jax.random.normal(jax.random.key(0), (2, 6, 2, 8), jnp.bfloat16)
  text = jax.jit(attention.attend).lower(q, q, q).as_text()
  assert ("cudnn" in text) == attention.cudnn_backend()


@pytest.mark.parametrize("kv_layout", ["bkhe", "bhek"])
@pytest.mark.parametrize("mask_kind", ["none", "causal", "keys"])
def test_fused_wrapper_matches_attend(kv_layout, mask_kind):
  """attend_fused (jax.nn.dot_product_attention, here its XLA implementation) computes
  what attend computes, for both key layouts and the models' mask shapes."""
  kq, kk, kv, km = jax.random.split(jax.random.key(1), 4)
  b, q_len, k_len, h, e = 3, 5, 7, 2, 8
  q = jax.random.normal(kq, (b, q_len, h, e), jnp.float32)
  k = jax.random.normal(kk, (b, k_len, h, e), jnp.float32)
  v = jax.random.normal(kv, (b, k_len, h, e), jnp.float32)
  mask = {
    "none": None,
    "causal": jnp.tril(jnp.ones((q_len, k_len), bool))[None, None],  # NDT1: [1, 1, Q, K]
    "keys": (jax.random.uniform(km, (b, k_len)) < 0.7).at[:, 0].set(True)[:, None, None, :],
  }[mask_kind]
  if kv_layout == "bhek":
    k, v = jnp.moveaxis(k, 1, -1), jnp.moveaxis(v, 1, -1)  # [B, H, E, K]
  want = attention.attend(q, k, v, mask, kv_layout=kv_layout)
  got = attention.attend_fused(q, k, v, mask, kv_layout, implementation="xla")
  assert got.shape == want.shape == (b, q_len, h, e)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
