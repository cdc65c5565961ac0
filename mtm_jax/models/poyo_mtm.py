"""Spike-token MtM: POYO's PerceiverIO encoder with MtM's prompts, decoding the log-rate of
any (unit, time) pair, in Flax NNX. Trained self-supervised with MtM's masking schemes on
the input tokens (mtm_jax.token_masking); no binning on the input side, no stitching.

Encoder (POYO's, models/spike_perceiver.py): one token per spike, unit_emb[unit] +
token_type_emb[type] (start/end tokens per unit at t = 0 and t = context), time only
through rotary embeddings; `latents_per_step` learned latents at every `latent_step` of
the context; latents += prompt_emb[scheme]; cross-attention of the latents over the kept
tokens (key-padding mask: the dropped tokens are keys masked out), then `depth` latent
self-attention blocks.

Decoder: one query per (unit, time): unit_emb[unit] + query_emb + session_emb[session] +
prompt_emb[scheme], rotary time at the query time (a bin centre); cross-attention over the
latents, then Linear(D, 1) of the output h, plus with `unit_readout` (the config's default)
<W unit_emb[unit], h>, a readout vector per unit as NDT1's per-neuron output weights (on
synthetic_023 at 1000 steps it took co-smoothing from 0.257 to 0.279 bits per spike):
the log firing rate in spikes per second at that time. The
expected count of a bin of width w is exp(log rate) * w, so the same model is scored at
20, 10 or 5 ms bins.

Batch (a dict; B trials, L tokens, Q queries):
  unit_index    [B, L] int    row of the unit table (0 = padding)
  timestamps    [B, L] float  seconds from the trial start
  token_type    [B, L] int    SPIKE, START or END (mtm_jax.datasets.events.tokens)
  input_mask    [B, L] bool   True = a token the model sees (real and not dropped)
  session_index [B] int       row of the session table
and the queries: query_unit [B, Q] int (unit-table rows), query_time [B, Q] float
(seconds from the trial start), prompt [B] int (mtm_jax.masking.SCHEMES index).

Embedding tables (models/unit_tables.py): row 0 of the unit and session tables is padding;
new sessions append rows (`load` puts a pretrained model's rows in front of a larger fresh model's).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from mtm_jax import masking
from mtm_jax.models import rotary, spike_perceiver, unit_tables


@dataclasses.dataclass(frozen=True)
class Hparams:
  """Spike-token MtM's hyper-parameters: `PoyoMtM(n_units, n_sessions, hparams, rngs=...)`.
  Raises ValueError naming the config.model field of an invalid value."""

  dim: int
  depth: int  # latent self-attention layers
  cross_heads: int
  self_heads: int
  latents_per_step: int
  head_dim: int = 32  # attention head width (the first half is rotated)
  context: float = 2.0  # seconds covered by the latents: the whole trial, as MtM's context
  latent_step: float = 0.125  # seconds between latent groups
  ffn_dropout: float = 0.1
  lin_dropout: float = 0.1  # residual dropout of the latent self-attention layers
  attn_dropout: float = 0.0
  emb_init_scale: float = 0.02
  # Shortest rotary period: 1 ms, not POYO's 0.1 ms: scores use bins of 5 ms and more, and
  # float32 angles t * omega at t = 2 s keep 10x more precision (spike_token_mtm.md).
  t_min: float = 1e-3
  t_max: float = 4.0  # twice the context: a relative time of +-2 s is never aliased
  layer_norm_eps: float = 1e-5
  n_prompts: int = len(masking.SCHEMES) + 1  # MtM's four schemes and temporal (masking._SWITCH_ORDER)
  unit_readout: bool = False  # add <W unit_emb[u], h>: a readout vector per unit, as NDT1's per-neuron weights

  def __post_init__(self):
    spike_perceiver.check_perceiver(self, self.context, "context")

  @classmethod
  def from_config(cls, m: ml_collections.ConfigDict) -> Hparams:
    """The sizes of the preset m.size, every other field from the field of the same name."""
    if m.size not in PRESETS:
      raise ValueError(f"config.model.size: unknown {m.size!r}; expected one of {sorted(PRESETS)}")
    fields = {f.name: m[f.name] for f in dataclasses.fields(cls) if f.name in m and f.name != "n_prompts"}
    return dataclasses.replace(PRESETS[m.size], **fields)


PRESETS = {
  "tiny": Hparams(dim=32, depth=1, cross_heads=1, self_heads=2, latents_per_step=2, head_dim=16),
  "small": Hparams(dim=64, depth=2, cross_heads=2, self_heads=4, latents_per_step=4),
  "base": Hparams(dim=128, depth=6, cross_heads=4, self_heads=8, latents_per_step=16, head_dim=64),
}


# config.model fields added after the first checkpoints: what a saved config without them
# had (tasks' legacy_model; the config's defaults turn the per-unit readout on).
LEGACY_FIELDS = {"unit_readout": False}


def embedding_paths() -> dict[str, tuple[str, ...]]:
  """Parameter paths of the growable tables (unit_tables, as POYO's)."""
  return unit_tables.embedding_paths()


class PoyoMtM(nnx.Module):
  """Spike-token MtM; see the module docstring."""

  def __init__(self, n_units: int, n_sessions: int, hparams: Hparams, *, rngs: nnx.Rngs):
    if n_units < 1 or n_sessions < 1:
      raise ValueError(f"PoyoMtM: n_units and n_sessions must be >= 1, got {n_units} and {n_sessions}")
    hp = self.hparams = hparams
    self.n_units, self.n_sessions = n_units, n_sessions
    self.unit_emb, self.session_emb, self.token_type_emb, self.latent_emb = spike_perceiver.tables(
      n_units, n_sessions, hp, rngs=rngs
    )
    init = nnx.initializers.normal(hp.emb_init_scale)
    self.prompt_emb = nnx.Embed(hp.n_prompts, hp.dim, embedding_init=init, rngs=rngs)
    self.query_emb = nnx.Param(init(rngs.params(), (hp.dim,)))
    self.encoder, self.processor, self.decoder = spike_perceiver.blocks(hp, rngs=rngs)
    self.readout = nnx.Linear(hp.dim, 1, rngs=rngs)
    if hp.unit_readout:  # no new parameter path otherwise: older checkpoints restore as they were
      self.unit_readout = nnx.Linear(hp.dim, hp.dim, use_bias=False, rngs=rngs)

  @property
  def n_latent_steps(self) -> int:
    return spike_perceiver.n_latent_steps(self.hparams.context, self.hparams.latent_step)

  def latent_timestamps(self) -> np.ndarray:
    """[n_latent_steps * latents_per_step] float32: step centres, each repeated per latent."""
    hp = self.hparams
    return spike_perceiver.latent_timestamps(hp.context, hp.latent_step, hp.latents_per_step)

  def latent_angles(self, latent_timestamps=None) -> jax.Array:
    """[1, N_lat, F] rotary angles of the latents (default times: latent_timestamps())."""
    times = self.latent_timestamps() if latent_timestamps is None else latent_timestamps
    return rotary.rotary_angles(jnp.asarray(times)[None], self.frequencies())

  def frequencies(self) -> np.ndarray:
    hp = self.hparams
    return rotary.rotary_frequencies(hp.head_dim, hp.head_dim // 2, hp.t_min, hp.t_max)

  def encode(
    self, batch, prompt: jax.Array, *, key: jax.Array | None = None, latent_timestamps=None, token_rows=None
  ) -> jax.Array:
    """Tokens (batch: unit_index, timestamps, token_type, input_mask [B, L]) and prompt [B]
    -> latents [B, N_lat, D]. key: dropout (None = deterministic); latent_timestamps:
    [N_lat] (default self.latent_timestamps()). token_rows [B] int: copy b reads the
    tokens of row token_rows[b] of unit_index, timestamps and token_type [Bt, L] with its
    own input_mask [B, L] (one projection of a trial's tokens serves all its copies)."""
    hp = self.hparams
    keys = [None] * (hp.depth + 1) if key is None else list(jax.random.split(key, hp.depth + 1))
    freqs = self.frequencies()
    dtype = self.latent_emb.embedding.dtype
    tokens = spike_perceiver.embed_tokens(self.unit_emb, self.token_type_emb, batch, dtype)
    b = prompt.shape[0]
    latents = spike_perceiver.latent_grid(self.latent_emb, self.n_latent_steps)[None]  # [1, N, D]
    latents = latents + self.prompt_emb(prompt)[:, None].astype(dtype)  # [B, N, D]
    latent_angles = self.latent_angles(latent_timestamps)  # [1, N, F]
    token_angles = rotary.rotary_angles(batch["timestamps"], freqs)  # [B, L, F]
    latents = jnp.broadcast_to(latents, (b,) + latents.shape[1:])
    latents = self.encoder(
      latents, tokens, latent_angles, token_angles, batch["input_mask"], key=keys[0], context_index=token_rows
    )
    for layer, k in zip(self.processor, keys[1:]):
      latents = layer(latents, latent_angles, key=k)
    return latents

  def decode(
    self, latents, query_unit, query_time, session, prompt, *, key: jax.Array | None = None, latent_timestamps=None
  ) -> jax.Array:
    """latents [B, N_lat, D], query_unit [B, Q] int (unit rows), query_time [B, Q] (s),
    session [B] int, prompt [B] int -> log firing rates [B, Q] float32 (spikes/s)."""
    freqs = self.frequencies()
    dtype = latents.dtype
    units = self.unit_emb(query_unit)
    queries = units + self.query_emb[...]
    queries = (queries + (self.session_emb(session) + self.prompt_emb(prompt))[:, None]).astype(dtype)
    queries = self.decoder(
      queries, latents, rotary.rotary_angles(query_time, freqs), self.latent_angles(latent_timestamps), key=key
    )
    log_rates = self.readout(queries)[..., 0]
    if self.hparams.unit_readout:
      log_rates = log_rates + jnp.sum(self.unit_readout(units.astype(dtype)) * queries, axis=-1)
    return log_rates.astype(jnp.float32)

  def __call__(
    self, batch, query_unit, query_time, prompt, *, key: jax.Array | None = None, latent_timestamps=None
  ) -> jax.Array:
    """batch (see the module docstring), queries [B, Q], prompt [B] -> log rates [B, Q] (spikes/s)."""
    k_enc, k_dec = (None, None) if key is None else tuple(jax.random.split(key))
    latents = self.encode(batch, prompt, key=k_enc, latent_timestamps=latent_timestamps)
    return self.decode(
      latents, query_unit, query_time, batch["session_index"], prompt, key=k_dec, latent_timestamps=latent_timestamps
    )


def count_params(model: PoyoMtM, *, embeddings: bool = True) -> int:
  """Number of parameters; embeddings=False leaves out the unit and session tables."""
  return unit_tables.count_params(model, embeddings=embeddings)


def load(init_params, pretrained_params, *, where: str) -> dict:
  """`init_params` of a model with larger (or equal) unit and session tables, holding the
  pretrained one: its rows in front of the fresh rows (new units and sessions, left fresh)
  and every other parameter from `pretrained_params` (unit_tables.load: POYO's tables)."""
  return unit_tables.load(init_params, pretrained_params, where=where)


def from_config(config: ml_collections.ConfigDict, n_units: int, n_sessions: int, *, rngs: nnx.Rngs) -> PoyoMtM:
  """The model of `config.model` with tables for `n_units` units and `n_sessions` sessions."""
  return PoyoMtM(n_units, n_sessions, Hparams.from_config(config.model), rngs=rngs)
