"""Writes the PyTorch side of the parity tests: reference models with random weights, fixed
inputs and their outputs: per case, <case>.npz (the state dict as parity/export_torch.py
writes it, with the case's facts in `__meta__`) and <case>.io.npz (`input/<name>` and
`output/<name>` arrays), and the checkpoint as the reference's trainer writes it: <case>.pt
(NDT1: {"model": pickled module, "epoch"}) or <case>.ckpt (POYO: Lightning layout).

Runs in the parity environment (Python 3.11 + torch + torch_brain; `make parity-env`):

  parity/.venv/bin/python parity/make_reference.py --out=<dir>

Cases:
- ndt1_mtm: single-session NDT1 with prompt and session tokens (session table of 3 rows),
  T-Fixup init; one forward pass per MtM masking scheme (neuron, causal, inter-region,
  intra-region), each with its prompt and, for causal, causal attention.
- ndt1_temporal: NDT1 without special tokens (the temporal-masking baseline); temporal
  masking with bidirectional attention and forward prediction with causal attention.
- ndt1_stitch: NDT1-stitch over sessions of 7, 11 and 7 neurons (the two 7-neuron sessions
  share their stitchers, keyed by neuron count as in the authors' code), session table of
  4 rows; every masking scheme on every session.
- poyo_tiny, poyo_small (1.3M): torch_brain's POYO with unit and session vocabularies,
  3 windows of different token counts padded to a multiple of 8, padded output queries.

Masked inputs are made here with numpy (hidden entries zeroed, as the authors' masker
does); mtm_jax feeds the same arrays, so only the models are compared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export_torch  # noqa: E402
import reference_ndt1  # noqa: E402

SCHEMES = reference_ndt1.MASK_TYPES
N_BINS = 24
NDT1_SIZE = dict(hidden=64, n_layers=2, n_heads=4, inter=128)  # mtm_jax's "mini" size


def _perturb_norms(model: torch.nn.Module, gen: torch.Generator) -> None:
  """LayerNorm weights/biases away from 1/0, so their conversion is tested too."""
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.LayerNorm):
        m.weight.add_(0.1 * torch.randn(m.weight.shape, generator=gen))
        m.bias.add_(0.1 * torch.randn(m.bias.shape, generator=gen))


def _mask(rng: np.random.Generator, spikes: np.ndarray, regions: np.ndarray, scheme: str) -> np.ndarray:
  """spikes [B, T, N] with the scheme's hidden entries zeroed."""
  b, t, n = spikes.shape
  if scheme == "neuron":
    hide = np.broadcast_to(rng.random((b, 1, n)) < 0.3, spikes.shape)
  elif scheme in ("causal", "temporal"):
    hide = np.broadcast_to(rng.random((b, t, 1)) < (0.6 if scheme == "causal" else 0.3), spikes.shape)
  elif scheme == "inter-region":
    hide = np.broadcast_to(regions[None, None] == rng.choice(np.unique(regions)), spikes.shape)
  elif scheme == "intra-region":
    inside = regions[None, None] == rng.choice(np.unique(regions))
    hide = ~inside | (inside & (rng.random((b, 1, n)) < 0.3))
  else:
    raise ValueError(scheme)
  return np.where(hide, 0.0, spikes).astype(np.float32)


def _save(out_dir: str, case: str, model: torch.nn.Module, meta: dict, inputs: dict, outputs: dict) -> None:
  """<case>.npz: the state dict (as export_torch writes it); <case>.io.npz: inputs and outputs."""
  path = os.path.join(out_dir, f"{case}.npz")
  export_torch.save_state_dict(model.state_dict(), path, dict(meta, source=case))
  io = {f"input/{k}": v for k, v in inputs.items()}
  io.update({f"output/{k}": v for k, v in outputs.items()})
  np.savez(os.path.join(out_dir, f"{case}.io.npz"), **io)
  print(f"{path}: {len(inputs)} inputs, {len(outputs)} outputs")


def ndt1_case(out_dir: str, case: str, *, num_neurons, stitch: int, use_prompt: bool, session_rows,
              n_session_rows: int, modes, seed: int) -> None:
  torch.manual_seed(seed)
  gen = torch.Generator().manual_seed(seed)
  rng = np.random.default_rng(seed)
  model = reference_ndt1.NDT1(num_neurons, **NDT1_SIZE, stitch_channels=stitch, use_prompt=use_prompt,
                              n_session_rows=n_session_rows, fixup_init=True)
  _perturb_norms(model, gen)
  model.eval()
  inputs, outputs = {}, {}
  for s, (n, row) in enumerate(zip(num_neurons, session_rows)):
    regions = np.arange(n) % 3
    counts = rng.poisson(1.5, size=(3, N_BINS, n)).astype(np.float32)
    for mode in modes:
      x = _mask(rng, counts, regions, mode)
      with torch.no_grad():
        y = model(torch.from_numpy(x), masking_mode=mode, session_row=row)
      inputs[f"{s}/{mode}"] = x
      outputs[f"{s}/{mode}"] = y.numpy()
  meta = dict(kind="ndt1", num_neurons=list(num_neurons), session_rows=list(session_rows), modes=list(modes),
              attributes=dict(n_heads=NDT1_SIZE["n_heads"]), use_prompt=use_prompt, stitch=stitch)
  _save(out_dir, case, model, meta, inputs, outputs)
  # As the authors' trainer saves it: the whole module pickled (unpickled with this folder on the path).
  torch.save({"model": model, "epoch": 0}, os.path.join(out_dir, f"{case}.pt"))


def poyo_case(out_dir: str, case: str, *, dim, depth, cross_heads, self_heads, latents_per_step, seed: int) -> None:
  from torch_brain.models import poyo as tb_poyo  # pylint: disable=import-outside-toplevel

  torch.manual_seed(seed)
  gen = torch.Generator().manual_seed(seed)
  rng = np.random.default_rng(seed)
  hparams = dict(sequence_length=1.0, latent_step=0.125, num_latents_per_step=latents_per_step, dim=dim,
                 depth=depth, dim_head=64, cross_heads=cross_heads, self_heads=self_heads, ffn_dropout=0.2,
                 lin_dropout=0.4, atn_dropout=0.2, emb_init_scale=0.02, t_min=1e-4, t_max=2.0627)
  model = tb_poyo.POYO(dim_out=2, **hparams)
  sessions = {"sess_a": [f"sess_a/u{i}" for i in range(5)], "sess_b": [f"sess_b/u{i}" for i in range(7)]}
  model.unit_emb.initialize_vocab([u for units in sessions.values() for u in units])
  model.session_emb.initialize_vocab(list(sessions))
  _perturb_norms(model, gen)
  model.eval()

  windows = [("sess_a", 40), ("sess_b", 75), ("sess_a", 13)]  # (session, spikes)
  n_queries = [50, 37, 21]
  samples = []
  for (session, n_spikes), q in zip(windows, n_queries):
    units = sessions[session]
    local = rng.integers(0, len(units), n_spikes)
    times = np.sort(rng.random(n_spikes))
    se_type, se_unit, se_time = tb_poyo.create_start_end_unit_tokens(units, 0.0, 1.0)
    unit_index = np.array(model.unit_emb.tokenizer(units))[np.concatenate([se_unit, local])]
    samples.append(dict(unit_index=unit_index, timestamps=np.concatenate([se_time, times]),
                        token_type=np.concatenate([se_type, np.zeros(n_spikes, np.int64)]),
                        session_index=model.session_emb.tokenizer(session),
                        output_timestamps=np.sort(rng.random(q)), n_queries=q))
  length = max(len(s["unit_index"]) for s in samples)
  length = -(-length // 8) * 8  # the reference pads to a multiple of 8
  q_max = max(n_queries)
  b = len(samples)
  batch = dict(unit_index=np.zeros((b, length), np.int64), timestamps=np.zeros((b, length), np.float32),
               token_type=np.zeros((b, length), np.int64), input_mask=np.zeros((b, length), bool),
               session_index=np.array([s["session_index"] for s in samples], np.int64),
               output_timestamps=np.zeros((b, q_max), np.float32), output_task=np.zeros((b, q_max), np.int64),
               output_mask=np.zeros((b, q_max), bool))
  for i, s in enumerate(samples):
    n = len(s["unit_index"])
    batch["unit_index"][i, :n], batch["timestamps"][i, :n] = s["unit_index"], s["timestamps"]
    batch["token_type"][i, :n], batch["input_mask"][i, :n] = s["token_type"], True
    batch["output_timestamps"][i, : s["n_queries"]] = s["output_timestamps"]
    batch["output_mask"][i, : s["n_queries"]] = True
  latent_index, latent_timestamps = tb_poyo.create_linspace_latent_tokens(0.0, 1.0, 0.125, latents_per_step)
  t = lambda a: torch.from_numpy(np.asarray(a))
  with torch.no_grad():
    y = model(input_unit_index=t(batch["unit_index"]), input_timestamps=t(batch["timestamps"]),
              input_token_type=t(batch["token_type"]), input_mask=t(batch["input_mask"]),
              latent_index=t(np.tile(latent_index, (b, 1))),
              latent_timestamps=t(np.tile(latent_timestamps.astype(np.float32), (b, 1))),
              session_index=t(batch["session_index"]), output_timestamps=t(batch["output_timestamps"]),
              output_mask=t(batch["output_mask"]))
  meta = dict(kind="poyo", hparams=hparams, sessions=sessions)
  _save(out_dir, case, model, meta, batch, {"behaviour": y.numpy()})
  # As torch_brain's Lightning trainer saves it (what POYO.load_pretrained reads).
  torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
              "hyper_parameters": {"model": dict(hparams, _target_="torch_brain.models.POYO")}},
             os.path.join(out_dir, f"{case}.ckpt"))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True, help="directory for the case files")
  parser.add_argument("--cases", default="ndt1,poyo", help="comma-separated families: ndt1, poyo")
  args = parser.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  torch.set_num_threads(1)
  families = set(args.cases.split(","))
  if "ndt1" in families:
    ndt1_case(args.out, "ndt1_mtm", num_neurons=[13], stitch=0, use_prompt=True, session_rows=[1],
              n_session_rows=3, modes=SCHEMES, seed=0)
    ndt1_case(args.out, "ndt1_temporal", num_neurons=[13], stitch=0, use_prompt=False, session_rows=[0],
              n_session_rows=0, modes=("temporal", "causal"), seed=1)
    ndt1_case(args.out, "ndt1_stitch", num_neurons=[7, 11, 7], stitch=16, use_prompt=True, session_rows=[2, 0, 3],
              n_session_rows=4, modes=SCHEMES, seed=2)
  if "poyo" in families:
    poyo_case(args.out, "poyo_tiny", dim=32, depth=1, cross_heads=1, self_heads=2, latents_per_step=2, seed=3)
    poyo_case(args.out, "poyo_small", dim=64, depth=6, cross_heads=2, self_heads=8, latents_per_step=16, seed=4)
  with open(os.path.join(args.out, "versions.json"), "w", encoding="utf-8") as f:
    json.dump({"torch": torch.__version__, "python": sys.version.split()[0]}, f)


if __name__ == "__main__":
  main()
