"""Writes the PyTorch side of the parity tests: reference models with random weights, fixed
inputs and their outputs: per case, <case>.npz (the state dict as parity/export_torch.py
writes it, with the case's facts in `__meta__`) and <case>.io.npz (`input/<name>` and
`output/<name>` arrays), and the checkpoint as the reference's trainer writes it: <case>.pt
(NDT1: {"model": pickled module, "epoch"}) or <case>.ckpt (POYO: Lightning layout).

The NDT1 definition (reference_ndt1.py) is laid out as the authors' checkout,
<out>/mtm_checkout/src/models/ndt1.py with <out>/mtm_checkout/data/target_eids.txt, and
imported from there as `models.ndt1`: its pickles unpickle only with that code on the path
and the checkout root as working directory, as theirs (export with
--code_path=<out>/mtm_checkout/src).

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
- ndt1_deep: 4 layers (64 wide, 4 heads, MLP 128), one session of 114 neurons (the test
  data set's count) with prompt and session tokens; every masking scheme.
- ndt1_wide: 128 wide, 2 layers, 4 heads, MLP 256 (two rows of mtm_jax's sizes have it),
  the temporal baseline.
- poyo_tiny, poyo_small (1.3M): torch_brain's POYO with unit and session vocabularies,
  3 windows of different token counts padded to a multiple of 8, padded output queries.

Masked inputs are made here with numpy (hidden entries zeroed, as the authors' masker
does); mtm_jax feeds the same arrays, so only the models are compared.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import shutil
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import export_torch  # noqa: E402

N_BINS = 24
NDT1_SIZE = dict(hidden=64, n_layers=2, n_heads=4, inter=128)  # mtm_jax's "mini" size
CHECKOUT = "mtm_checkout"  # <out>/mtm_checkout: reference_ndt1.py laid out as the authors' checkout
EIDS = ("eid-0a", "eid-1b", "eid-2c", "eid-3d")  # its data/target_eids.txt


def authors_code(out_dir: str):
  """reference_ndt1.py as the authors' `models.ndt1`, in <out_dir>/mtm_checkout (src/models/
  ndt1.py, data/target_eids.txt), imported with the checkout root as working directory."""
  root = os.path.join(out_dir, CHECKOUT)
  os.makedirs(os.path.join(root, "src", "models"), exist_ok=True)
  os.makedirs(os.path.join(root, "data"), exist_ok=True)
  shutil.copyfile(os.path.join(HERE, "reference_ndt1.py"), os.path.join(root, "src", "models", "ndt1.py"))
  open(os.path.join(root, "src", "models", "__init__.py"), "w", encoding="utf-8").close()
  with open(os.path.join(root, "data", "target_eids.txt"), "w", encoding="utf-8") as f:
    f.write("".join(f"{e}\n" for e in EIDS))
  sys.path.insert(0, os.path.join(root, "src"))
  with contextlib.chdir(root):
    return importlib.import_module("models.ndt1")


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


def ndt1_case(
  out_dir: str,
  case: str,
  reference,
  *,
  num_neurons,
  stitch: int,
  use_prompt: bool,
  session_rows,
  n_session_rows: int,
  modes,
  seed: int,
  size=None,
) -> None:
  """reference: the module of `authors_code`; size: NDT1_SIZE's fields (default NDT1_SIZE)."""
  torch.manual_seed(seed)
  gen = torch.Generator().manual_seed(seed)
  rng = np.random.default_rng(seed)
  size = dict(size or NDT1_SIZE)
  model = reference.NDT1(
    num_neurons, **size, stitch_channels=stitch, use_prompt=use_prompt, n_session_rows=n_session_rows, fixup_init=True
  )
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
  meta = dict(
    kind="ndt1",
    num_neurons=list(num_neurons),
    session_rows=list(session_rows),
    modes=list(modes),
    attributes=dict(n_heads=size["n_heads"]),
    use_prompt=use_prompt,
    stitch=stitch,
  )
  _save(out_dir, case, model, meta, inputs, outputs)
  # As the authors' trainer saves it: the whole module pickled (classes of models.ndt1).
  torch.save({"model": model, "epoch": 0}, os.path.join(out_dir, f"{case}.pt"))


def _torch_brain_pipeline(model, samples, sessions) -> dict[str, np.ndarray]:
  """The windows `samples` (session, local unit indices, spike and output times) through
  torch_brain's POYO.tokenize and collate: its model's keyword arguments, float64 times."""
  # pylint: disable=import-outside-toplevel
  from torch_brain.batching import collate, pad, track_mask
  from torch_brain.data import ArrayDict, Data, Interval, IrregularTimeSeries

  items = []
  for s in samples:
    data = Data(
      session=Data(id=s["session"]),
      units=ArrayDict(id=np.array(sessions[s["session"]])),
      spikes=IrregularTimeSeries(timestamps=s["times"], unit_index=s["local"], domain=Interval(0.0, 1.0)),
      domain=Interval(0.0, 1.0),
    )
    item = model.tokenize(data)
    item.update(output_timestamps=pad(s["output_timestamps"]), output_mask=track_mask(s["output_timestamps"]))
    items.append(item)
  return {k: np.asarray(v) for k, v in collate(items).items()}


def poyo_case(out_dir: str, case: str, *, dim, depth, cross_heads, self_heads, latents_per_step, seed: int) -> None:
  from torch_brain.models import poyo as tb_poyo  # pylint: disable=import-outside-toplevel

  torch.manual_seed(seed)
  gen = torch.Generator().manual_seed(seed)
  rng = np.random.default_rng(seed)
  hparams = dict(
    sequence_length=1.0,
    latent_step=0.125,
    num_latents_per_step=latents_per_step,
    dim=dim,
    depth=depth,
    dim_head=64,
    cross_heads=cross_heads,
    self_heads=self_heads,
    ffn_dropout=0.2,
    lin_dropout=0.4,
    atn_dropout=0.2,
    emb_init_scale=0.02,
    t_min=1e-4,
    t_max=2.0627,
  )
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
    samples.append(
      dict(
        session=session,
        local=local,
        times=times,
        unit_index=unit_index,
        timestamps=np.concatenate([se_time, times]),
        token_type=np.concatenate([se_type, np.zeros(n_spikes, np.int64)]),
        session_index=model.session_emb.tokenizer(session),
        output_timestamps=np.sort(rng.random(q)),
        n_queries=q,
      )
    )
  length = max(len(s["unit_index"]) for s in samples)
  length = -(-length // 8) * 8  # the reference pads to a multiple of 8
  q_max = max(n_queries)
  b = len(samples)
  batch = dict(
    unit_index=np.zeros((b, length), np.int64),
    timestamps=np.zeros((b, length), np.float32),
    token_type=np.zeros((b, length), np.int64),
    input_mask=np.zeros((b, length), bool),
    session_index=np.array([s["session_index"] for s in samples], np.int64),
    output_timestamps=np.zeros((b, q_max), np.float32),
    output_task=np.zeros((b, q_max), np.int64),
    output_mask=np.zeros((b, q_max), bool),
  )
  for i, s in enumerate(samples):
    n = len(s["unit_index"])
    batch["unit_index"][i, :n], batch["timestamps"][i, :n] = s["unit_index"], s["timestamps"]
    batch["token_type"][i, :n], batch["input_mask"][i, :n] = s["token_type"], True
    batch["output_timestamps"][i, : s["n_queries"]] = s["output_timestamps"]
    batch["output_mask"][i, : s["n_queries"]] = True
  latent_index, latent_timestamps = tb_poyo.create_linspace_latent_tokens(0.0, 1.0, 0.125, latents_per_step)
  t = lambda a: torch.from_numpy(np.asarray(a))
  with torch.no_grad():
    y = model(
      input_unit_index=t(batch["unit_index"]),
      input_timestamps=t(batch["timestamps"]),
      input_token_type=t(batch["token_type"]),
      input_mask=t(batch["input_mask"]),
      latent_index=t(np.tile(latent_index, (b, 1))),
      latent_timestamps=t(np.tile(latent_timestamps.astype(np.float32), (b, 1))),
      session_index=t(batch["session_index"]),
      output_timestamps=t(batch["output_timestamps"]),
      output_mask=t(batch["output_mask"]),
    )
  meta = dict(kind="poyo", hparams=hparams, sessions=sessions)
  _save(out_dir, case, model, meta, batch, {"behaviour": y.numpy()})
  # The same windows through torch_brain's own pipeline: float64 timestamps.
  tokenized = _torch_brain_pipeline(model, samples, sessions)
  with torch.no_grad():
    y = model(**{k: torch.from_numpy(v) for k, v in tokenized.items()})
  np.savez(
    os.path.join(out_dir, f"{case}.tokenized.npz"),
    **{f"input/{k}": v for k, v in tokenized.items()},
    **{"output/behaviour": y.numpy()},
  )
  # As torch_brain's Lightning trainer saves it (what POYO.load_pretrained reads).
  torch.save(
    {
      "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
      "hyper_parameters": {"model": dict(hparams, _target_="torch_brain.models.POYO")},
    },
    os.path.join(out_dir, f"{case}.ckpt"),
  )


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True, help="directory for the case files")
  parser.add_argument("--cases", default="ndt1,poyo", help="comma-separated families: ndt1, poyo")
  args = parser.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  torch.set_num_threads(1)
  families = set(args.cases.split(","))
  if "ndt1" in families:
    ref = authors_code(args.out)
    ndt1_case(
      args.out,
      "ndt1_mtm",
      ref,
      num_neurons=[13],
      stitch=0,
      use_prompt=True,
      session_rows=[1],
      n_session_rows=3,
      modes=ref.MASK_TYPES,
      seed=0,
    )
    ndt1_case(
      args.out,
      "ndt1_temporal",
      ref,
      num_neurons=[13],
      stitch=0,
      use_prompt=False,
      session_rows=[0],
      n_session_rows=0,
      modes=("temporal", "causal"),
      seed=1,
    )
    ndt1_case(
      args.out,
      "ndt1_stitch",
      ref,
      num_neurons=[7, 11, 7],
      stitch=16,
      use_prompt=True,
      session_rows=[2, 0, 3],
      n_session_rows=4,
      modes=ref.MASK_TYPES,
      seed=2,
    )
    ndt1_case(
      args.out,
      "ndt1_deep",
      ref,
      num_neurons=[114],
      stitch=0,
      use_prompt=True,
      session_rows=[2],
      n_session_rows=len(EIDS),
      modes=ref.MASK_TYPES,
      seed=5,
      size=dict(NDT1_SIZE, n_layers=4),
    )
    ndt1_case(
      args.out,
      "ndt1_wide",
      ref,
      num_neurons=[13],
      stitch=0,
      use_prompt=False,
      session_rows=[0],
      n_session_rows=0,
      modes=("temporal", "causal"),
      seed=6,
      size=dict(hidden=128, n_layers=2, n_heads=4, inter=256),
    )
  if "poyo" in families:
    poyo_case(args.out, "poyo_tiny", dim=32, depth=1, cross_heads=1, self_heads=2, latents_per_step=2, seed=3)
    poyo_case(args.out, "poyo_small", dim=64, depth=6, cross_heads=2, self_heads=8, latents_per_step=16, seed=4)
  with open(os.path.join(args.out, "versions.json"), "w", encoding="utf-8") as f:
    json.dump({"torch": torch.__version__, "python": sys.version.split()[0]}, f)


if __name__ == "__main__":
  main()
