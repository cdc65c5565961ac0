"""torch_brain's POYO (PyTorch, torch_brain.models.POYO) <-> mtm_jax's POYO.

| torch_brain                                   | ours                                        |
|-----------------------------------------------|---------------------------------------------|
| unit_emb.weight + unit_emb.vocab              | unit_emb (rows re-ordered: ours group units by session) |
| session_emb.weight + session_emb.vocab        | session_emb (rows in our session order)     |
| token_type_emb, latent_emb                    | token_type_emb, latent_emb                  |
| rotary_emb.omega                              | config.model.rotary_frequencies             |
| enc_atn.{norm, norm_context}                  | encoder/{norm_query, norm_context}          |
| enc_atn.to_q / to_kv (fused k, v) / to_out    | encoder/attn/query / key, value / out       |
| enc_ffn.0, enc_ffn.1.net.{0,3}                | encoder/norm_ffn, encoder/ffn/{up, down}    |
| proc_layers.<i>.0.{norm, to_qkv, to_out}      | processor/<i>/norm_attn, attn/{query, key, value}, attn/out |
| proc_layers.<i>.1.0, .1.1.net.{0,3}           | processor/<i>/norm_ffn, ffn/{up, down}      |
| dec_atn.*, dec_ffn.*                          | decoder/* (as the encoder)                  |
| readout                                       | readout/<task>                              |

Both vocabularies have the padding word "NA" at row 0, as ours have a padding row 0. The
rotary frequencies are taken from the checkpoint because torch_brain computes them in
float32 (periods through float32 exp/log): they differ from ours by a few ulps, and at
the 1e-4 s period a few ulps turn into angle errors of ~1e-2 rad over a 1 s window.

Batches of torch_brain's own pipeline (POYO.tokenize + collate) carry float64 timestamps,
and torch_brain's rotary angles are then float64 products: `torch_brain_batch` maps such a
batch to ours with angles computed the same way on the host (`rotary.host_angles`).

Sessions: each of ours is (name, session id, unit ids in the session's order); by default
they are the checkpoint's sessions, with the units whose ids start with "<session id>/"
(torch_brain's naming), in vocabulary order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import ml_collections
import numpy as np
from flax import nnx

from mtm_jax.configs import poyo as poyo_config
from mtm_jax.datasets.events import vocabulary as vocabulary_lib
from mtm_jax.interop import state_dict as sd
from mtm_jax.models import poyo, rotary

UNIT_VOCAB, SESSION_VOCAB = "unit_emb.vocab", "session_emb.vocab"
PAD_WORD = "NA"
# torch_brain's POYO hyper-parameter names (a checkpoint's meta["hparams"]) -> poyo.Hparams fields.
TORCH_BRAIN_HPARAMS = {
  "sequence_length": "window_length",
  "latent_step": "latent_step",
  "num_latents_per_step": "latents_per_step",
  "dim": "dim",
  "depth": "depth",
  "dim_head": "head_dim",
  "cross_heads": "cross_heads",
  "self_heads": "self_heads",
  "ffn_dropout": "ffn_dropout",
  "lin_dropout": "lin_dropout",
  "atn_dropout": "attn_dropout",
  "emb_init_scale": "emb_init_scale",
  "t_min": "t_min",
  "t_max": "t_max",
}


def architecture(ckpt: sd.TorchCheckpoint) -> dict:
  """The checkpoint's model: size (a row of poyo.PRESETS), head_dim, dim_out, window and
  latent step, dropouts, t_min/t_max and the rotary frequencies."""
  hp = dict(ckpt.meta.get("hparams") or {})
  latents, dim = ckpt.get("latent_emb.weight").shape
  depth = 0
  while f"proc_layers.{depth}.0.to_qkv.weight" in ckpt:
    depth += 1
  head_dim = int(hp.get("dim_head", 64))
  inner_cross = ckpt.get("enc_atn.to_q.weight").shape[0]
  inner_self = ckpt.get("proc_layers.0.0.to_qkv.weight").shape[0] // 3 if depth else head_dim
  if inner_cross % head_dim or inner_self % head_dim:
    raise ValueError(
      f"{ckpt.path}: attention widths {inner_cross}, {inner_self} are not multiples of the head "
      f"dim {head_dim} (hparams dim_head)"
    )
  size = dict(
    dim=dim,
    depth=depth,
    cross_heads=inner_cross // head_dim,
    self_heads=inner_self // head_dim,
    latents_per_step=latents,
  )
  rows = [name for name, p in poyo.PRESETS.items() if all(getattr(p, k) == v for k, v in size.items())]
  if not rows:
    presets = {name: {k: getattr(p, k) for k in size} for name, p in poyo.PRESETS.items()}
    raise ValueError(
      f"{ckpt.path}: a POYO of {size} is none of mtm_jax.models.poyo.PRESETS {presets}; add a size there"
    )
  omega = ckpt.get("rotary_emb.omega")
  n_freq = head_dim // 4
  if omega.shape != (head_dim // 2,) or np.any(omega[n_freq:] != 0):
    raise ValueError(
      f"{ckpt.path}: rotary_emb.omega {omega.shape} is not {head_dim // 2} frequencies of which "
      f"the first {n_freq} are rotated"
    )
  return dict(
    size=rows[0],
    head_dim=head_dim,
    dim_out=ckpt.get("readout.weight").shape[0],
    window_length=float(hp.get("sequence_length", 1.0)),
    latent_step=float(hp.get("latent_step", 0.125)),
    ffn_dropout=float(hp.get("ffn_dropout", 0.2)),
    lin_dropout=float(hp.get("lin_dropout", 0.4)),
    attn_dropout=float(hp.get("atn_dropout", 0.0)),
    emb_init_scale=float(hp.get("emb_init_scale", 0.02)),
    t_min=float(hp.get("t_min", 1e-4)),
    t_max=float(hp.get("t_max", 2.0627)),
    rotary_frequencies=[float(f) for f in omega[:n_freq]],
  )


def model_config(
  arch: Mapping, task: str, scale: Sequence[float] | None = None, base: ml_collections.ConfigDict | None = None
) -> ml_collections.ConfigDict:
  """A POYO config (preset of the checkpoint's size, or `base`) with the checkpoint's model;
  one task `task` of dim_out outputs; behaviour scale `scale` (default ones)."""
  c = base if base is not None else poyo_config.get_config(arch["size"])
  c = ml_collections.ConfigDict(c.to_dict())
  m = c.model
  m.size, m.head_dim, m.tasks = arch["size"], arch["head_dim"], {task: arch["dim_out"]}
  for k in ("latent_step", "ffn_dropout", "lin_dropout", "attn_dropout", "emb_init_scale", "t_min", "t_max"):
    m[k] = arch[k]
  m.window_length = c.data.window_length = arch["window_length"]
  m.rotary_frequencies = tuple(arch["rotary_frequencies"])
  scale = [1.0] * arch["dim_out"] if scale is None else [float(s) for s in scale]
  if len(scale) != arch["dim_out"]:
    raise ValueError(f"scale: {len(scale)} values for {arch['dim_out']} outputs")
  c.data.scale = scale
  return c


def default_sessions(ckpt: sd.TorchCheckpoint) -> list[dict]:
  """The checkpoint's sessions as records {name, session_id, unit_ids}: units grouped by
  their "<session id>/" prefix, in vocabulary order."""
  vocab = ckpt.meta.get("vocab", {})
  if UNIT_VOCAB not in vocab or SESSION_VOCAB not in vocab:
    raise ValueError(
      f"{ckpt.path}: holds no unit/session vocabularies ({UNIT_VOCAB}, {SESSION_VOCAB}); "
      "export the checkpoint with parity/export_torch.py"
    )
  sessions = [s for s in vocab[SESSION_VOCAB] if s != PAD_WORD]
  units = [u for u in vocab[UNIT_VOCAB] if u != PAD_WORD]
  records = [dict(name=s, session_id=s, unit_ids=[u for u in units if u.startswith(f"{s}/")]) for s in sessions]
  orphans = sorted(set(units) - {u for r in records for u in r["unit_ids"]})
  if orphans:
    raise ValueError(
      f"{ckpt.path}: units {orphans[:5]}{'...' if len(orphans) > 5 else ''} belong to no session "
      "by the '<session id>/' prefix; give the sessions' unit ids"
    )
  return records


def _entries(depth: int, task: str) -> list[sd.Entry]:
  """Everything but the unit and session tables (re-ordered rows: see from_torch, to_torch)."""
  e = sd.embedding("token_type_emb", ("token_type_emb",)) + sd.embedding("latent_emb", ("latent_emb",))
  for theirs, ours in (("enc", "encoder"), ("dec", "decoder")):
    e += sd.layer_norm(f"{theirs}_atn.norm", (ours, "norm_query"))
    e += sd.layer_norm(f"{theirs}_atn.norm_context", (ours, "norm_context"))
    e += sd.linear(f"{theirs}_atn.to_q", (ours, "attn", "query"), bias=False)
    e += sd.fused_linear(f"{theirs}_atn.to_kv", [(ours, "attn", "key"), (ours, "attn", "value")])
    e += sd.linear(f"{theirs}_atn.to_out", (ours, "attn", "out"))
    e += sd.layer_norm(f"{theirs}_ffn.0", (ours, "norm_ffn"))
    e += sd.linear(f"{theirs}_ffn.1.net.0", (ours, "ffn", "up")) + sd.linear(
      f"{theirs}_ffn.1.net.3", (ours, "ffn", "down")
    )
  for i in range(depth):
    t, o = f"proc_layers.{i}", ("processor", i)
    e += sd.layer_norm(f"{t}.0.norm", o + ("norm_attn",))
    e += sd.fused_linear(f"{t}.0.to_qkv", [o + ("attn", "query"), o + ("attn", "key"), o + ("attn", "value")])
    e += sd.linear(f"{t}.0.to_out", o + ("attn", "out"))
    e += sd.layer_norm(f"{t}.1.0", o + ("norm_ffn",))
    e += sd.linear(f"{t}.1.1.net.0", o + ("ffn", "up")) + sd.linear(f"{t}.1.1.net.3", o + ("ffn", "down"))
  e += sd.linear("readout", ("readout", task))
  return e


def _rows(ckpt: sd.TorchCheckpoint, records: Sequence[dict]) -> tuple[list[int], list[int]]:
  """Rows of the checkpoint's unit and session tables for our rows (row 0 = padding)."""
  vocab = ckpt.meta.get("vocab", {})
  units = {w: i for i, w in enumerate(vocab.get(UNIT_VOCAB, []))}
  sessions = {w: i for i, w in enumerate(vocab.get(SESSION_VOCAB, []))}
  ours = vocabulary_lib.Vocabulary.from_records(records)
  unit_rows, session_rows = [units.get(PAD_WORD, 0)], [sessions.get(PAD_WORD, 0)]
  for sid in ours.session_ids:
    if sid not in sessions:
      raise ValueError(f"{ckpt.path}: session {sid!r} is not in its session vocabulary")
    session_rows.append(sessions[sid])
  missing = [u for u in ours.unit_ids if u not in units]
  if missing:
    raise ValueError(
      f"{ckpt.path}: units {missing[:5]}{'...' if len(missing) > 5 else ''} are not in its unit vocabulary"
    )
  unit_rows += [units[u] for u in ours.unit_ids]
  return unit_rows, session_rows


def _our_rows(rows: Sequence[int], n_theirs: int) -> np.ndarray:
  """[n_theirs] our row of each row of their table (-1: none of our sessions has it)."""
  table = np.full(n_theirs, -1, np.int64)
  table[list(rows)] = np.arange(len(rows))
  return table


def torch_brain_batch(
  ckpt: sd.TorchCheckpoint, records: Sequence[dict], batch: Mapping[str, np.ndarray], frequencies
) -> tuple[dict, dict]:
  """(our batch, rotary angles) of a batch of torch_brain's own pipeline (POYO.tokenize +
  collate: the keyword arguments of its POYO.forward, as numpy; timestamps usually
  float64), for `model(ours, angles=angles)` with the model of `convert(ckpt, ..., records)`.

  Unit and session indices are mapped to our rows; the angles are `rotary.host_angles` of
  its input, latent and output timestamps (float64 products, as torch_brain computes them,
  where float32 angles would differ by ~1e-4 relative in the outputs)."""
  latents = ckpt.get("latent_emb.weight").shape[0]
  latent_index = np.asarray(batch["latent_index"])
  if np.any(latent_index != np.arange(latent_index.shape[-1]) % latents):
    raise ValueError(
      f"torch_brain batch: latent_index is not 0..{latents - 1} repeated per latent step, the order of our latents"
    )
  unit_rows, session_rows = _rows(ckpt, records)
  units = _our_rows(unit_rows, ckpt.get("unit_emb.weight").shape[0])[np.asarray(batch["input_unit_index"])]
  sessions = _our_rows(session_rows, ckpt.get("session_emb.weight").shape[0])[np.asarray(batch["session_index"])]
  mask = np.asarray(batch["input_mask"], bool)
  if np.any(units[mask] < 0) or np.any(sessions < 0):
    raise ValueError(
      f"torch_brain batch: it holds units or sessions of {ckpt.path} outside the sessions "
      f"{[r['session_id'] for r in records]}"
    )
  out_mask = np.asarray(batch["output_mask"], bool)
  ours = dict(
    unit_index=np.where(mask, units, 0).astype(np.int32),
    timestamps=np.asarray(batch["input_timestamps"], np.float32),
    token_type=np.asarray(batch["input_token_type"], np.int32),
    input_mask=mask,
    session_index=sessions.astype(np.int32),
    output_timestamps=np.asarray(batch["output_timestamps"], np.float32),
    output_task=np.zeros(out_mask.shape, np.int32),
    output_mask=out_mask,
  )
  angles = {
    name: rotary.host_angles(batch[key], frequencies)
    for name, key in (
      ("tokens", "input_timestamps"),
      ("latents", "latent_timestamps"),
      ("queries", "output_timestamps"),
    )
  }
  return ours, angles


def from_torch(ckpt: sd.TorchCheckpoint, target: Mapping, records: Sequence[dict]) -> tuple[dict, list[str]]:
  """Our pure parameter dict (shapes of `target`) for sessions `records`, and the unused
  tensor names (vocabulary rows of other sessions are dropped silently)."""
  task = next(iter(target["readout"]))
  entries = _entries(len(target["processor"]), task)
  params = sd.from_torch(ckpt, entries, target)
  unit_rows, session_rows = _rows(ckpt, records)
  for name, rows in (("unit_emb", unit_rows), ("session_emb", session_rows)):
    table = ckpt.get(f"{name}.weight")[rows]
    want = tuple(np.shape(target[name]["embedding"]))
    if table.shape != want:
      raise ValueError(f"{ckpt.path}: {name} gives {table.shape}, the model needs {want}")
    params[name] = {"embedding": np.asarray(table, np.float32)}
  used = {e.torch for e in entries} | {"unit_emb.weight", "session_emb.weight", "rotary_emb.omega"}
  missing = [k for k in target if k not in params]
  if missing:
    raise ValueError(f"{ckpt.path}: the conversion left {missing} unset; the architecture differs from the config")
  return params, sd.unused(ckpt, used)


def convert(ckpt: sd.TorchCheckpoint, config: ml_collections.ConfigDict, records: Sequence[dict]):
  """(POYO of `config` for sessions `records` holding the checkpoint's weights, unused names)."""
  vocab = vocabulary_lib.Vocabulary.from_records(records)

  def build(seed=0):
    return poyo.from_config(config, len(vocab.unit_ids), len(vocab.session_ids), rngs=nnx.Rngs(seed))

  return sd.fill(build, lambda target: from_torch(ckpt, target, records))


def to_torch(model: poyo.POYO, records: Sequence[dict], hparams_extra: Mapping | None = None) -> sd.TorchCheckpoint:
  """torch_brain's state dict (with vocabularies and hyper-parameters) of our POYO, for
  sessions `records` (the inverse of `from_torch`). One task only."""
  if len(model.tasks) != 1:
    raise ValueError(f"to_torch: torch_brain's POYO has one readout; this model has tasks {model.tasks}")
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  arrays = sd.to_torch(params, _entries(model.depth, model.tasks[0][0]))
  vocab = vocabulary_lib.Vocabulary.from_records(records)
  arrays["unit_emb.weight"] = np.asarray(params["unit_emb"]["embedding"], np.float32)
  arrays["session_emb.weight"] = np.asarray(params["session_emb"]["embedding"], np.float32)
  omega = np.zeros(model.head_dim // 2, np.float32)
  omega[: model.head_dim // 4] = model.frequencies()
  arrays["rotary_emb.omega"] = omega
  hp = model.hparams
  hparams = {theirs: getattr(hp, ours) for theirs, ours in TORCH_BRAIN_HPARAMS.items()}
  hparams.update(sequence_length=float(hp.window_length), latent_step=float(hp.latent_step), **(hparams_extra or {}))
  meta = {
    "source": "mtm_jax",
    "hparams": hparams,
    "vocab": {UNIT_VOCAB: [PAD_WORD] + list(vocab.unit_ids), SESSION_VOCAB: [PAD_WORD] + list(vocab.session_ids)},
  }
  return sd.TorchCheckpoint({k: np.asarray(v, np.float32) for k, v in arrays.items()}, meta)
