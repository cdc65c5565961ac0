"""The spike-token PerceiverIO parts that POYO (models/poyo.py) and spike-token MtM
(models/poyo_mtm.py) share: the checks of their hyper-parameters, their tables and blocks,
the input tokens and the latent grid.

Tokens [B, L, D]: unit_emb[unit] + token_type_emb[type] (one token per spike, start/end
tokens per unit; mtm_jax.datasets.events.tokens). Latents [N, D], N = steps *
latents_per_step: the `latents_per_step` rows of latent_emb repeated at every
`latent_step`, at the step centres. Blocks (perceiver.py): an encoder cross-attention of
the latents over the tokens, `depth` latent self-attention blocks, a decoder
cross-attention of the queries over the latents; the encoder and the self-attention rotate
values, the decoder does not.

The models keep these parts as their own attributes (unit_emb, session_emb,
token_type_emb, latent_emb, encoder, processor, decoder), so their parameter paths are
the same whichever model builds them; `tables` and `blocks` draw them from the Rngs in
that order.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtm_jax.models import perceiver, unit_tables

N_TOKEN_TYPES = 4  # rows of the token-type table (3 used; the reference allocates 4)


def check_perceiver(hp, span: float, span_name: str) -> None:
  """The PerceiverIO fields of a hyper-parameter dataclass (dim, depth, heads, latents per
  step, head_dim, latent_step within `span` seconds, t_min/t_max, dropouts); ValueError
  naming the config.model field."""
  dims = (hp.dim, hp.cross_heads, hp.self_heads, hp.latents_per_step)
  if min(dims) < 1 or hp.depth < 0:
    raise ValueError(
      f"config.model.size: expected positive dim, heads and latents per step and depth >= 0, "
      f"got {dims} and depth {hp.depth}"
    )
  if hp.head_dim < 4 or hp.head_dim % 4:
    raise ValueError(
      f"config.model.head_dim: must be a multiple of 4 (half of it is rotated in pairs), got {hp.head_dim}"
    )
  if not 0.0 < hp.latent_step <= span:
    raise ValueError(f"config.model.latent_step: must be in (0, {span_name}={span}], got {hp.latent_step}")
  if not 0.0 < hp.t_min < hp.t_max:
    raise ValueError(f"config.model.t_min/t_max: expected 0 < t_min < t_max, got {hp.t_min}, {hp.t_max}")
  for field in ("ffn_dropout", "lin_dropout", "attn_dropout"):
    if not 0.0 <= getattr(hp, field) < 1.0:
      raise ValueError(f"config.model.{field}: must be in [0, 1), got {getattr(hp, field)}")


def tables(n_units: int, n_sessions: int, hp, *, rngs: nnx.Rngs) -> tuple[nnx.Embed, ...]:
  """(unit_emb [n_units + 1, D], session_emb [n_sessions + 1, D], token_type_emb
  [N_TOKEN_TYPES, D], latent_emb [latents_per_step, D]), all N(0, hp.emb_init_scale), row 0
  of the unit and session tables zero (padding)."""
  init = nnx.initializers.normal(hp.emb_init_scale)
  unit_emb, session_emb = unit_tables.make(n_units, n_sessions, hp.dim, init, rngs=rngs)
  token_type_emb = nnx.Embed(N_TOKEN_TYPES, hp.dim, embedding_init=init, rngs=rngs)
  latent_emb = nnx.Embed(hp.latents_per_step, hp.dim, embedding_init=init, rngs=rngs)
  return unit_emb, session_emb, token_type_emb, latent_emb


def _block_options(hp, rngs: nnx.Rngs) -> dict:
  return dict(
    head_dim=hp.head_dim,
    ffn_dropout=hp.ffn_dropout,
    attention_dropout=hp.attn_dropout,
    layer_norm_eps=hp.layer_norm_eps,
    rngs=rngs,
  )


def cross_attention(hp, *, rotate_value: bool, rngs: nnx.Rngs) -> perceiver.CrossAttentionBlock:
  """A cross-attention block of `hp`'s width, cross_heads, head_dim, dropouts and epsilon
  (rotate_value: the encoder's; the decoders' do not rotate values)."""
  return perceiver.CrossAttentionBlock(hp.dim, hp.cross_heads, rotate_value=rotate_value, **_block_options(hp, rngs))


def blocks(hp, *, rngs: nnx.Rngs) -> tuple[perceiver.CrossAttentionBlock, nnx.List, perceiver.CrossAttentionBlock]:
  """(encoder, processor: hp.depth self-attention blocks, decoder) of `hp`'s sizes and dropouts."""
  encoder = cross_attention(hp, rotate_value=True, rngs=rngs)
  processor = nnx.List(
    [
      perceiver.SelfAttentionBlock(
        hp.dim, hp.self_heads, rotate_value=True, residual_dropout=hp.lin_dropout, **_block_options(hp, rngs)
      )
      for _ in range(hp.depth)
    ]
  )
  decoder = cross_attention(hp, rotate_value=False, rngs=rngs)
  return encoder, processor, decoder


def n_latent_steps(span: float, latent_step: float) -> int:
  """Latent groups covering `span` seconds, one every `latent_step`."""
  return int(np.ceil(span / latent_step - 1e-6))


def latent_timestamps(span: float, latent_step: float, latents_per_step: int, offset: float = 0.0) -> np.ndarray:
  """[n_latent_steps * latents_per_step] float32: step centres (+ offset), each repeated per latent."""
  centres = (np.arange(n_latent_steps(span, latent_step)) + 0.5) * latent_step + offset
  return np.repeat(centres, latents_per_step).astype(np.float32)


def embed_tokens(unit_emb: nnx.Embed, token_type_emb: nnx.Embed, batch: Mapping[str, jax.Array], dtype) -> jax.Array:
  """Input tokens [B, L, D] in `dtype`: unit_emb[unit_index] + token_type_emb[token_type]
  (batch entries [B, L] int)."""
  return (unit_emb(batch["unit_index"]) + token_type_emb(batch["token_type"])).astype(dtype)


def latent_grid(latent_emb: nnx.Embed, n_steps: int) -> jax.Array:
  """[n_steps * latents_per_step, D]: the latent vectors repeated at every step."""
  return jnp.tile(latent_emb.embedding[...], (n_steps, 1))
