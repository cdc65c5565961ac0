"""NDT1 (Ye & Pandarinath 2021) as used by MtM, in Flax NNX.

Input per bin: spike counts of N neurons -> Linear(N, mult*N) -> softsign ->
Linear(mult*N, D) + learned position embedding. A session token and a prompt token (one
learned row per masking scheme) are prepended, in that order, without position
embeddings; dropout; pre-LayerNorm transformer; final LayerNorm; the special tokens are
dropped and Linear(D, N) gives log-rates per bin.

Causal mode: bins attend to bins up to their own and to the special tokens. The
reference code also lets the special tokens attend to every bin in causal mode, which
leaks future bins into earlier ones from the second layer on; here the special tokens
see only each other in causal mode unless `special_tokens_see_future=True`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from mtm_jax import masking
from mtm_jax.models import attention

# Named sizes: (width D, layers, heads, MLP width).
SIZES = {
    "tiny": (32, 1, 2, 64),
    "small": (128, 2, 4, 256),
    "demo": (128, 2, 4, 256),
    "paper": (512, 5, 8, 1024),
}


class NDT1(nnx.Module):
  """NDT1 with MtM's prompt and session tokens; see the module docstring."""

  def __init__(self, n_neurons: int, *, width: int, n_layers: int, n_heads: int, mlp_width: int,
               n_sessions: int = 1, max_bins: int = 100, embed_mult: int = 2, dropout: float = 0.4,
               attention_dropout: float = 0.4, embed_dropout: float = 0.2, use_prompt: bool = True,
               use_session: bool = True, special_tokens_see_future: bool = False,
               layer_norm_eps: float = 1e-5, rngs: nnx.Rngs):
    self.n_neurons, self.max_bins = n_neurons, max_bins
    self.embed_dropout = embed_dropout
    self.use_prompt, self.use_session = use_prompt, use_session
    self.special_tokens_see_future = special_tokens_see_future
    self.embed_spikes = nnx.Linear(n_neurons, embed_mult * n_neurons, rngs=rngs)
    self.embed_project = nnx.Linear(embed_mult * n_neurons, width, rngs=rngs)
    self.position = nnx.Embed(max_bins, width, rngs=rngs)
    self.prompt = nnx.Embed(len(masking.SCHEMES), width, rngs=rngs) if use_prompt else None
    self.session = nnx.Embed(n_sessions, width, rngs=rngs) if use_session else None
    self.layers = nnx.List([
        attention.SelfAttentionBlock(width, n_heads, mlp_width, dropout=dropout, attention_dropout=attention_dropout,
                                     layer_norm_eps=layer_norm_eps, rngs=rngs)
        for _ in range(n_layers)
    ])
    self.final_norm = nnx.LayerNorm(width, epsilon=layer_norm_eps, rngs=rngs)
    self.readout = nnx.Linear(width, n_neurons, rngs=rngs)

  @property
  def n_special(self) -> int:
    return int(self.use_prompt) + int(self.use_session)

  def attention_mask(self, n_bins: int, causal) -> jax.Array:
    """[1, 1, L, L] bool over [special tokens, bins]; `causal` may be traced."""
    s, length = self.n_special, self.n_special + n_bins
    idx = jnp.arange(length)
    is_bin_q, is_bin_k = (idx >= s)[:, None], (idx >= s)[None, :]
    past = idx[None, :] <= idx[:, None]
    # Causal: bins see special tokens and past bins; special tokens see each other (and
    # every bin only if special_tokens_see_future).
    causal_mask = jnp.where(is_bin_q, ~is_bin_k | past, ~is_bin_k | self.special_tokens_see_future)
    mask = jnp.where(causal, causal_mask, jnp.ones((length, length), bool))
    return mask[None, None]

  def __call__(self, spikes, *, prompt=0, session=0, causal=False, key: jax.Array | None = None):
    """spikes [B, T, N] (masked counts) -> log-rates [B, T, N].

    prompt: [] int index in masking.SCHEMES; session: [] int session row; causal: []
    bool; key: dropout key (None = deterministic).
    """
    b, t, n = spikes.shape
    if n != self.n_neurons:
      raise ValueError(f"NDT1: input has {n} neurons, the model was built for {self.n_neurons}")
    if t > self.max_bins:
      raise ValueError(f"NDT1: input has {t} bins, the position embedding holds {self.max_bins}")
    keys = list(jax.random.split(key, len(self.layers) + 1)) if key is not None else [None] * (len(self.layers) + 1)
    x = self.embed_project(jax.nn.soft_sign(self.embed_spikes(spikes.astype(jnp.float32))))
    x = x + self.position(jnp.arange(t))[None]  # [B, T, D]
    special = []
    if self.use_session:
      special.append(self.session(jnp.reshape(session, (1,)))[0])
    if self.use_prompt:
      special.append(self.prompt(jnp.reshape(prompt, (1,)))[0])
    if special:
      tokens = jnp.broadcast_to(jnp.stack(special)[None], (b, len(special), x.shape[-1]))
      x = jnp.concatenate([tokens.astype(x.dtype), x], axis=1)  # [B, S + T, D]
    x = attention._dropout(x, self.embed_dropout, keys[0])
    mask = self.attention_mask(t, causal)
    for layer, k in zip(self.layers, keys[1:]):
      x = layer(x, mask, key=k)
    x = self.final_norm(x)[:, self.n_special :]
    return self.readout(x)


def from_config(config: ml_collections.ConfigDict, n_neurons: int, *, rngs: nnx.Rngs) -> NDT1:
  """The model of `config.model` for a session of `n_neurons` neurons."""
  m = config.model
  if m.size not in SIZES:
    raise ValueError(f"config.model.size: unknown {m.size!r}; expected one of {sorted(SIZES)}")
  width, n_layers, n_heads, mlp_width = SIZES[m.size]
  return NDT1(
      n_neurons, width=width, n_layers=n_layers, n_heads=n_heads, mlp_width=mlp_width,
      n_sessions=m.n_sessions, max_bins=m.max_bins, embed_mult=m.embed_mult, dropout=m.dropout,
      attention_dropout=m.attention_dropout, embed_dropout=m.embed_dropout, use_prompt=m.use_prompt,
      use_session=m.use_session, special_tokens_see_future=m.special_tokens_see_future,
      layer_norm_eps=m.layer_norm_eps, rngs=rngs)
