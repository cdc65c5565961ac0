"""The MtM authors' NDT1 / NDT1-stitch (PyTorch, IBL_foundation_model) <-> mtm_jax's NDT1.

Their parameter names (see parity/reference_ndt1.py) and ours:

| theirs                                          | ours                                   |
|-------------------------------------------------|----------------------------------------|
| encoder.stitcher.stitcher_dict.<N>              | stitch_in[s] of every session s with N neurons |
| encoder.embedder.embed_spikes / projection      | embed_spikes / embed_project           |
| encoder.embedder.embed_pos / embed_prompt       | position / prompt                      |
| encoder.embedder.embed_session (rows by eid)    | session (rows by our session order)    |
| encoder.layers.<i>.ln1, attn.{query,key,value,out_proj}, ln2, mlp.{up_proj,down_proj} | layers/<i>/norm_attn, attn/{query,key,value,out}, norm_mlp, mlp/{up,down} |
| encoder.out_norm                                | final_norm                             |
| decoder.0 (single session)                      | readout                                |
| stitch_decoder.stitch_decoder_dict.<N>          | stitch_out[s] of every session s with N neurons |

Their per-session layers are keyed by neuron count (sessions with equal counts share
them) and their session table by the position of the session's eid in their list of
eids; ours are rows in the order of the model's sessions, so a conversion takes each
session's neuron count and its row in their session table. With stitching their
`decoder.0` (Linear(hidden, n_channels)) is never used; it is not converted.

The architecture is read from the state dict (layers from the indices of encoder.layers.<i>,
widths from the weights' shapes), so any size converts: a row of `ndt1.PRESETS` when one has
those dims, else the explicit size "<width>x<layers>x<heads>x<mlp width>". The state dict
does not hold the number of attention heads: it comes from the exported module
(`meta["attributes"]["n_heads"]`) or from the caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import ml_collections
import numpy as np
from flax import nnx

from mtm_jax import masking
from mtm_jax.configs import ndt1 as ndt1_config
from mtm_jax.interop import state_dict as sd
from mtm_jax.models import ndt1

EMBED = "encoder.embedder"
STITCH_IN = "encoder.stitcher.stitcher_dict"
STITCH_OUT = "stitch_decoder.stitch_decoder_dict"


def _layer_count(ckpt: sd.TorchCheckpoint) -> int:
  """Number of encoder layers: the indices i of encoder.layers.<i>.*, which must be 0..n-1."""
  indices = sorted({int(n.split(".")[2]) for n in ckpt.names("encoder.layers.") if n.split(".")[2].isdigit()})
  if not indices:
    raise ValueError(f"{ckpt.path}: no encoder.layers.<i>.*; not an NDT1 state dict")
  if indices != list(range(len(indices))):
    raise ValueError(f"{ckpt.path}: encoder layers {indices} are not numbered 0..{len(indices) - 1}")
  return len(indices)


def _heads(ckpt: sd.TorchCheckpoint, n_heads: int | None, width: int) -> int:
  """Attention heads: the pickled module's (meta attributes, see parity/export_torch.py), or
  `n_heads`; an error if neither tells or they disagree, or width is not a multiple."""
  pickled = ckpt.meta.get("attributes", {}).get("n_heads")
  if pickled is not None and n_heads is not None and int(pickled) != int(n_heads):
    raise ValueError(f"{ckpt.path}: the pickled module has {pickled} attention heads, but {n_heads} were given")
  heads = pickled if pickled is not None else n_heads
  if heads is None:
    raise ValueError(
      f"{ckpt.path}: the number of attention heads is not in the checkpoint (a state dict does not "
      "hold it; a pickled module does); give it (--n_heads)"
    )
  if int(heads) < 1 or width % int(heads):
    raise ValueError(f"{ckpt.path}: width {width} is not a multiple of {heads} attention heads")
  return int(heads)


def architecture(ckpt: sd.TorchCheckpoint, n_heads: int | None = None) -> dict:
  """The model facts of a checkpoint, read from its state dict: size (`ndt1.size_name` of
  width, layers, heads, MLP width), stitch_dim, embed_mult, max_bins, use_prompt,
  use_session, n_session_rows and the neuron counts of the stitchers. Heads come from the
  pickled module (meta attributes) or `n_heads`."""
  width, n_embed = ckpt.get(f"{EMBED}.projection.weight").shape
  embed_out, n_in = ckpt.get(f"{EMBED}.embed_spikes.weight").shape
  n_layers = _layer_count(ckpt)
  mlp_width = ckpt.get("encoder.layers.0.mlp.up_proj.weight").shape[0]
  if embed_out % n_in or n_embed != embed_out:
    raise ValueError(
      f"{ckpt.path}: embed_spikes {embed_out}x{n_in} and projection input {n_embed} are not "
      "Linear(n, mult * n) -> Linear(mult * n, hidden)"
    )
  size = ndt1.size_name(int(width), n_layers, _heads(ckpt, n_heads, int(width)), int(mlp_width))
  stitched = sorted(int(n.split(".")[3]) for n in ckpt.names(STITCH_IN) if n.endswith(".weight"))
  session = f"{EMBED}.embed_session.weight"
  return dict(
    size=size,
    stitch_dim=n_in if stitched else 0,
    embed_mult=embed_out // n_in,
    max_bins=ckpt.get(f"{EMBED}.embed_pos.weight").shape[0],
    use_prompt=f"{EMBED}.embed_prompt.weight" in ckpt,
    use_session=session in ckpt,
    n_session_rows=ckpt.get(session).shape[0] if session in ckpt else 0,
    stitched_neurons=stitched,
    n_neurons=n_in if not stitched else None,
  )


def model_config(arch: Mapping, base: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
  """An NDT1 config (paper preset, or `base`) whose model is the checkpoint's architecture,
  with the reference's choices where ours differ (special tokens see every bin in causal
  mode, T-Fixup init). Masking: MtM with prompts, the temporal baseline without."""
  c = ml_collections.ConfigDict((base if base is not None else ndt1_config.get_config("paper")).to_dict())
  m = c.model
  m.size, m.stitch_dim, m.embed_mult, m.max_bins = (
    arch["size"],
    arch["stitch_dim"],
    arch["embed_mult"],
    arch["max_bins"],
  )
  m.use_prompt, m.use_session = arch["use_prompt"], arch["use_session"]
  m.special_tokens_see_future = True
  m.fixup_init = True
  m.layer_norm_eps = 1e-5
  if not m.use_prompt:
    c.masking.mode = masking.TEMPORAL
  elif c.masking.mode == masking.TEMPORAL:
    c.masking.mode = masking.MTM
  return c


def _shared_entries(n_layers: int, use_prompt: bool, stitched: bool) -> list[sd.Entry]:
  entries = (
    sd.linear(f"{EMBED}.embed_spikes", ("embed_spikes",))
    + sd.linear(f"{EMBED}.projection", ("embed_project",))
    + sd.embedding(f"{EMBED}.embed_pos", ("position",))
    + sd.layer_norm("encoder.out_norm", ("final_norm",))
  )
  if use_prompt:
    entries += sd.embedding(f"{EMBED}.embed_prompt", ("prompt",))
  if not stitched:
    entries += sd.linear("decoder.0", ("readout",))
  for i in range(n_layers):
    theirs, ours = f"encoder.layers.{i}", ("layers", i)
    entries += sd.layer_norm(f"{theirs}.ln1", ours + ("norm_attn",)) + sd.layer_norm(
      f"{theirs}.ln2", ours + ("norm_mlp",)
    )
    for t, o in (("query", "query"), ("key", "key"), ("value", "value"), ("out_proj", "out")):
      entries += sd.linear(f"{theirs}.attn.{t}", ours + ("attn", o))
    entries += sd.linear(f"{theirs}.mlp.up_proj", ours + ("mlp", "up"))
    entries += sd.linear(f"{theirs}.mlp.down_proj", ours + ("mlp", "down"))
  return entries


def _check_sessions(session_neurons: Sequence[int], session_rows: Sequence[int] | None, n_rows: int, where: str):
  if session_rows is None:
    return
  if len(session_rows) != len(session_neurons):
    raise ValueError(f"{where}: {len(session_rows)} session rows for {len(session_neurons)} sessions")
  bad = [r for r in session_rows if not 0 <= r < n_rows]
  if bad:
    raise ValueError(f"{where}: session rows {bad} are outside the reference's session table of {n_rows} rows")


def from_torch(
  ckpt: sd.TorchCheckpoint, target: Mapping, session_neurons: Sequence[int], session_rows: Sequence[int] | None = None
) -> tuple[dict, list[str]]:
  """Our pure parameter dict (shapes of `target`, the pure dict of the model built from
  `model_config(architecture(ckpt))`) and the checkpoint's unused tensor names.

  session_neurons: neuron count of each of our sessions, in row order; session_rows: each
  session's row in their session table (needed when it has a session token)."""
  n_layers = len(target["layers"])
  stitched = "stitch_in" in target
  use_session = "session" in target
  if not stitched and list(session_neurons) != [ckpt.get("decoder.0.weight").shape[0]]:
    raise ValueError(
      f"{ckpt.path}: a single-session model of {ckpt.get('decoder.0.weight').shape[0]} neurons, "
      f"but the sessions have {list(session_neurons)} neurons"
    )
  entries = _shared_entries(n_layers, "prompt" in target, stitched)
  params = sd.from_torch(ckpt, entries, target)
  used = {e.torch for e in entries}
  if use_session:
    table = ckpt.get(f"{EMBED}.embed_session.weight")
    if session_rows is None:
      raise ValueError(f"{ckpt.path}: has a session table of {table.shape[0]} rows; give each session's row")
    _check_sessions(session_neurons, session_rows, table.shape[0], ckpt.path)
    params["session"] = {"embedding": np.asarray(table[list(session_rows)], np.float32)}
    used.add(f"{EMBED}.embed_session.weight")
  if stitched:
    for ours, theirs, transpose_in in (("stitch_in", STITCH_IN, True), ("stitch_out", STITCH_OUT, False)):
      kernel = np.zeros(np.shape(target[ours]["kernel"]), np.float32)
      bias = np.zeros(np.shape(target[ours]["bias"]), np.float32)
      for s, n in enumerate(session_neurons):
        name = f"{theirs}.{n}"
        if f"{name}.weight" not in ckpt:
          raise ValueError(
            f"{ckpt.path}: has no {name}.* for a session of {n} neurons; its per-session layers "
            f"are for {architecture_neurons(ckpt)} neurons"
          )
        w, b = ckpt.get(f"{name}.weight").T, ckpt.get(f"{name}.bias")  # [in, out], [out]
        if transpose_in:  # stitch_in: [N, stitch_dim]
          kernel[s, :n, :], bias[s, :] = w, b
        else:  # stitch_out: [D, N]
          kernel[s, :, :n], bias[s, :n] = w, b
        used.update({f"{name}.weight", f"{name}.bias"})
      params[ours] = {"kernel": kernel, "bias": bias}
  missing = [k for k in target if k not in params]
  if missing:
    raise ValueError(f"{ckpt.path}: the conversion left {missing} unset; the architecture differs from the config")
  return params, sd.unused(ckpt, used)


def architecture_neurons(ckpt: sd.TorchCheckpoint) -> list[int]:
  return sorted({int(n.split(".")[3]) for n in ckpt.names(STITCH_IN)})


def to_torch(
  params: Mapping,
  session_neurons: Sequence[int],
  session_rows: Sequence[int] | None = None,
  n_session_rows: int | None = None,
  n_heads: int | None = None,
) -> sd.TorchCheckpoint:
  """The authors' state dict of our parameters (the inverse of `from_torch`).

  Sessions with the same neuron count must have equal per-session layers (theirs are
  shared by neuron count). Rows of their session table that no session maps to are zero."""
  n_layers = len(params["layers"])
  stitched = "stitch_in" in params
  arrays = sd.to_torch(params, _shared_entries(n_layers, "prompt" in params, stitched))
  if "session" in params:
    table = np.asarray(params["session"]["embedding"])
    rows = list(range(len(session_neurons))) if session_rows is None else list(session_rows)
    n_rows = n_session_rows or (max(rows) + 1)
    _check_sessions(session_neurons, rows, n_rows, "to_torch")
    full = np.zeros((n_rows, table.shape[1]), np.float32)
    full[rows] = table[: len(rows)]
    arrays[f"{EMBED}.embed_session.weight"] = full
  if stitched:
    for ours, theirs, is_in in (("stitch_in", STITCH_IN, True), ("stitch_out", STITCH_OUT, False)):
      kernel, bias = np.asarray(params[ours]["kernel"]), np.asarray(params[ours]["bias"])
      for s, n in enumerate(session_neurons):
        w = kernel[s, :n, :] if is_in else kernel[s, :, :n]
        b = bias[s] if is_in else bias[s, :n]
        name = f"{theirs}.{n}"
        if f"{name}.weight" in arrays:
          if not (np.array_equal(arrays[f"{name}.weight"], w.T) and np.array_equal(arrays[f"{name}.bias"], b)):
            raise ValueError(
              f"to_torch: sessions with {n} neurons have different {ours} layers; the reference "
              "keys its per-session layers by neuron count and cannot hold both"
            )
          continue
        arrays[f"{name}.weight"], arrays[f"{name}.bias"] = np.ascontiguousarray(w.T), np.asarray(b)
    width = np.shape(params["embed_project"]["kernel"])[1]
    stitch_dim = np.shape(params["embed_spikes"]["kernel"])[0]
    arrays["decoder.0.weight"] = np.zeros((stitch_dim, width), np.float32)  # unused by the reference
    arrays["decoder.0.bias"] = np.zeros((stitch_dim,), np.float32)
  meta = {"source": "mtm_jax", "attributes": {"n_heads": n_heads} if n_heads else {}}
  return sd.TorchCheckpoint({k: np.asarray(v, np.float32) for k, v in arrays.items()}, meta)


def convert(
  ckpt: sd.TorchCheckpoint,
  config: ml_collections.ConfigDict,
  session_neurons: Sequence[int],
  session_rows: Sequence[int] | None = None,
):
  """(NDT1 of `config` holding the checkpoint's weights, unused tensor names)."""

  def build(seed=0):
    return ndt1.from_config(config, list(session_neurons), rngs=nnx.Rngs(seed))

  return sd.fill(build, lambda target: from_torch(ckpt, target, session_neurons, session_rows))
