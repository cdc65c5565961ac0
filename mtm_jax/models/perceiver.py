"""Pre-LayerNorm PerceiverIO blocks with rotary time embeddings (Flax NNX), for POYO.

Layout (as in the POYO reference):
  cross-attention block: x += Attn(LN_q(x), LN_ctx(context)); x += FFN(LN(x))
  self-attention block:  x += drop(Attn(LN(x))); x += drop(FFN(LN(x)))
with FFN = Linear(D, 2*mult*D) -> GEGLU -> dropout -> Linear(mult*D, D). The residual
dropout `drop` is the reference's "linear" dropout; it is used in the latent
self-attention blocks only (rate 0 elsewhere).

Attention projects to heads of width `head_dim` (inner width heads * head_dim): q/k/v
without bias, the output projection with bias. q and k are rotated by their tokens'
times; with `rotate_value`, v is rotated by the key time and the attention output is
rotated back by the query time, so values carry relative time too. A key-padding mask
[B, K] (True = real token) may be given; a query row whose keys are all padding gets a
zero attention output (before the output projection), never NaN.

Modules hold parameters only; dropout comes from a `key` argument (None =
deterministic). Shapes: B batch, Q queries, K keys, D width, H heads, E head dim,
F rotary frequencies; angles are [B|1, L, F] from `rotary.rotary_angles`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from mtm_jax.models import attention
from mtm_jax.models import rotary


class RotaryAttention(nnx.Module):
  """Multi-head attention of queries over a context, with rotary time embeddings."""

  def __init__(
    self,
    dim: int,
    n_heads: int,
    *,
    head_dim: int = 64,
    context_dim: int | None = None,
    dropout: float = 0.0,
    rotate_value: bool = False,
    rngs: nnx.Rngs,
  ):
    if n_heads < 1 or head_dim < 1:
      raise ValueError(f"rotary attention: n_heads and head_dim must be positive, got {n_heads}, {head_dim}")
    context_dim = dim if context_dim is None else context_dim
    inner = n_heads * head_dim
    self.n_heads, self.head_dim = n_heads, head_dim
    self.dropout, self.rotate_value = dropout, rotate_value
    self.query = nnx.Linear(dim, inner, use_bias=False, rngs=rngs)
    self.key = nnx.Linear(context_dim, inner, use_bias=False, rngs=rngs)
    self.value = nnx.Linear(context_dim, inner, use_bias=False, rngs=rngs)
    self.out = nnx.Linear(inner, dim, rngs=rngs)

  def __call__(self, x, context, x_angles, context_angles, mask=None, *, key=None, context_index=None):
    """x [B, Q, D], context [B, K, Dc], x_angles [B|1, Q, F], context_angles [B|1, K, F],
    mask [B, K] bool (True = real key) or None -> [B, Q, D]. `key`: attention-probability
    dropout. context_index [B] int: row b attends to context row context_index[b] (context
    and its angles then have their own batch Bc; its keys and values are computed once
    per context row, e.g. for many masked copies of one trial)."""
    q = self.query(x)
    q = rotary.rotate(q.reshape(q.shape[:-1] + (self.n_heads, self.head_dim)), x_angles)  # [B, Q, H, E]
    k = rotary.rotate(self._heads_key_last(self.key, context), context_angles, time_minor=True)  # [B|Bc, H, E, K]
    v = self._heads_key_last(self.value, context)
    if self.rotate_value:
      v = rotary.rotate(v, context_angles, time_minor=True)
    if context_index is not None:
      k, v = jnp.take(k, context_index, axis=0), jnp.take(v, context_index, axis=0)  # [B, H, E, K]
    attn_mask = None if mask is None else mask[:, None, None, :]  # [B, 1, 1, K]
    out = attention.attend(q, k, v, attn_mask, dropout_rate=self.dropout, key=key, kv_layout="bhek")  # [B, Q, H, E]
    if mask is not None:  # rows with no real key: zeros, not the mean of padding values
      out = jnp.where(jnp.any(mask, axis=-1)[:, None, None, None], out, jnp.zeros((), out.dtype))
    if self.rotate_value:
      out = rotary.rotate(out, x_angles, inverse=True)
    return self.out(out.reshape(out.shape[:-2] + (-1,)))

  def _heads_key_last(self, linear: nnx.Linear, context):
    """context [B, K, Dc] -> linear(context) as heads [B, H, E, K], the key axis last.

    Keys and values stay in this layout through the rotation and the attention products:
    on XLA CPU the [B, K, H, E] layout cost slow transposes of every [B, K, H*E] array in
    both passes (POYO small's step at batch 16 and 3,072 tokens: 1.56 s with them, 1.34 s
    without). Other backends choose their own layouts."""
    kernel = linear.kernel[...].reshape(-1, self.n_heads, self.head_dim)  # [Dc, H, E]
    return jnp.einsum("bkd,dhe->bhek", context, kernel)


class GEGLUFeedForward(nnx.Module):
  """Linear(D, 2*mult*D) -> split (x, gate) -> x * gelu_exact(gate) -> dropout -> Linear(mult*D, D)."""

  def __init__(self, dim: int, *, mult: int = 4, dropout: float = 0.0, rngs: nnx.Rngs):
    self.up = nnx.Linear(dim, 2 * mult * dim, rngs=rngs)
    self.down = nnx.Linear(mult * dim, dim, rngs=rngs)
    self.dropout = dropout

  def __call__(self, x, *, key=None):
    """x [..., D] -> [..., D]."""
    h, gate = jnp.split(self.up(x), 2, axis=-1)
    h = h * jax.nn.gelu(gate, approximate=False)
    return self.down(attention.dropout(h, self.dropout, key))


@dataclasses.dataclass(frozen=True)
class BlockOptions:
  """What both blocks take besides their widths (keyword arguments of their __init__)."""

  head_dim: int = 64
  ffn_dropout: float = 0.0  # inside the feed-forward
  attention_dropout: float = 0.0  # on the attention probabilities
  residual_dropout: float = 0.0  # on each branch before its residual add
  rotate_value: bool = False  # rotate values by key time and outputs back by query time
  layer_norm_eps: float = 1e-5


class CrossAttentionBlock(nnx.Module):
  """x += Attn(LN_q(x), LN_ctx(context)); x += FFN(LN(x)) (each branch after residual dropout)."""

  def __init__(self, dim: int, n_heads: int, *, context_dim: int | None = None, rngs: nnx.Rngs, **options):
    """options: the fields of BlockOptions."""
    o = BlockOptions(**options)
    head_dim, ffn_dropout, attention_dropout = o.head_dim, o.ffn_dropout, o.attention_dropout
    residual_dropout, rotate_value, layer_norm_eps = o.residual_dropout, o.rotate_value, o.layer_norm_eps
    context_dim = dim if context_dim is None else context_dim
    self.norm_query = nnx.LayerNorm(dim, epsilon=layer_norm_eps, rngs=rngs)
    self.norm_context = nnx.LayerNorm(context_dim, epsilon=layer_norm_eps, rngs=rngs)
    self.attn = RotaryAttention(
      dim,
      n_heads,
      head_dim=head_dim,
      context_dim=context_dim,
      dropout=attention_dropout,
      rotate_value=rotate_value,
      rngs=rngs,
    )
    self.norm_ffn = nnx.LayerNorm(dim, epsilon=layer_norm_eps, rngs=rngs)
    self.ffn = GEGLUFeedForward(dim, dropout=ffn_dropout, rngs=rngs)
    self.residual_dropout = residual_dropout

  def __call__(self, x, context, x_angles, context_angles, mask=None, *, key=None, context_index=None):
    """x [B, Q, D], context [B, K, Dc], angles [B|1, Q|K, F], mask [B, K] -> [B, Q, D];
    context_index [B]: rows of a context of its own batch (RotaryAttention)."""
    k_attn, k_res1, k_ffn, k_res2 = attention.split_key(key, 4)
    context = self.norm_context(context)
    h = self.attn(self.norm_query(x), context, x_angles, context_angles, mask, key=k_attn, context_index=context_index)
    x = x + attention.dropout(h, self.residual_dropout, k_res1)
    return x + attention.dropout(self.ffn(self.norm_ffn(x), key=k_ffn), self.residual_dropout, k_res2)


class SelfAttentionBlock(nnx.Module):
  """x += drop(Attn(LN(x))); x += drop(FFN(LN(x)))."""

  def __init__(self, dim: int, n_heads: int, *, rngs: nnx.Rngs, **options):
    """options: the fields of BlockOptions."""
    o = BlockOptions(**options)
    head_dim, ffn_dropout, attention_dropout = o.head_dim, o.ffn_dropout, o.attention_dropout
    residual_dropout, rotate_value, layer_norm_eps = o.residual_dropout, o.rotate_value, o.layer_norm_eps
    self.norm_attn = nnx.LayerNorm(dim, epsilon=layer_norm_eps, rngs=rngs)
    self.attn = RotaryAttention(
      dim, n_heads, head_dim=head_dim, dropout=attention_dropout, rotate_value=rotate_value, rngs=rngs
    )
    self.norm_ffn = nnx.LayerNorm(dim, epsilon=layer_norm_eps, rngs=rngs)
    self.ffn = GEGLUFeedForward(dim, dropout=ffn_dropout, rngs=rngs)
    self.residual_dropout = residual_dropout

  def __call__(self, x, angles, mask=None, *, key=None):
    """x [B, L, D], angles [B|1, L, F], mask [B, L] (True = real token) or None -> [B, L, D]."""
    k_attn, k_res1, k_ffn, k_res2 = attention.split_key(key, 4)
    h = self.norm_attn(x)
    x = x + attention.dropout(self.attn(h, h, angles, angles, mask, key=k_attn), self.residual_dropout, k_res1)
    return x + attention.dropout(self.ffn(self.norm_ffn(x), key=k_ffn), self.residual_dropout, k_res2)
