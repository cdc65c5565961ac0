"""POYO (Azabou et al. 2023): a PerceiverIO over spike tokens, in Flax NNX.

Tokens. Every spike is one token, unit_embedding[unit] + token_type_embedding[type]
(spike 0; each unit present also has a start token (1) at t=0 and an end token (2) at
t=window). Time enters only through rotary embeddings (`rotary.py`).

Latents. `latents_per_step` learned vectors repeat at every `latent_step` (125 ms) of the
window, at the step centres: latent s * latents_per_step + p is vector p at time
(s + 1/2) * latent_step.

Queries. session_embedding[session] (+ task_embedding[task] when there are several
tasks) at every output timestamp.

Network (pre-LayerNorm, see `perceiver.py`):
  latents += CrossAttn(LN(latents), LN(tokens), key-padding mask); latents += FFN(LN(.))
  depth x: latents += drop(SelfAttn(LN(latents))); latents += drop(FFN(LN(latents)))
  queries += CrossAttn(LN(queries), LN(latents)); queries += FFN(LN(queries))
  one Linear readout per task.
The encoder and the latent self-attention rotate values by key time and outputs back by
query time; the decoder does not. The input mask is used only in the encoder.

Batch (a dict; B windows, L tokens, Q output queries):
  unit_index        [B, L] int    row of the unit table (0 = padding)
  timestamps        [B, L] float  seconds from the window start
  token_type        [B, L] int    SPIKE, START or END (mtm_jax.datasets.events.tokens)
  input_mask        [B, L] bool   True = real token
  session_index     [B] int       row of the session table (0 = padding)
  output_timestamps [B, Q] float  seconds from the window start
  output_task       [B, Q] int    index of the query's task in `task_ids(tasks)`
  output_mask       [B, Q] bool   True = real query
The output is {task name: [B, Q, task dim]}, zero wherever the query is padding or
belongs to another task.

Embedding tables (`embedding_paths()`, models/unit_tables.py): row 0 of the unit and
session tables is padding (zero); rows are appended for new units and sessions with
`grow_vocab`, and `load` puts a pretrained model's rows in front of a larger fresh model's.

Parameters are initialised with Flax defaults (LeCun-normal kernels, zero biases) except
embeddings, N(0, emb_init_scale); the reference uses PyTorch's defaults for Linear.

The tables, blocks, tokens and latents shared with spike-token MtM are built by
spike_perceiver.py; the blocks live in perceiver.py and rotary.py, the token schema in
datasets/events/tokens.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from mtm_jax.datasets.events import tokens as tokens_lib
from mtm_jax.models import attention, rotary, spike_perceiver, unit_tables


@dataclasses.dataclass(frozen=True)
class Hparams:
  """POYO's hyper-parameters: `POYO(n_units, n_sessions, hparams, rngs=...)`.

  The table sizes (units, sessions) are not among them: they come from the data. tasks
  (a mapping task name -> output dim) is kept as ((name, dim), ...) in task-id order.
  Raises ValueError naming the config.model field of an invalid value."""

  dim: int  # D
  depth: int  # latent self-attention layers
  cross_heads: int
  self_heads: int
  latents_per_step: int
  tasks: tuple[tuple[str, int], ...] = (("hand_velocity", 2),)
  head_dim: int = 64  # attention head width (the first half is rotated)
  window_length: float = 1.0  # seconds covered by the latents
  latent_step: float = 0.125  # seconds between latent groups
  ffn_dropout: float = 0.2
  lin_dropout: float = 0.4  # residual dropout of the latent self-attention layers
  attn_dropout: float = 0.2
  emb_init_scale: float = 0.02  # std of the embedding initialisation
  t_min: float = rotary.T_MIN  # shortest rotary period (s)
  t_max: float = rotary.T_MAX  # longest rotary period (s)
  layer_norm_eps: float = 1e-5
  remat: bool = False  # recompute the latent layers' activations in the backward pass
  # Explicit angular frequencies [head_dim // 4] (rad/s) instead of those computed from
  # t_min and t_max, e.g. the float32 values of an imported checkpoint; () = computed.
  rotary_frequencies: tuple[float, ...] = ()

  def __post_init__(self):
    tasks = dict(self.tasks)
    if not tasks or any(int(d) < 1 for d in tasks.values()):
      raise ValueError(f"config.model.tasks: expected task name -> output dim >= 1, got {tasks}")
    object.__setattr__(self, "tasks", tuple((name, int(tasks[name])) for name in sorted(tasks)))
    object.__setattr__(self, "rotary_frequencies", tuple(float(f) for f in self.rotary_frequencies))
    spike_perceiver.check_perceiver(self, self.window_length, "window_length")
    if self.rotary_frequencies and len(self.rotary_frequencies) != self.head_dim // 4:
      raise ValueError(
        f"config.model.rotary_frequencies: must hold head_dim // 4 = {self.head_dim // 4} values, "
        f"got {len(self.rotary_frequencies)}"
      )

  @classmethod
  def from_config(cls, m: ml_collections.ConfigDict) -> Hparams:
    """The hyper-parameters of `config.model`: the sizes of the preset m.size, every
    other field from the field of the same name."""
    if m.size not in PRESETS:
      raise ValueError(f"config.model.size: unknown {m.size!r}; expected one of {sorted(PRESETS)}")
    fields = {f.name: m[f.name] for f in dataclasses.fields(cls) if f.name in m}
    return dataclasses.replace(PRESETS[m.size], **fields)


# Named sizes; the other fields keep their defaults (the configs set them).
PRESETS = {
  "tiny": Hparams(dim=32, depth=1, cross_heads=1, self_heads=2, latents_per_step=2),
  "compact": Hparams(dim=32, depth=1, cross_heads=2, self_heads=2, latents_per_step=4),  # POYO study (small)
  "small": Hparams(dim=64, depth=6, cross_heads=2, self_heads=8, latents_per_step=16),  # 1.3M
  "large": Hparams(dim=128, depth=24, cross_heads=4, self_heads=8, latents_per_step=32),  # 11.8M (POYO-1)
}


def task_ids(tasks: Mapping[str, int]) -> dict[str, int]:
  """{task name: index used in `output_task`}: tasks in sorted name order."""
  return {name: i for i, name in enumerate(sorted(tasks))}


def embedding_paths() -> dict[str, tuple[str, ...]]:
  """Parameter paths (in `nnx.state(model)` / its pure dict) of the growable tables (unit_tables)."""
  return unit_tables.embedding_paths()


def embedding_filter():
  """An nnx filter selecting the unit and session tables (e.g. to train only them)."""
  return unit_tables.embedding_filter()


class POYO(nnx.Module):
  """POYO PerceiverIO decoder of behaviour from spike tokens; see the module docstring."""

  def __init__(self, n_units: int, n_sessions: int, hparams: Hparams | None = None, *, rngs: nnx.Rngs, **fields):
    """n_units, n_sessions: rows of the unit and session tables besides the padding row.
    hparams: an `Hparams` (e.g. a row of PRESETS); `fields` replace some of its fields, or
    give them all when hparams is None."""
    hp = dataclasses.replace(hparams, **fields) if hparams is not None else Hparams(**fields)
    if n_units < 1 or n_sessions < 1:
      raise ValueError(f"POYO: n_units and n_sessions must be >= 1, got {n_units} and {n_sessions}")
    rotary.rotary_frequencies(hp.head_dim, hp.head_dim // 2, hp.t_min, hp.t_max)  # validates
    self.hparams = hp
    self.n_units, self.n_sessions = n_units, n_sessions
    self.tasks = hp.tasks  # (name, dim), in task-id order
    self.dim, self.depth, self.head_dim = hp.dim, hp.depth, hp.head_dim
    self.cross_heads, self.self_heads, self.latents_per_step = hp.cross_heads, hp.self_heads, hp.latents_per_step
    self.window_length, self.latent_step = float(hp.window_length), float(hp.latent_step)
    self.ffn_dropout, self.lin_dropout, self.attn_dropout = hp.ffn_dropout, hp.lin_dropout, hp.attn_dropout
    self.emb_init_scale, self.t_min, self.t_max = hp.emb_init_scale, hp.t_min, hp.t_max
    self.layer_norm_eps = hp.layer_norm_eps
    self.remat = hp.remat  # recompute the latent layers' activations in the backward pass
    self.rotary_frequencies = hp.rotary_frequencies
    self.unit_emb, self.session_emb, self.token_type_emb, self.latent_emb = spike_perceiver.tables(
      n_units, n_sessions, hp, rngs=rngs
    )
    init = nnx.initializers.normal(hp.emb_init_scale)
    self.task_emb = nnx.Embed(len(self.tasks), hp.dim, embedding_init=init, rngs=rngs) if len(self.tasks) > 1 else None
    self.encoder, self.processor, self.decoder = spike_perceiver.blocks(hp, rngs=rngs)
    self.readout = nnx.Dict({name: nnx.Linear(hp.dim, d, rngs=rngs) for name, d in self.tasks})

  @property
  def n_latent_steps(self) -> int:
    return spike_perceiver.n_latent_steps(self.window_length, self.latent_step)

  def latent_timestamps(self, offset: float = 0.0) -> np.ndarray:
    """[n_latent_steps * latents_per_step] float32: step centres, each repeated per latent."""
    return spike_perceiver.latent_timestamps(self.window_length, self.latent_step, self.latents_per_step, offset)

  def frequencies(self) -> np.ndarray:
    """Rotary angular frequencies [head_dim // 4]."""
    if self.rotary_frequencies:
      return np.asarray(self.rotary_frequencies, np.float32)
    return rotary.rotary_frequencies(self.head_dim, self.head_dim // 2, self.t_min, self.t_max)

  def check_batch(self, batch: Mapping[str, jax.Array]) -> None:
    """Raises ValueError naming the first missing or mis-shaped batch entry."""
    missing = [k for k in tokens_lib.MODEL_KEYS if k not in batch]
    if missing:
      raise ValueError(f"POYO batch: missing {missing}; expected keys {list(tokens_lib.MODEL_KEYS)}")
    b, l = np.shape(batch["unit_index"])[:2] if np.ndim(batch["unit_index"]) == 2 else (None, None)
    if b is None:
      raise ValueError(f"POYO batch: unit_index must be [B, L], got shape {np.shape(batch['unit_index'])}")
    q_shape = np.shape(batch["output_timestamps"])
    if len(q_shape) != 2 or q_shape[0] != b:
      raise ValueError(f"POYO batch: output_timestamps must be [B={b}, Q], got shape {q_shape}")
    expected = {
      **{k: (b, l) for k in tokens_lib.INPUT_KEYS},
      "session_index": (b,),
      **{k: q_shape for k in tokens_lib.QUERY_KEYS},
    }
    for k, shape in expected.items():
      if tuple(np.shape(batch[k])) != tuple(shape):
        raise ValueError(f"POYO batch: {k} must have shape {tuple(shape)}, got {tuple(np.shape(batch[k]))}")
    for k in ("unit_index", "token_type", "session_index", "output_task"):
      if not jnp.issubdtype(jnp.result_type(batch[k]), jnp.integer):
        raise ValueError(f"POYO batch: {k} must be integer, got {jnp.result_type(batch[k])}")
    for k in ("input_mask", "output_mask"):
      if jnp.result_type(batch[k]) != jnp.bool_:
        raise ValueError(f"POYO batch: {k} must be bool (True = real), got {jnp.result_type(batch[k])}")

  def _check_angles(self, batch: Mapping[str, jax.Array], angles: Mapping[str, jax.Array], n_latents: int) -> None:
    """Raises ValueError naming the first rotary angle array of the wrong shape."""
    b, l = np.shape(batch["unit_index"])
    f = self.head_dim // 4
    expected = {
      "tokens": [(b, l, f)],
      "latents": [(b, n_latents, f), (1, n_latents, f)],
      "queries": [tuple(np.shape(batch["output_timestamps"])) + (f,)],
    }
    for name, shapes in expected.items():
      if name not in angles or tuple(np.shape(angles[name])) not in shapes:
        got = tuple(np.shape(angles[name])) if name in angles else "missing"
        raise ValueError(f"POYO: angles[{name!r}] must have shape {' or '.join(map(str, shapes))}, got {got}")

  def __call__(
    self,
    batch: Mapping[str, jax.Array],
    *,
    key: jax.Array | None = None,
    latent_timestamps=None,
    angles: Mapping[str, jax.Array] | None = None,
  ) -> dict[str, jax.Array]:
    """batch (see the module docstring) -> {task name: [B, Q, task dim]}.

    key: dropout key (None = deterministic). latent_timestamps: [N_lat] or [B, N_lat]
    times of the latents (default `self.latent_timestamps()`); N_lat must be
    n_latent_steps * latents_per_step. angles: the rotary angles {"tokens": [B, L, F],
    "latents": [B|1, N_lat, F], "queries": [B, Q, F]} computed by the caller (e.g.
    `rotary.host_angles` of float64 timestamps, as torch_brain's pipeline has them); None
    = float32 angles of the batch's timestamps and of latent_timestamps.
    """
    self.check_batch(batch)
    if latent_timestamps is None:
      latent_timestamps = self.latent_timestamps()
    n_latents = self.n_latent_steps * self.latents_per_step
    if np.ndim(latent_timestamps) not in (1, 2) or np.shape(latent_timestamps)[-1] != n_latents:
      raise ValueError(
        f"POYO: latent_timestamps must be [{n_latents}] or [B, {n_latents}], got shape {np.shape(latent_timestamps)}"
      )
    keys = attention.split_key(key, self.depth + 2)
    freqs = self.frequencies()
    b = np.shape(batch["unit_index"])[0]
    if angles is None:
      angles = {
        "tokens": rotary.rotary_angles(batch["timestamps"], freqs),  # [B, L, F]
        "latents": rotary.rotary_angles(jnp.atleast_2d(latent_timestamps), freqs),  # [B|1, N, F]
        "queries": rotary.rotary_angles(batch["output_timestamps"], freqs),
      }  # [B, Q, F]
    self._check_angles(batch, angles, n_latents)

    # The compute dtype is that of the parameters (training.precision casts them); nnx.Embed
    # returns its init dtype, so the looked-up rows are cast to it.
    dtype = self.latent_emb.embedding.dtype

    # Input tokens [B, L, D].
    tokens = spike_perceiver.embed_tokens(self.unit_emb, self.token_type_emb, batch, dtype)

    # Latents [B, N, D], N = steps * latents_per_step.
    latents = spike_perceiver.latent_grid(self.latent_emb, self.n_latent_steps)  # [N, D]
    latents = jnp.broadcast_to(latents[None], (b,) + latents.shape)

    # Output queries [B, Q, D].
    n_queries = np.shape(batch["output_timestamps"])[1]
    queries = jnp.broadcast_to(
      self.session_emb(batch["session_index"])[:, None].astype(dtype), (b, n_queries, self.dim)
    )
    if self.task_emb is not None:
      queries = queries + self.task_emb(batch["output_task"]).astype(dtype)

    latents = self.encoder(latents, tokens, angles["latents"], angles["tokens"], batch["input_mask"], key=keys[0])
    apply = _apply_latent_layer_remat if self.remat else _apply_latent_layer
    for layer, k in zip(self.processor, keys[1:-1]):
      latents = apply(layer, latents, angles["latents"], k)
    queries = self.decoder(queries, latents, angles["queries"], angles["latents"], key=keys[-1])

    outputs = {}
    for i, (name, _) in enumerate(self.tasks):
      keep = (batch["output_mask"] & (batch["output_task"] == i))[..., None]  # [B, Q, 1]
      out = self.readout[name](queries)
      outputs[name] = jnp.where(keep, out, jnp.zeros((), out.dtype))
    return outputs


def _apply_latent_layer(layer, latents, angles, key):
  return layer(latents, angles, key=key)


_apply_latent_layer_remat = nnx.remat(_apply_latent_layer)


def count_params(model: POYO, *, embeddings: bool = True) -> int:
  """Number of parameters; embeddings=False leaves out the unit and session tables."""
  return unit_tables.count_params(model, embeddings=embeddings)


def grow_vocab(model_or_params, n_new_units: int, n_new_sessions: int, key: jax.Array, *, init_scale: float = 0.02):
  """Appends fresh rows, N(0, init_scale), to the unit and session tables (unit_tables.grow).

  model_or_params: a POYO (returns a new POYO; the argument is not modified) or the pure
  dict of its parameters, e.g. `nnx.to_pure_dict(nnx.state(model))` or a restored
  checkpoint (returns a new pure dict; untouched entries are shared). Old rows keep
  their values and indices: new units are rows n_units + 1 ... n_units + n_new_units,
  new sessions likewise. To train only the tables (unit identification) use
  `embedding_filter()`; to train only the new rows, mask the gradient rows below
  the old sizes. `load` does the same into a fresh model's parameters (its new rows).
  """
  if not isinstance(model_or_params, (POYO, Mapping)):
    raise TypeError(f"grow_vocab: expected a POYO or a pure dict of its parameters, got {type(model_or_params)}")
  return unit_tables.grow(model_or_params, n_new_units, n_new_sessions, key, init_scale=init_scale, where="grow_vocab")


def load(init_params, pretrained_params, *, where: str, key: jax.Array | None = None, init_scale: float = 0.02) -> dict:
  """`init_params` of a POYO with larger (or equal) unit and session tables, holding the
  pretrained model: its table rows in front of the fresh tables' remaining rows and every
  other parameter from `pretrained_params` (unit_tables.load, which says how it fails).
  With `key` the new rows are drawn N(0, init_scale) from it, as `grow_vocab` draws them:
  POYO's fine-tuning (tasks/poyo.py) gives its new units and sessions these rows."""
  return unit_tables.load(init_params, pretrained_params, where=where, key=key, init_scale=init_scale)


def from_config(config: ml_collections.ConfigDict, n_units: int, n_sessions: int, *, rngs: nnx.Rngs) -> POYO:
  """The model of `config.model` with tables for `n_units` units and `n_sessions` sessions."""
  return POYO(n_units, n_sessions, Hparams.from_config(config.model), rngs=rngs)
