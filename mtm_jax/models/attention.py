"""Attention primitives and pre-LayerNorm transformer blocks (Flax NNX).

Modules are pure: they store parameters only. Randomness (dropout) comes in as a key
argument; `key=None` means deterministic (evaluation). Shapes: B batch, L/Q/K sequence
lengths, H heads, E head dim, D model width.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from flax import nnx

from mtm_jax.models import random_bits, rotary


def split_key(key: jax.Array | None, n: int) -> list:
  """n keys from `key`, or n Nones when it is None (no dropout: a deterministic pass)."""
  return list(jax.random.split(key, n)) if key is not None else [None] * n


def dropout(x, rate: float, key: jax.Array | None):
  """Inverted dropout of x (any shape) with probability `rate`; x itself when key is None
  or rate is 0.

  An element is dropped when its uniform 32-bit word is below rate * 2^32 (rounded: the
  rate is exact to 2^-32), and the kept ones are scaled by the inverse of the exact keep
  probability. The words come from `random_bits.bits`, drawn in x's shape and fused
  into the masking: on XLA CPU jax.random's bits, not the masking, were the cost. A
  [16, 2, 128, 3072] mask (POYO's attention): 190 ms with jax.random.bits, about 40 ms
  here.
  """
  if key is None or rate == 0.0:
    return x
  if not 0.0 < rate < 1.0:
    raise ValueError(f"dropout: expected a rate in [0, 1), got {rate}")
  levels = 1 << 32
  threshold = min(max(round(rate * levels), 1), levels - 1)
  words = random_bits.bits(key, x.shape if x.ndim else (1,)).reshape(x.shape)
  keep = words >= jnp.uint32(threshold)
  return jnp.where(keep, x * (levels / (levels - threshold)), jnp.zeros((), x.dtype)).astype(x.dtype)


# MTM_JAX_ATTENTION: "auto" (cuDNN where attention_implementation allows) or "xla" (always
# the einsum path; for comparisons on a GPU).
ATTENTION_ENV = "MTM_JAX_ATTENTION"
_CUDNN_DTYPES = ("bfloat16", "float16")


def cudnn_backend() -> bool:
  """Whether JAX's default backend is a CUDA GPU that cuDNN's flash attention runs on
  (compute capability 8.0 or newer: Ampere, Hopper, ...)."""
  if jax.default_backend() != "gpu":
    return False
  device = jax.devices()[0]
  platform = getattr(getattr(device, "client", None), "platform_version", "")
  return "cuda" in platform.lower() and float(getattr(device, "compute_capability", "0")) >= 8.0


def attention_implementation(
  dtype, head_dim: int, q_len: int, k_len: int, *, masked: bool, dropout: bool, cudnn: bool
) -> str | None:
  """ "cudnn" where `jax.nn.dot_product_attention(implementation="cudnn")` takes attention
  of these inputs, None (attend's einsum path) otherwise.

  cuDNN's flash attention needs (jax/_src/cudnn/fused_attention_stablehlo.py):
  bfloat16 or float16 q, k and v; a head dim E that is a multiple of 8 and at most 128
  (256 on Hopper; 128 holds on every GPU it supports); even Q and K lengths when a mask
  (an additive bias to cuDNN) takes part in training. jax.nn's call has no dropout, so
  attention-probability dropout keeps the einsum path (and its random bits). `cudnn`:
  cudnn_backend(). The MTM_JAX_ATTENTION environment variable "xla" forces the einsum
  path; "auto" (or unset) chooses as above.
  """
  choice = os.environ.get(ATTENTION_ENV, "auto").lower()
  if choice not in ("auto", "xla"):
    raise ValueError(f"{ATTENTION_ENV}: expected 'auto' or 'xla', got {choice!r}")
  if choice == "xla" or not cudnn or dropout:
    return None
  if jnp.dtype(dtype).name not in _CUDNN_DTYPES or head_dim % 8 or head_dim > 128:
    return None
  if masked and (q_len % 2 or k_len % 2):
    return None
  return "cudnn"


def attend_fused(q, k, v, mask, kv_layout: str, implementation: str = "cudnn"):
  """attend() through `jax.nn.dot_product_attention` ("cudnn" on the GPU; "xla" checks
  this wrapper on the CPU): q [B, Q, H, E], k and v in `kv_layout`, mask broadcastable
  to [B, H, Q, K] -> [B, Q, H, E]. cuDNN takes a mask only at full [B|1, H|1, Q, K]."""
  if kv_layout == "bhek":
    k, v = jnp.moveaxis(k, -1, 1), jnp.moveaxis(v, -1, 1)  # [B, K, H, E]
  if mask is not None:
    mask = jnp.broadcast_to(mask, mask.shape[:2] + (q.shape[1], k.shape[1]))
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)


def attend(q, k, v, mask=None, *, dropout_rate: float = 0.0, key: jax.Array | None = None, kv_layout: str = "bkhe"):
  """Scaled dot-product attention.

  q [B, Q, H, E], k and v [B, K, H, E] (kv_layout "bkhe") or [B, H, E, K] ("bhek": the
  key axis last, which spares XLA CPU transposes of long contexts), mask broadcastable
  to [B, H, Q, K] (True = may attend). Dropout on the attention probabilities only when
  a key is given. Returns [B, Q, H, E].

  Written as einsum -> softmax -> einsum: XLA fuses it on every backend, and on CPU it is
  1.6-1.8x faster than `jax.nn.dot_product_attention` at NDT1's shapes (measured with
  2048 x 102 tokens, 4 heads of 16), with identical outputs. The softmax runs in float32
  whatever the compute dtype; the probabilities are cast back to v's dtype. On a CUDA GPU,
  where attention_implementation allows, the attention runs in cuDNN's fused kernel
  instead (lowered for the GPU only; the same program lowered for the CPU keeps the
  einsums).
  """
  if kv_layout not in ("bkhe", "bhek"):
    raise ValueError(f"attend: kv_layout must be 'bkhe' or 'bhek', got {kv_layout!r}")
  dropout_on = key is not None and dropout_rate > 0.0
  k_len = k.shape[-1] if kv_layout == "bhek" else k.shape[1]
  implementation = attention_implementation(
    q.dtype, q.shape[-1], q.shape[1], k_len, masked=mask is not None, dropout=dropout_on, cudnn=cudnn_backend()
  )
  plain = lambda q, k, v, mask: _attend_xla(q, k, v, mask, dropout_rate=dropout_rate, key=key, kv_layout=kv_layout)
  if implementation is None:
    return plain(q, k, v, mask)
  return jax.lax.platform_dependent(q, k, v, mask, cuda=lambda *a: attend_fused(*a, kv_layout), default=plain)


def _attend_xla(q, k, v, mask, *, dropout_rate: float, key: jax.Array | None, kv_layout: str):
  """attend()'s einsum -> float32 softmax -> einsum path (see attend)."""
  logits = jnp.einsum(f"bqhe,{kv_layout}->bhqk", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)  # float32 softmax in any dtype
  if key is not None and dropout_rate > 0.0:
    probs = dropout(probs, dropout_rate, key)
  return jnp.einsum(f"bhqk,{kv_layout}->bqhe", probs, v)


class Attention(nnx.Module):
  """Multi-head attention of `inputs_q` over `inputs_kv` (self-attention when equal)."""

  def __init__(self, dim: int, n_heads: int, *, dropout: float, rngs: nnx.Rngs, kv_dim: int | None = None):
    if dim % n_heads:
      raise ValueError(f"attention: width {dim} is not divisible by {n_heads} heads")
    kv_dim = dim if kv_dim is None else kv_dim
    self.n_heads, self.dropout = n_heads, dropout
    self.query = nnx.Linear(dim, dim, rngs=rngs)
    self.key = nnx.Linear(kv_dim, dim, rngs=rngs)
    self.value = nnx.Linear(kv_dim, dim, rngs=rngs)
    self.out = nnx.Linear(dim, dim, rngs=rngs)

  def __call__(self, inputs_q, inputs_kv, mask=None, *, key=None, angles=None):
    """inputs_q [B, Q, D], inputs_kv [B, K, Dkv], mask [B|1, 1, Q, K] -> [B, Q, D].

    angles: None, or rotary angles [B|1, L, F] of the tokens (self-attention: Q = K = L);
    queries and keys are then rotated by them with `rotary.rotate` (interleaved pairs of
    each head's dims), values are not."""
    heads = lambda x: x.reshape(x.shape[:-1] + (self.n_heads, -1))  # [B, L, H, E]
    k_attn, k_out = jax.random.split(key) if key is not None else (None, None)
    q, k = heads(self.query(inputs_q)), heads(self.key(inputs_kv))
    if angles is not None:
      q, k = rotary.rotate(q, angles), rotary.rotate(k, angles)
    out = attend(
      q,
      k,
      heads(self.value(inputs_kv)),
      mask,
      dropout_rate=self.dropout,
      key=k_attn,
    )
    out = out.reshape(out.shape[:-2] + (-1,))
    return self.out(dropout(out, self.dropout, k_out))


class MLP(nnx.Module):
  """Linear -> exact GELU -> Linear -> dropout."""

  def __init__(self, dim: int, hidden: int, *, dropout: float, rngs: nnx.Rngs):
    self.up = nnx.Linear(dim, hidden, rngs=rngs)
    self.down = nnx.Linear(hidden, dim, rngs=rngs)
    self.dropout = dropout

  def __call__(self, x, *, key=None):
    return dropout(self.down(jax.nn.gelu(self.up(x), approximate=False)), self.dropout, key)


class SelfAttentionBlock(nnx.Module):
  """Pre-LayerNorm transformer block: x + attn(ln(x)); x + mlp(ln(x))."""

  def __init__(
    self,
    dim: int,
    n_heads: int,
    mlp_hidden: int,
    *,
    dropout: float,
    attention_dropout: float,
    layer_norm_eps: float,
    rngs: nnx.Rngs,
  ):
    self.norm_attn = nnx.LayerNorm(dim, epsilon=layer_norm_eps, rngs=rngs)
    self.attn = Attention(dim, n_heads, dropout=attention_dropout, rngs=rngs)
    self.norm_mlp = nnx.LayerNorm(dim, epsilon=layer_norm_eps, rngs=rngs)
    self.mlp = MLP(dim, mlp_hidden, dropout=dropout, rngs=rngs)

  def __call__(self, x, mask=None, *, key=None, angles=None):
    """x [B, L, D], mask [B|1, 1, L, L] -> [B, L, D]; angles: rotary angles [B|1, L, F]
    of queries and keys (see Attention), or None (no rotation)."""
    k_attn, k_mlp = jax.random.split(key) if key is not None else (None, None)
    h = self.norm_attn(x)
    x = x + self.attn(h, h, mask, key=k_attn, angles=angles)
    return x + self.mlp(self.norm_mlp(x), key=k_mlp)


def t_fixup(layer: SelfAttentionBlock, n_layers: int) -> None:
  """T-Fixup initialisation of one block, in place, as the MtM and NEDS references apply it:
  the attention output and both MLP kernels times 0.67 * n_layers ** -1/4, the value kernel
  times that and sqrt(2)."""
  factor = 0.67 * n_layers**-0.25
  for linear, f in (
    (layer.attn.out, factor),
    (layer.mlp.up, factor),
    (layer.mlp.down, factor),
    (layer.attn.value, factor * 2**0.5),
  ):
    linear.kernel[...] = linear.kernel[...] * f


def blocks(hp, width: int, *, rngs: nnx.Rngs) -> nnx.List:
  """hp.n_layers pre-LayerNorm blocks (SelfAttentionBlock) of `width`, each T-Fixup
  initialised when hp.fixup_init: the transformer of NDT1 and NEDS. hp: their Hparams (fields
  n_layers, n_heads, mlp_width, dropout, attention_dropout, layer_norm_eps, fixup_init)."""
  layers = nnx.List(
    [
      SelfAttentionBlock(
        width,
        hp.n_heads,
        hp.mlp_width,
        dropout=hp.dropout,
        attention_dropout=hp.attention_dropout,
        layer_norm_eps=hp.layer_norm_eps,
        rngs=rngs,
      )
      for _ in range(hp.n_layers)
    ]
  )
  if hp.fixup_init:
    for layer in layers:
      t_fixup(layer, hp.n_layers)
  return layers
