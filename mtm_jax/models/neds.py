"""NEDS (Neural Encoding and Decoding at Scale; Zhang et al., ICML 2025) in Flax NNX.

One token per time bin per modality (mtm_jax.modalities: spikes, choice, block, wheel,
whisker), K modalities x T bins in one sequence. Per modality m and session s:
- tokeniser: spikes [N] -> Linear(N, mult N) -> softsign -> Linear(mult N, D); a wheel or
  whisker value -> Linear(1, mult) -> softsign -> Linear(mult, D); a choice or block class
  index (as a float) -> Linear(1, mult T), reshaped (T, mult) -> softsign ->
  Linear(mult, D): T tokens;
- embedding dropout on the tokens, then masked tokens are replaced by the learned mask
  token (shared), then m's modality vector, m's position embedding of the bin index and
  m's session embedding are added (each modality owns its own tables, as in NEDS);
- readout (after the shared pre-LayerNorm transformer with rotary attention over the bin
  index, so every modality's token of bin t has position t, and a final LayerNorm):
  spikes Linear(D, N) log-rates per bin; wheel/whisker Linear(D, 1) per bin; choice/block
  a per-session weighting of the T tokens (summed, not normalised; NEDS initialises it
  uniformly in [0, 1)) then Linear(D, classes).
The per-session layers are session_layers.SessionLinear tables padded to the largest
session (spikes padded with zero neurons); the session row picks them. NEDS's code gives
every session's spike tokeniser the largest session's size (Linear(N_max, 2 N_max));
here session s starts as Linear(N_s, mult N_s) inside that padded table, and an imported
checkpoint fills the whole table.

Rotary: NEDS rotates HF-style (dims i and i + E/2 of a head form pair i, frequency
base^(-2i/E)); `rotary.rotate` rotates interleaved pairs (2i, 2i+1). Rotating both q and
k by the same permutation of a head's dims leaves q.k unchanged, so the two are the same
model up to that permutation of the query and key kernels' columns: the importer
(interop/neds.py) permutes them, and the library keeps one rotary layout.

Modalities absent from an example (`present` False) are key-padding-masked: no token
attends to them (NEDS's released code has no absent modalities; BWB's copy masks them).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from mtm_jax import modalities as mods_lib
from mtm_jax.models import attention, loading
from mtm_jax.models.session_layers import SessionLinear
from mtm_jax.parallel import sharding

# Per-session parameters (io/<modality>/<name>/...): rows of per-session tables.
SESSION_PARAMS = ("stitch_in", "stitch_project", "stitch_out", "token_weights", "session")


@dataclasses.dataclass(frozen=True)
class Hparams:
  """NEDS's hyper-parameters; ValueError naming the config.model field of a bad value."""

  width: int = 256  # D
  n_layers: int = 5
  n_heads: int = 8
  mlp_width: int = 512
  max_bins: int = 100  # T: position-table rows, static tokens per trial, static readout weights
  embed_mult: int = 2  # tokenisers' hidden width: mult * N (spikes), mult (behaviour)
  dropout: float = 0.4  # MLP and attention-output dropout
  attention_dropout: float = 0.4  # dropout on attention probabilities
  embed_dropout: float = 0.2  # dropout on the tokenisers' outputs
  fixup_init: bool = True  # T-Fixup initialisation of the blocks (attention.t_fixup)
  rope_base: float = 10000.0
  modalities: tuple = mods_lib.MODALITIES
  n_session_rows: int = 0  # session-embedding rows; 0 = the number of sessions
  layer_norm_eps: float = 1e-5

  def __post_init__(self):
    for field in ("width", "n_layers", "n_heads", "mlp_width", "max_bins", "embed_mult"):
      if int(getattr(self, field)) < 1:
        raise ValueError(f"config.model.{field}: must be >= 1, got {getattr(self, field)}")
    if self.width % self.n_heads or (self.width // self.n_heads) % 2:
      raise ValueError(
        f"config.model.n_heads: width {self.width} / {self.n_heads} heads must be an even head dim (rotary pairs)"
      )
    for field in ("dropout", "attention_dropout", "embed_dropout"):
      if not 0.0 <= getattr(self, field) < 1.0:
        raise ValueError(f"config.model.{field}: must be in [0, 1), got {getattr(self, field)}")
    if self.rope_base <= 1.0:
      raise ValueError(f"config.model.rope_base: must be > 1, got {self.rope_base}")
    if self.n_session_rows < 0:
      raise ValueError(f"config.model.n_session_rows: must be >= 0, got {self.n_session_rows}")
    object.__setattr__(self, "modalities", mods_lib.check_modalities(self.modalities, "config.model.modalities"))

  @classmethod
  def from_config(cls, m: ml_collections.ConfigDict) -> Hparams:
    """config.model: m.size (a row of PRESETS; default "single") then every field of the
    same name present in m."""
    size = m.get("size", "single")
    if size not in PRESETS:
      raise ValueError(f"config.model.size: unknown {size!r}; expected one of {sorted(PRESETS)}")
    names = [f.name for f in dataclasses.fields(cls)]
    fields = {name: m[name] for name in names if name in m}
    if "modalities" in fields:
      fields["modalities"] = tuple(fields["modalities"])
    return dataclasses.replace(PRESETS[size], **fields)


PRESETS = {
  "tiny": Hparams(width=32, n_layers=1, n_heads=2, mlp_width=64),
  "single": Hparams(),  # NEDS's single-session model
  "medium": Hparams(n_layers=16),  # NEDS's 40-session model
  "large": Hparams(n_layers=22),  # NEDS's 79-session model
}


def from_config(config: ml_collections.ConfigDict, session_neurons, *, rngs: nnx.Rngs) -> NEDS:
  """The model of `config.model` for sessions of these neuron counts."""
  return NEDS(session_neurons, Hparams.from_config(config.model), rngs=rngs)


def rope_angles(n_bins: int, head_dim: int, base: float) -> np.ndarray:
  """[T, E/2] float32 angles t * base^(-2i/E) of bins t < T, computed as NEDS does (in
  float32)."""
  e = np.float32(head_dim)
  inv_freq = np.float32(1.0) / np.float32(base) ** (np.arange(0, head_dim, 2, dtype=np.float32) / e)
  return np.arange(n_bins, dtype=np.float32)[:, None] * inv_freq[None, :]


class ModalityIO(nnx.Module):
  """One modality's tokeniser, embeddings and readout (see the module docstring)."""

  def __init__(self, mod: str, sizes, hp: Hparams, n_rows: int, *, rngs: nnx.Rngs):
    n, d, t, mult = len(sizes), hp.width, hp.max_bins, hp.embed_mult
    self.mod = mod
    if mod == mods_lib.SPIKE:
      ins, hidden, tok, outs = sizes, tuple(mult * s for s in sizes), tuple(mult * s for s in sizes), sizes
    elif mod in mods_lib.DYNAMIC:
      ins, hidden, tok, outs = (1,) * n, (mult,) * n, (mult,) * n, (1,) * n
    else:
      ins, hidden, tok, outs = (1,) * n, (mult * t,) * n, (mult,) * n, (mods_lib.CLASSES[mod],) * n
      self.token_weights = nnx.Param(jax.random.uniform(rngs.params(), (n, t), jnp.float32))
    self.stitch_in = SessionLinear(ins, hidden, rngs=rngs)
    self.stitch_project = SessionLinear(tok, (d,) * n, rngs=rngs)
    self.stitch_out = SessionLinear((d,) * n, outs, rngs=rngs)
    self.modality = nnx.Param(jax.random.normal(rngs.params(), (d,), jnp.float32))
    self.position = nnx.Embed(t, d, rngs=rngs)
    self.session = nnx.Embed(n_rows, d, rngs=rngs)

  def tokens(self, x, session, n_bins: int):
    """This modality's inputs (spikes [B, T, N], [B, T] or [B] class) -> [B, T, D]."""
    dtype = self.stitch_in.kernel.dtype
    if self.mod == mods_lib.SPIKE:
      h = self.stitch_in(x.astype(dtype), session)
    elif self.mod in mods_lib.DYNAMIC:
      h = self.stitch_in(x.astype(dtype)[..., None], session)
    else:
      h = self.stitch_in(x.astype(dtype)[:, None], session)  # [B, mult T]
      h = h.reshape(h.shape[0], n_bins, -1)  # [B, T, mult]
    return self.stitch_project(jax.nn.soft_sign(h), session)

  def embeddings(self, session_b, n_bins: int):
    """[B, T, D]: (modality + position of the bin) + session."""
    pos = self.modality[...][None] + self.position(jnp.arange(n_bins))
    return pos[None] + self.session(session_b)[:, None]

  def read_out(self, hidden, session):
    """hidden [B, T, D] of this modality's tokens -> spikes [B, T, N] log-rates, wheel or
    whisker [B, T], choice or block [B, C] logits."""
    if self.mod == mods_lib.SPIKE:
      return self.stitch_out(hidden, session)
    if self.mod in mods_lib.DYNAMIC:
      return self.stitch_out(hidden, session)[..., 0]
    weights = jnp.broadcast_to(self.token_weights[...][session], hidden.shape[:2])  # [B, T]
    return self.stitch_out(jnp.sum(hidden * weights[..., None].astype(hidden.dtype), axis=1), session)


class NEDS(nnx.Module):
  """NEDS; see the module docstring. `NEDS(session_neurons, hparams, rngs=...)`."""

  def __init__(self, session_neurons, hparams: Hparams | None = None, *, rngs: nnx.Rngs):
    hp = hparams if hparams is not None else Hparams()
    sizes = (session_neurons,) if isinstance(session_neurons, int) else tuple(int(s) for s in session_neurons)
    if not sizes or min(sizes) < 1:
      raise ValueError(f"NEDS: session neuron counts must be positive, got {sizes}")
    n_rows = hp.n_session_rows or len(sizes)
    if n_rows < len(sizes):
      raise ValueError(f"config.model.n_session_rows: {n_rows} rows for {len(sizes)} sessions")
    self.hparams, self.session_neurons, self.n_neurons = hp, sizes, max(sizes)
    self.modalities, self.max_bins = hp.modalities, hp.max_bins
    self.io = nnx.Dict({m: ModalityIO(m, sizes, hp, n_rows, rngs=rngs) for m in hp.modalities})
    self.mask_token = nnx.Param(jnp.zeros((hp.width,), jnp.float32))
    self.layers = attention.blocks(hp, hp.width, rngs=rngs)
    self.final_norm = nnx.LayerNorm(hp.width, epsilon=hp.layer_norm_eps, rngs=rngs)

  def _check(self, inputs, masks):
    """(B, T) of the inputs and masks; ValueError on a missing modality or bad shape."""
    for m in self.modalities:
      if m not in inputs or m not in masks:
        raise ValueError(f"NEDS: inputs and masks need modality {m!r} (the model's modalities: {self.modalities})")
    b, t = masks[self.modalities[0]].shape
    for m in self.modalities:
      want = {mods_lib.SPIKE: (b, t, self.n_neurons)}.get(m, (b,) if m in mods_lib.STATIC else (b, t))
      if tuple(inputs[m].shape) != want or tuple(masks[m].shape) != (b, t):
        raise ValueError(
          f"NEDS: modality {m!r}: inputs {tuple(inputs[m].shape)} / masks {tuple(masks[m].shape)}, "
          f"expected {want} / {(b, t)}"
        )
    if t > self.max_bins or (t != self.max_bins and any(m in mods_lib.STATIC for m in self.modalities)):
      raise ValueError(
        f"NEDS: {t} bins; config.model.max_bins is {self.max_bins} (static modalities need exactly max_bins)"
      )
    return b, t

  def encode(self, inputs, masks, *, session, present=None, key: jax.Array | None = None):
    """The final hidden states [B, K T, D], modality by modality (the model's order),
    bin by bin; arguments as __call__."""
    b, t = self._check(inputs, masks)
    session = jnp.asarray(session, jnp.int32)
    session_b = jnp.broadcast_to(session, (b,))
    keys = attention.split_key(key, len(self.modalities) + len(self.layers))
    tokens = []
    for m, k in zip(self.modalities, keys):
      io = self.io[m]
      x = attention.dropout(io.tokens(inputs[m], session, t), self.hparams.embed_dropout, k)
      if present is not None:
        x = jnp.where(present[m][:, None, None], x, jnp.zeros((), x.dtype))  # absent inputs may be anything
      x = jnp.where(masks[m][..., None], self.mask_token[...].astype(x.dtype), x)
      tokens.append(x + io.embeddings(session_b, t).astype(x.dtype))
    x = jnp.concatenate(tokens, axis=1)  # [B, K T, D]
    mask = None
    if present is not None:
      keep = jnp.concatenate([jnp.broadcast_to(present[m][:, None], (b, t)) for m in self.modalities], axis=1)
      mask = keep[:, None, None, :]  # [B, 1, 1, K T]: no token attends to an absent modality
    head_dim = self.hparams.width // self.hparams.n_heads
    angles = jnp.tile(jnp.asarray(rope_angles(t, head_dim, self.hparams.rope_base)), (len(self.modalities), 1))
    for layer, k in zip(self.layers, keys[len(self.modalities) :]):
      x = layer(x, mask, key=k, angles=angles[None])
    return self.final_norm(x)

  def __call__(self, inputs, masks, *, session, present=None, key: jax.Array | None = None):
    """inputs {modality: spikes [B, T, N] counts (padding neurons 0), wheel/whisker
    [B, T] float, choice/block [B] int class}; masks {modality: [B, T] bool} (True =
    replaced by the mask token); session [B] or [] int session row; present {modality:
    [B] bool} or None (all present); key: dropout key (None = deterministic).

    Returns {"spike": [B, T, N] log-rates, wheel/whisker [B, T], choice [B, 2] and block
    [B, 3] logits} for the model's modalities."""
    hidden = self.encode(inputs, masks, session=session, present=present, key=key)
    t = masks[self.modalities[0]].shape[1]
    session = jnp.asarray(session, jnp.int32)
    return {m: self.io[m].read_out(hidden[:, i * t : (i + 1) * t], session) for i, m in enumerate(self.modalities)}


def _is_session_param(name: str) -> bool:
  parts = name.split("/")
  return parts[0] == "io" and len(parts) > 2 and parts[2] in SESSION_PARAMS


def load(init_params, pretrained_params, *, where: str):
  """`init_params` with the pretrained model's parameters merged in.

  Shared parameters (transformer, mask token, each modality's modality vector and
  position table) are taken, and must exist with the same shape (ValueError, prefixed by
  `where`, naming the parameter otherwise). A modality the pretrained model lacks stays
  fresh. Per-session parameters (SESSION_PARAMS): session rows present in both are
  taken (row r of the pretrained table into row r, over the overlapping extent of the
  padded neuron axes); further rows stay fresh. Both are parameter trees of NEDS models
  (nnx.State or pure dicts); the result has the structure of `init_params`."""
  source = {sharding.path_name(p): v for p, v in jax.tree_util.tree_flatten_with_path(pretrained_params)[0]}
  pre_mods = {name.split("/")[1] for name in source if name.startswith("io/")}
  new_mod = lambda name: name.startswith("io/") and name.split("/")[1] not in pre_mods
  merged = loading.merge(
    init_params, pretrained_params, where=where, keep_fresh=lambda n: new_mod(n) or _is_session_param(n)
  )

  def rows(path, value):
    name = sharding.path_name(path)
    if new_mod(name) or not _is_session_param(name):
      return value
    if name not in source or source[name].ndim != value.ndim:
      raise ValueError(f"{where}: has no per-session parameter {name!r} of {value.ndim} dims")
    block = tuple(slice(0, min(a, b)) for a, b in zip(source[name].shape, value.shape))
    return jnp.asarray(value).at[block].set(jnp.asarray(source[name])[block])

  return jax.tree_util.tree_map_with_path(rows, merged)
