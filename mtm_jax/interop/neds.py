"""Checkpoints of the official NEDS code (yzhang511/NEDS, MultiModal in "mm" mode with
stitching EncoderEmbeddings, as its train.py builds it) -> models/neds.NEDS.

Their state dict reaches us as an .npz written by parity/export_torch.py (interop/
state_dict.py). Per-session modules there are keyed by eid (`...stitcher_dict.<eid>...`);
`eid_list` (eid -> neuron count, in the order that becomes our session rows; their
train.py's meta_data["eid_list"]) says which eid is which row. Their session embeddings
are rows of a fixed table over their whole eid list (data/train_eids.txt then
test_eids.txt, `include_eids`): our session-embedding table takes each session's row
from it. What the conversion adjusts, and why:
- rotary layout: NEDS rotates dims (i, i + E/2) of a head together, mtm_jax's
  rotary.rotate (2i, 2i + 1); the query and key kernels' (and biases') output columns are
  permuted within each head so that pair i lands on (2i, 2i + 1). q.k is unchanged by a
  common permutation, so outputs are those of their model (`rotary_permutation=False`
  omits it: the parity test's negative control);
- neuron padding: their loader pads every session's spikes to the largest session with
  -1 (the counts enter their spike tokeniser Linear(N_max, 2 N_max) so), while mtm_jax
  pads with 0. The -1 inputs add a constant per session, -sum of the padded columns, to
  the tokeniser's first layer: it is folded into that layer's bias and the padded columns
  are zeroed (`neuron_pad_value`; 0 = no folding);
- Linear weights are transposed ([out, in] -> [in, out]); per-session modules are
  stacked into the padded session tables.
`n_heads` is not in a state dict: give it (their config's encoder.transformer.n_heads).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
from flax import nnx

import ml_collections

from mtm_jax import modalities as mods_lib
from mtm_jax.configs import neds as neds_config
from mtm_jax.interop import state_dict as sd
from mtm_jax.models import neds

EMB = "encoder_embeddings"


def _get(ckpt: sd.TorchCheckpoint, name: str, shape: tuple | None = None) -> np.ndarray:
  """The tensor `name`, as float32; ValueError naming it when missing or of another shape."""
  if name not in ckpt:
    raise ValueError(f"{ckpt.path or 'NEDS state dict'}: has no tensor {name!r}")
  x = np.asarray(ckpt.get(name), np.float32)
  if shape is not None and x.shape != tuple(shape):
    raise ValueError(f"{ckpt.path or 'NEDS state dict'}: tensor {name!r} has shape {x.shape}, expected {tuple(shape)}")
  return x


def architecture(ckpt: sd.TorchCheckpoint, n_heads: int, **fields) -> neds.Hparams:
  """Hparams of the checkpoint (width, layers, MLP width, bins, modalities read from
  tensor shapes; `n_heads` given; `fields` set the rest, e.g. dropouts)."""
  width = _get(ckpt, "mask_token").shape[-1]
  n_layers = len({n.split(".")[1] for n in ckpt.names("encoder.") if n.endswith(".ln1.weight")})
  mlp = _get(ckpt, "encoder.0.mlp.up_proj.weight").shape[0]
  modalities = tuple(m for m in mods_lib.MODALITIES if f"{EMB}.{m}.embedder.mod_emb.weight" in ckpt)
  if not modalities:
    raise ValueError(f"{ckpt.path or 'NEDS state dict'}: has no {EMB}.<modality>.embedder.mod_emb.weight tensor")
  max_bins = _get(ckpt, f"{EMB}.{modalities[0]}.embedder.pos_embed.weight").shape[0]
  return neds.Hparams(
    width=width, n_layers=n_layers, n_heads=n_heads, mlp_width=mlp, max_bins=max_bins, modalities=modalities, **fields
  )


def model_config(hp: neds.Hparams, base: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
  """A NEDS config (configs/neds.py's "single" preset, or `base`) whose model has the
  checkpoint's architecture `hp` (dropouts, masking and training settings stay the base's)."""
  c = ml_collections.ConfigDict((base if base is not None else neds_config.get_config("single")).to_dict())
  m = c.model
  m.width, m.n_layers, m.n_heads, m.mlp_width, m.max_bins = hp.width, hp.n_layers, hp.n_heads, hp.mlp_width, hp.max_bins
  m.modalities, m.embed_mult, m.rope_base = tuple(hp.modalities), hp.embed_mult, hp.rope_base
  return c


def checkpoint_eids(ckpt: sd.TorchCheckpoint) -> list[str]:
  """The eids that have per-session tables in the checkpoint (their spike stitchers'), sorted."""
  prefix = f"{EMB}.{mods_lib.SPIKE}.embedder.mod_stitch_encoder.stitcher_dict."
  return sorted({n[len(prefix) :].rsplit(".", 1)[0] for n in ckpt.names(prefix)})


def spike_table_width(ckpt: sd.TorchCheckpoint, eid: str) -> int:
  """N_max: the neurons of their spike tables (every session's, their largest session's count)."""
  return _get(ckpt, f"{EMB}.{mods_lib.SPIKE}.embedder.mod_stitch_encoder.stitcher_dict.{eid}.weight").shape[1]


def session_table_rows(ckpt: sd.TorchCheckpoint, modality: str) -> int:
  """Rows of their session-embedding table (their include_eids)."""
  return _get(ckpt, f"{EMB}.{modality}.embedder.session_emb.weight").shape[0]


def rotary_columns(width: int, n_heads: int) -> np.ndarray:
  """[D] index: our column h E + 2i + j is their column h E + j E/2 + i (j in {0, 1})."""
  e = width // n_heads
  h, i, j = np.meshgrid(np.arange(n_heads), np.arange(e // 2), np.arange(2), indexing="ij")
  return (h * e + j * (e // 2) + i).reshape(-1)


def from_torch(
  ckpt: sd.TorchCheckpoint,
  target: Mapping,
  eid_list: Mapping[str, int],
  include_eids: Sequence[str],
  hp: neds.Hparams,
  *,
  rotary_permutation: bool = True,
  neuron_pad_value: float = -1.0,
) -> tuple[dict, list[str]]:
  """(our pure parameter dict, unused tensor names); `target` is the NEDS model's pure
  parameter dict (arrays or ShapeDtypeStructs), whose shapes are checked."""
  used: set[str] = set()
  eids, sizes = list(eid_list), [int(n) for n in eid_list.values()]
  missing = [e for e in eids if e not in include_eids]
  if missing:
    raise ValueError(f"NEDS import: eids {missing} are not in include_eids (their session-embedding rows)")
  emb_rows = [list(include_eids).index(e) for e in eids]
  d, n_max = hp.width, max(sizes)

  def get(name, shape=None):
    used.add(name)
    return _get(ckpt, name, shape)

  def lin(prefix, n_in, n_out):
    return get(f"{prefix}.weight", (n_out, n_in)).T, get(f"{prefix}.bias", (n_out,))

  def stack(prefix, n_in, n_out):
    pairs = [lin(f"{prefix}.{e}", n_in, n_out) for e in eids]
    return {"kernel": np.stack([k for k, _ in pairs]), "bias": np.stack([b for _, b in pairs])}

  params: dict = {"io": {}, "layers": {}}
  for idx, m in enumerate(hp.modalities):
    base, t = f"{EMB}.{m}", hp.max_bins
    n_in, hidden, tok, n_out = {
      mods_lib.SPIKE: (n_max, 2 * n_max, 2 * n_max, n_max),
      **{k: (1, 2, 2, 1) for k in mods_lib.DYNAMIC},
      **{k: (1, 2 * t, 2, mods_lib.CLASSES[k]) for k in mods_lib.STATIC},
    }[m]
    enc = f"{base}.embedder.mod_stitch_encoder"
    io = {
      "stitch_in": stack(f"{enc}.stitcher_dict", n_in, hidden),
      "stitch_project": stack(f"{enc}.project_dict", tok, d),
      "stitch_out": stack(f"{base}.mod_stitcher_proj_dict.stitch_decoder_dict", d, n_out),
      "modality": get(f"{base}.embedder.mod_emb.weight")[idx],
      "position": {"embedding": get(f"{base}.embedder.pos_embed.weight", (t, d))},
      "session": {"embedding": get(f"{base}.embedder.session_emb.weight", (len(include_eids), d))[emb_rows]},
    }
    if m == mods_lib.SPIKE and neuron_pad_value != 0.0:
      for r, n in enumerate(sizes):  # their padded neurons' inputs, folded into the bias
        io["stitch_in"]["bias"][r] += neuron_pad_value * io["stitch_in"]["kernel"][r, n:].sum(0)
        io["stitch_in"]["kernel"][r, n:] = 0.0
    if m in mods_lib.STATIC:
      io["token_weights"] = np.stack([get(f"{base}.mod_static_weight_dict.{e}", (t,)) for e in eids])
    params["io"][m] = io
  cols = rotary_columns(d, hp.n_heads) if rotary_permutation else np.arange(d)
  for layer in range(hp.n_layers):
    p = f"encoder.{layer}"
    attn = {}
    for ours, theirs in (("query", "query"), ("key", "key"), ("value", "value"), ("out", "out_proj")):
      k, b = lin(f"{p}.attn.{theirs}", d, d)
      if ours in ("query", "key"):
        k, b = k[:, cols], b[cols]
      attn[ours] = {"kernel": k, "bias": b}
    params["layers"][layer] = {
      "norm_attn": {"scale": get(f"{p}.ln1.weight", (d,)), "bias": get(f"{p}.ln1.bias", (d,))},
      "attn": attn,
      "norm_mlp": {"scale": get(f"{p}.ln2.weight", (d,)), "bias": get(f"{p}.ln2.bias", (d,))},
      "mlp": dict(
        zip(
          ("up", "down"),
          (
            {"kernel": k, "bias": b}
            for k, b in (lin(f"{p}.mlp.up_proj", d, hp.mlp_width), lin(f"{p}.mlp.down_proj", hp.mlp_width, d))
          ),
        )
      ),
    }
  params["final_norm"] = {"scale": get("encoder_norm.weight", (d,)), "bias": get("encoder_norm.bias", (d,))}
  params["mask_token"] = get("mask_token", (1, 1, d)).reshape(d)
  _check_shapes(params, target, ckpt.path or "NEDS state dict")
  return params, sd.unused(ckpt, used)


def _check_shapes(params, target, where: str, path: str = "") -> None:
  """ValueError naming the parameter whose converted shape is not the model's."""
  for k, v in target.items():
    name = f"{path}/{k}" if path else str(k)
    if k not in params:
      raise ValueError(f"{where}: the conversion gives no {name!r}")
    if isinstance(v, Mapping):
      _check_shapes(params[k], v, where, name)
    elif tuple(np.shape(params[k])) != tuple(np.shape(v)):
      raise ValueError(f"{where}: {name!r} converted to shape {np.shape(params[k])}, the model needs {np.shape(v)}")


def convert(
  ckpt: sd.TorchCheckpoint,
  eid_list: Mapping[str, int],
  include_eids: Sequence[str],
  *,
  n_heads: int,
  rotary_permutation: bool = True,
  neuron_pad_value: float = -1.0,
  **fields,
):
  """(NEDS holding the checkpoint's weights, unused tensor names). Session row r is the
  r-th eid of `eid_list`; `fields` set Hparams fields a state dict does not hold."""
  hp = dataclasses.replace(architecture(ckpt, n_heads, **fields), n_session_rows=len(eid_list))

  def build(seed=0):
    return neds.NEDS(list(eid_list.values()), hp, rngs=nnx.Rngs(seed))

  return sd.fill(
    build,
    lambda target: from_torch(
      ckpt,
      target,
      eid_list,
      include_eids,
      hp,
      rotary_permutation=rotary_permutation,
      neuron_pad_value=neuron_pad_value,
    ),
  )
