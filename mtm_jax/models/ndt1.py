"""NDT1 (Ye & Pandarinath 2021) as used by MtM, in Flax NNX.

Input per bin: spike counts of N neurons -> Linear(N, mult*N) -> softsign ->
Linear(mult*N, D) + learned position embedding. A session token and a prompt token (one
learned row per masking scheme) are prepended, in that order, without position
embeddings; dropout; pre-LayerNorm transformer; final LayerNorm; the special tokens are
dropped and Linear(D, N) gives log-rates per bin.

Multi-session ("NDT1-stitch", `stitch_dim > 0`): each session s has its own input layer
Linear(N_s, stitch_dim) in front of the input embedding (which is then Linear(stitch_dim,
mult * stitch_dim)) and its own output layer Linear(D, N_s) instead of the readout;
everything in between, and the embedding, is shared. The per-session layers are stored as
padded tables indexed by the session row, so one compiled step serves every session:
inputs are padded with zero neurons up to the largest session, and the outputs of padding
neurons are meaningless (masking never makes them targets). `SESSION_PARAMS` names the
per-session parameters; fine-tuning on a new session replaces exactly those (`load`).

Causal mode: bins attend to bins up to their own and to the special tokens. The
reference code also lets the special tokens attend to every bin in causal mode, which
leaks future bins into earlier ones from the second layer on; here the special tokens
see only each other in causal mode unless `special_tokens_see_future=True`.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from mtm_jax import masking
from mtm_jax.models import attention, loading
from mtm_jax.models.session_layers import SessionLinear

# Parameters that belong to sessions (rows of per-session tables); the rest is shared.
SESSION_PARAMS = ("stitch_in", "stitch_out", "session")


@dataclasses.dataclass(frozen=True)
class Hparams:
  """NDT1's hyper-parameters: `NDT1(session_neurons, hparams, rngs=...)`.

  The session neuron counts are not among them: they come from the data. Raises
  ValueError naming the config.model field of an invalid value."""

  width: int  # D
  n_layers: int
  n_heads: int
  mlp_width: int
  stitch_dim: int = 0  # > 0: per-session Linear(N_s, stitch_dim) in and Linear(D, N_s) out
  max_bins: int = 100  # rows of the position embedding
  embed_mult: int = 2  # input embedding Linear(N, mult * N)
  dropout: float = 0.4  # transformer (MLP, attention output) dropout
  attention_dropout: float = 0.4  # dropout on attention probabilities
  embed_dropout: float = 0.2
  use_prompt: bool = True  # prepend the prompt token of the masking scheme
  use_session: bool = True  # prepend the session token
  special_tokens_see_future: bool = False  # True = the reference's causal-mode leak
  layer_norm_eps: float = 1e-5
  remat: bool = False  # recompute each transformer layer's activations in the backward pass
  fixup_init: bool = False  # T-Fixup initialisation of the blocks (`attention.t_fixup`)

  def __post_init__(self):
    dims = (self.width, self.n_layers, self.n_heads, self.mlp_width)
    if min(dims) < 1:
      raise ValueError(f"config.model.size: width, layers, heads and MLP width must be positive, got {dims}")
    for field in ("stitch_dim", "max_bins", "embed_mult"):
      if getattr(self, field) < (0 if field == "stitch_dim" else 1):
        raise ValueError(
          f"config.model.{field}: must be {'>= 0' if field == 'stitch_dim' else '>= 1'}, got {getattr(self, field)}"
        )
    for field in ("dropout", "attention_dropout", "embed_dropout"):
      if not 0.0 <= getattr(self, field) < 1.0:
        raise ValueError(f"config.model.{field}: must be in [0, 1), got {getattr(self, field)}")

  @property
  def size(self) -> str:
    """The preset of these dims, else the explicit "<width>x<layers>x<heads>x<mlp width>"."""
    return size_name(self.width, self.n_layers, self.n_heads, self.mlp_width)

  @classmethod
  def from_config(cls, m: ml_collections.ConfigDict) -> Hparams:
    """The hyper-parameters of `config.model`: the dims of m.size (a preset or explicit
    dims, see `size_dims`), every other field from the field of the same name."""
    names = [f.name for f in dataclasses.fields(cls)][4:]
    return cls(*size_dims(m.size), **{name: m[name] for name in names if name in m})


# Named sizes; the other fields keep their defaults (the configs set them).
PRESETS = {
  "tiny": Hparams(width=32, n_layers=1, n_heads=2, mlp_width=64),
  "mini": Hparams(width=64, n_layers=2, n_heads=4, mlp_width=128),
  "demo": Hparams(width=128, n_layers=2, n_heads=4, mlp_width=256),
  "paper": Hparams(width=512, n_layers=5, n_heads=8, mlp_width=1024),
}


class NDT1(nnx.Module):
  """NDT1 with MtM's prompt and session tokens; see the module docstring."""

  def __init__(self, session_neurons, hparams: Hparams | None = None, *, rngs: nnx.Rngs, **fields):
    """session_neurons: neuron count of each session (an int = one session). Without
    stitching (stitch_dim=0) the model takes exactly one session. hparams: an `Hparams`
    (e.g. a row of PRESETS); `fields` replace some of its fields, or give them all when
    hparams is None (`NDT1(7, width=32, n_layers=1, n_heads=2, mlp_width=64, rngs=...)`)."""
    hp = dataclasses.replace(hparams, **fields) if hparams is not None else Hparams(**fields)
    sizes = (session_neurons,) if isinstance(session_neurons, int) else tuple(int(n) for n in session_neurons)
    if not sizes or min(sizes) < 1:
      raise ValueError(f"NDT1: session neuron counts must be positive, got {sizes}")
    if hp.stitch_dim == 0 and len(sizes) > 1:
      raise ValueError(f"NDT1: {len(sizes)} sessions need per-session stitching layers; set stitch_dim > 0")
    self.hparams = hp  # NDT1(model.session_neurons, model.hparams, rngs=...) rebuilds it
    self.session_neurons, self.n_neurons, self.max_bins = sizes, max(sizes), hp.max_bins
    n_sessions, width, stitch_dim = len(sizes), hp.width, hp.stitch_dim
    self.embed_dropout = hp.embed_dropout
    self.use_prompt, self.use_session = hp.use_prompt, hp.use_session
    self.special_tokens_see_future = hp.special_tokens_see_future
    self.remat = hp.remat
    n_in = stitch_dim or sizes[0]
    self.stitch_in = SessionLinear(sizes, (stitch_dim,) * n_sessions, rngs=rngs) if stitch_dim else None
    self.embed_spikes = nnx.Linear(n_in, hp.embed_mult * n_in, rngs=rngs)
    self.embed_project = nnx.Linear(hp.embed_mult * n_in, width, rngs=rngs)
    self.position = nnx.Embed(hp.max_bins, width, rngs=rngs)
    self.prompt = nnx.Embed(len(masking.SCHEMES), width, rngs=rngs) if hp.use_prompt else None
    self.session = nnx.Embed(n_sessions, width, rngs=rngs) if hp.use_session else None
    self.layers = attention.blocks(hp, width, rngs=rngs)
    self.final_norm = nnx.LayerNorm(width, epsilon=hp.layer_norm_eps, rngs=rngs)
    if stitch_dim:
      self.readout, self.stitch_out = None, SessionLinear((width,) * n_sessions, sizes, rngs=rngs)
    else:
      self.readout, self.stitch_out = nnx.Linear(width, sizes[0], rngs=rngs), None

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
    """spikes [B, T, N] (masked counts; N = the largest session's count, zero-padded)
    -> log-rates [B, T, N].

    prompt: [] int index in masking.SCHEMES; session: [] int session row; causal: []
    bool; key: dropout key (None = deterministic).
    """
    return self.read_out(self.encode(spikes, prompt=prompt, session=session, causal=causal, key=key), session)

  def read_out(self, hidden, session=0):
    """hidden [B, T, D] -> log-rates [B, T, N] through the session's output layer."""
    return self.stitch_out(hidden, session) if self.stitch_out is not None else self.readout(hidden)

  def encode(self, spikes, *, prompt=0, session=0, causal=False, key: jax.Array | None = None):
    """spikes [B, T, N] -> final-LayerNorm features of the bins [B, T, D] (see __call__)."""
    return self.encode_preactivation(
      self.input_preactivation(spikes, session), prompt=prompt, session=session, causal=causal, key=key
    )

  def input_preactivation(self, spikes, session=0):
    """spikes [B, T, N] -> the input embedding before its softsign [B, T, mult * n_in].

    An affine function of the counts (stitch_in and the first embedding Linear), so
    hiding neuron i changes it by -count_i * (row i of the input map); the batched
    evaluation uses this to hide one neuron at a time cheaply."""
    n = spikes.shape[-1]
    if n != self.n_neurons:
      raise ValueError(f"NDT1: input has {n} neurons, the model was built for {self.n_neurons}")
    # The compute dtype is that of the parameters (training.precision casts them).
    first = self.stitch_in if self.stitch_in is not None else self.embed_spikes
    x = spikes.astype(first.kernel.dtype)
    if self.stitch_in is not None:
      x = self.stitch_in(x, session)  # [B, T, stitch_dim]
    return self.embed_spikes(x)

  def encode_preactivation(self, pre, *, prompt=0, session=0, causal=False, key: jax.Array | None = None):
    """pre [B, T, mult * n_in] from `input_preactivation` -> features [B, T, D]."""
    return self.encode_embedded(self.embed_preactivation(pre), prompt=prompt, session=session, causal=causal, key=key)

  def embed_preactivation(self, pre):
    """pre [..., mult * n_in] -> the bins' input embeddings [..., D] (softsign, then the
    projection). Bin by bin: the evaluation re-embeds only the bins that hiding a neuron
    changes (those where it fired)."""
    return self.embed_project(jax.nn.soft_sign(pre))

  def encode_embedded(self, x, *, prompt=0, session=0, causal=False, key: jax.Array | None = None):
    """x [B, T, D] from `embed_preactivation` -> features [B, T, D]: position embeddings,
    the special tokens, the transformer and the final LayerNorm."""
    b, t, _ = x.shape
    if t > self.max_bins:
      raise ValueError(f"NDT1: input has {t} bins, the position embedding holds {self.max_bins}")
    keys = attention.split_key(key, len(self.layers) + 1)
    x = x + self.position(jnp.arange(t))[None].astype(x.dtype)  # [B, T, D] (nnx.Embed returns its init dtype)
    special = []
    if self.use_session:
      special.append(self.session(jnp.reshape(session, (1,)))[0])
    if self.use_prompt:
      special.append(self.prompt(jnp.reshape(prompt, (1,)))[0])
    if special:
      tokens = jnp.broadcast_to(jnp.stack(special)[None], (b, len(special), x.shape[-1]))
      x = jnp.concatenate([tokens.astype(x.dtype), x], axis=1)  # [B, S + T, D]
    x = attention.dropout(x, self.embed_dropout, keys[0])
    mask = self.attention_mask(t, causal)
    apply = _apply_layer_remat if self.remat else _apply_layer
    for layer, k in zip(self.layers, keys[1:]):
      x = apply(layer, x, mask, k)
    return self.final_norm(x)[:, self.n_special :]

  def read_out_neurons(self, hidden, neurons, session=0):
    """hidden [B, T, D], neurons [B] int -> [B, T] log-rates of neuron neurons[b] only
    (the column of the output layer, not all N)."""
    if self.stitch_out is not None:
      kernel, bias = self.stitch_out.kernel[session], self.stitch_out.bias[session]
    else:
      kernel, bias = self.readout.kernel[...], self.readout.bias[...]
    return jnp.einsum("btd,db->bt", hidden, kernel[:, neurons]) + bias[neurons][:, None]


def _apply_layer(layer, x, mask, key):
  return layer(x, mask, key=key)


_apply_layer_remat = nnx.remat(_apply_layer)


def size_dims(size: str) -> tuple[int, int, int, int]:
  """(width, n_layers, n_heads, mlp_width) of `size`: a row of PRESETS, or explicit dims
  "<width>x<layers>x<heads>x<mlp width>" (e.g. "256x4x8x512", see `size_name`)."""
  if size in PRESETS:
    p = PRESETS[size]
    return p.width, p.n_layers, p.n_heads, p.mlp_width
  match = re.fullmatch(r"(\d+)x(\d+)x(\d+)x(\d+)", str(size))
  if match is None:
    raise ValueError(
      f"config.model.size: unknown {size!r}; expected one of {sorted(PRESETS)} or "
      "'<width>x<layers>x<heads>x<mlp width>'"
    )
  return tuple(int(g) for g in match.groups())


def size_name(width: int, n_layers: int, n_heads: int, mlp_width: int) -> str:
  """The row of PRESETS with these dims, else the explicit size that `size_dims` reads."""
  dims = (width, n_layers, n_heads, mlp_width)
  return next((name for name in PRESETS if size_dims(name) == dims), "x".join(str(d) for d in dims))


def from_config(config: ml_collections.ConfigDict, session_neurons, *, rngs: nnx.Rngs) -> NDT1:
  """The model of `config.model` for sessions of these neuron counts (an int = one)."""
  return NDT1(session_neurons, Hparams.from_config(config.model), rngs=rngs)


def load(init_params, pretrained_params, *, where: str):
  """`init_params` with every shared parameter (all but SESSION_PARAMS) taken from
  `pretrained_params`; the per-session layers of `init_params` stay as they are (fresh).

  Both are parameter trees of an NDT1 (`nnx.state(model, nnx.Param)` or their pure
  dicts); the result has the structure of `init_params`. Raises ValueError, prefixed by
  `where` (e.g. "pretrained model <workdir>"), naming the parameter when the pretrained one
  is missing or has another shape (a different architecture)."""
  return loading.merge(
    init_params, pretrained_params, where=where, keep_fresh=lambda name: name.split("/")[0] in SESSION_PARAMS
  )
