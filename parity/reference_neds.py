"""Reference outputs of the official NEDS code (yzhang511/NEDS at 61d2ef6) for
tests/test_parity_neds.py; run in the NEDS parity environment (`make parity-neds-env`):

  python parity/reference_neds.py --neds_src <NEDS checkout> --out <dir> [--neurons=5,9,7 --bins=10]

Builds their MultiModal (model_mode "mm") from EncoderEmbedding(stitching=True) per
modality, as their train.py does, small (2 layers, width 32, 4 heads, T = 10 bins), for
three sessions of 5, 9 and 7 neurons (eids from their list; --neurons: others, e.g. those of
our built data sets for the import test, --bins their trial length), with random weights
(LayerNorms and the mask token perturbed so they matter). For each masking scheme it runs
their forward in eval mode (no dropout; their masker stays active) on fixed inputs,
masks chosen as their trainer's _prepare_multimodal_mask chooses them (mirrored below:
importing their trainer pulls wandb and plotting), plus their "mixed" training path, and
writes:
  neds_state.pt: their model's state_dict (torch.save), i.e. a checkpoint of their code;
  neds_trainer.pt: the same as their trainer saves it ({"epoch", "model", "optimizer",
    "lr_sched"});
  reference.npz: the inputs (spikes padded with -1 neurons, as their loader pads), the
    session rows, and per scheme the masks, their predictions and their losses;
  meta.json: eid_list (eid -> neuron count), the batch's eids, their fixed eid list
    (session-embedding rows) and the dimensions.
Each session has at least two examples in the batch: their code adds no session
embedding and no static token weighting to an example alone in its session in a batch
(a 0-dim index from squeeze()), which is not reproduced.
"""

import argparse
import json
import os
import sys

import numpy as np

B, WIDTH, LAYERS, HEADS, MLP = 8, 32, 2, 4, 64
ROWS = np.array([0, 1, 0, 2, 1, 2, 1, 0])  # session row of each example (of 3 sessions; fewer: ROWS % n)
SCHEMES = ("encoding", "decoding", "self-spike", "self-behavior", "random_token", "mixed")
MODS = ("spike", "choice", "block", "wheel", "whisker")  # their avail_mod: neural, static, dynamic
BEH = MODS[1:]


def prepare_mask(mod_dict, mode, all_ones, all_zeros):
  """Their MultiModalTrainer._prepare_multimodal_mask (src/trainer/base.py), for mm mode."""
  for mod in MODS:
    if mode == "encoding":
      mask = all_ones if mod == "spike" else all_zeros
    elif mode == "decoding":
      mask = all_ones if mod in BEH else all_zeros
    elif mode == "self-spike":
      mask = None if mod == "spike" else all_zeros
    elif mode == "self-behavior":
      mask = None if mod in BEH else all_zeros
    else:  # random_token, mixed
      mask = None
    mod_dict[mod]["eval_mask"] = mask


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--neds_src", required=True)
  ap.add_argument("--out", required=True)
  ap.add_argument("--neurons", default="5,9,7", help="neurons of each session (2 or 3 sessions)")
  ap.add_argument("--bins", type=int, default=10, help="time bins of a trial (T)")
  args = ap.parse_args()
  neurons, t_bins = tuple(int(n) for n in args.neurons.split(",")), args.bins
  rows = ROWS % len(neurons)
  sys.path.insert(0, os.path.join(os.path.abspath(args.neds_src), "src"))
  import torch
  import yaml
  from multi_modal import encoder_embeddings as ee
  from multi_modal.mm import MultiModal
  from utils.config_utils import DictConfig

  torch.manual_seed(0)
  rng = np.random.default_rng(0)
  with open(os.path.join(args.neds_src, "src/configs/multi_modal/mm.yaml")) as f:
    config = DictConfig(yaml.safe_load(f))
  tr, emb = config["encoder"]["transformer"], config["encoder"]["embedder"]
  tr.update(n_layers=LAYERS, hidden_size=WIDTH, n_heads=HEADS, inter_size=MLP)
  emb.update(max_F=t_bins)
  eids = ee.INCLUDE_EIDS[3 : 3 + len(neurons)]
  eid_list = {e: n for e, n in zip(eids, neurons)}
  encoder_embeddings = {
    mod: ee.EncoderEmbedding(
      hidden_size=WIDTH,
      n_channel=WIDTH,
      output_channel=WIDTH,
      stitching=True,
      eid_list=eid_list,
      mod=mod,
      config=config.encoder,
      max_F=t_bins,
    )
    for mod in MODS
  }
  model = MultiModal(encoder_embeddings, list(MODS), list(BEH), "mm", config, eid_list=eid_list)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith(("ln1.weight", "ln2.weight", "encoder_norm.weight")):
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      elif name.endswith(("ln1.bias", "ln2.bias", "encoder_norm.bias")):
        p.copy_(0.1 * torch.randn_like(p))
    model.mask_token.copy_(0.5 * torch.randn_like(model.mask_token))
  model.eval()

  n_max = max(neurons)
  spikes = rng.poisson(1.2, (B, t_bins, n_max)).astype(np.float32)
  for b, r in enumerate(rows):
    spikes[b, :, neurons[r] :] = -1.0  # their loader pads neurons with -1
  beh = {
    "choice": rng.integers(0, 2, B).astype(np.float32),
    "block": rng.integers(0, 3, B).astype(np.float32),
    "wheel": rng.normal(size=(B, t_bins)).astype(np.float32),
    "whisker": rng.normal(size=(B, t_bins)).astype(np.float32),
  }
  batch_eids = [eids[r] for r in rows]
  out = {"spike": spikes, "rows": rows, **beh}
  for i, scheme in enumerate(SCHEMES):
    torch.manual_seed(100 + i)
    np.random.seed(100 + i)
    all_ones = torch.ones(B, t_bins, n_max, dtype=torch.int64)
    all_zeros = all_ones * 0.0
    mod_dict = {}
    for j, mod in enumerate(MODS):
      x = torch.tensor(spikes) if mod == "spike" else torch.tensor(beh[mod])
      if mod in ("choice", "block"):
        x = x[:, None]  # [B, 1], as their batches hold trial variables
      mod_dict[mod] = {
        "inputs_modality": torch.tensor(j),
        "targets_modality": torch.tensor(j),
        "inputs_attn_mask": torch.ones(B, t_bins, dtype=torch.int64),
        "inputs_timestamp": torch.arange(t_bins).repeat(B, 1),
        "targets_timestamp": torch.arange(t_bins).repeat(B, 1),
        "eid": batch_eids,
        "num_neuron": n_max,
        "training_mode": scheme,
        "inputs": x.clone(),
        "targets": x.clone(),
      }
    prepare_mask(mod_dict, scheme, all_ones, all_zeros)
    with torch.no_grad():
      result = model(mod_dict)
    for mod in MODS:
      out[f"{scheme}/mask/{mod}"] = mod_dict[mod]["targets_mask"].numpy().astype(bool)
      pred = mod_dict[mod]["preds"].numpy()
      out[f"{scheme}/pred/{mod}"] = pred.reshape(B, -1) if mod in BEH else pred
      out[f"{scheme}/loss/{mod}"] = np.float64(result.mod_loss[mod].item())
  os.makedirs(args.out, exist_ok=True)
  torch.save(model.state_dict(), os.path.join(args.out, "neds_state.pt"))
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
  trainer_ckpt = {"epoch": 3, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "lr_sched": {}}
  torch.save(trainer_ckpt, os.path.join(args.out, "neds_trainer.pt"))
  np.savez(os.path.join(args.out, "reference.npz"), **out)
  meta = {
    "eid_list": eid_list,
    "batch_eids": batch_eids,
    "include_eids": list(ee.INCLUDE_EIDS),
    "dims": {"width": WIDTH, "n_layers": LAYERS, "n_heads": HEADS, "mlp_width": MLP, "max_bins": t_bins},
    "schemes": list(SCHEMES),
  }
  with open(os.path.join(args.out, "meta.json"), "w") as f:
    json.dump(meta, f, indent=1)


if __name__ == "__main__":
  main()
