"""NDT1-stitch trained by torch.optim.AdamW on batches of different sessions (PyTorch side).

The reference NDT1 (reference_ndt1.py, as make_reference lays it out) with one stitcher
pair per session (sessions of 7, 11 and 9 neurons: one parameter per session, as the
authors' code has for distinct neuron counts), no special tokens, no dropout. Each step
trains on one session's batch (temporal masking with make_reference's masker; the loss
is the Poisson NLL summed over every entry); the other sessions' stitchers get no
gradient (None), so PyTorch's AdamW skips them: no moment decay, no weight decay, no
step count. Writes to --out:
  ndt1_train.npz            the initial state dict (export_torch format)
  ndt1_train.<k>.npz        the state dict after step k
  ndt1_train.io.npz         input/<k> (masked) and counts/<k> [B, T, N_s], session/<k>
Its meta holds the optimiser's settings and the step order.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import export_torch  # noqa: E402
import make_reference  # noqa: E402

NEURONS = (7, 11, 9)
ORDER = (0, 1, 0, 0, 2, 1, 0, 2)  # session of each step: session 2 first trains at step 4
ADAMW = dict(lr=3e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True, help="directory for the files")
  args = parser.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  torch.set_num_threads(1)
  reference = make_reference.authors_code(args.out)
  torch.manual_seed(0)
  gen = torch.Generator().manual_seed(0)
  rng = np.random.default_rng(0)
  model = reference.NDT1(
    list(NEURONS), **make_reference.NDT1_SIZE, stitch_channels=16, use_prompt=False, embed_dropout=0.0, dropout=0.0
  )
  make_reference._perturb_norms(model, gen)  # pylint: disable=protected-access
  model.train()
  meta = dict(kind="ndt1", num_neurons=list(NEURONS), order=list(ORDER), adamw=ADAMW, stitch=16)
  meta["attributes"] = dict(n_heads=make_reference.NDT1_SIZE["n_heads"])
  export_torch.save_state_dict(model.state_dict(), os.path.join(args.out, "ndt1_train.npz"), meta)
  optimiser = torch.optim.AdamW(model.parameters(), **ADAMW)
  io = {}
  for k, s in enumerate(ORDER):
    n = NEURONS[s]
    counts = rng.poisson(1.5, size=(3, make_reference.N_BINS, n)).astype(np.float32)
    x = make_reference._mask(rng, counts, np.arange(n) % 3, "temporal")  # pylint: disable=protected-access
    log_rates = model(torch.from_numpy(x), masking_mode="temporal", session_row=0)
    loss = torch.sum(torch.exp(log_rates) - torch.from_numpy(counts) * log_rates)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    export_torch.save_state_dict(model.state_dict(), os.path.join(args.out, f"ndt1_train.{k}.npz"), meta)
    io.update({f"input/{k}": x, f"counts/{k}": counts, f"session/{k}": np.int32(s)})
  np.savez(os.path.join(args.out, "ndt1_train.io.npz"), **io)
  print(f"{args.out}: {len(ORDER)} AdamW steps on sessions {ORDER}")


if __name__ == "__main__":
  main()
