"""TS2 window starts as torch_brain's SequentialFixedWindowSampler makes them, with real torch.

Run in the BrainWideBench environment (parity/.bwb-venv: torch, no torch_brain): reads
intervals from a JSON file ({"starts": [...], "ends": [...], "window": w, "step": s}), repeats
the sampler's steps on each (torch.arange in float64, keep t + window <= end, one last window
end - window when the last kept one ends early) and writes every start with float.hex ("short" where the sampler raises), so
that tests/test_bwb_windows.py compares them bit for bit with mtm_jax.bwb.windows.

usage: python bwb_windows.py intervals.json starts.json
"""

import json
import sys

import numpy as np
import torch


def sampler_starts(start, end, window, step):
  """The starts of the windows SequentialFixedWindowSampler yields for one interval; "short"
  where it raises (the interval is shorter than the window)."""
  if end - start < window:
    return "short"
  kept = [t for t in torch.arange(start, end, step, dtype=torch.float64) if t + window <= end]
  out = [t.item() for t in kept]
  if (kept[-1] + window).item() < end:
    out.append(end - window)
  return out


def _hex(starts):
  return starts if isinstance(starts, str) else [float(t).hex() for t in starts]


def main(src, dst):
  with open(src) as f:
    spec = json.load(f)
  starts = np.array([float.fromhex(x) for x in spec["starts"]])
  ends = np.array([float.fromhex(x) for x in spec["ends"]])
  per_interval = [_hex(sampler_starts(s, e, spec["window"], spec["step"])) for s, e in zip(starts, ends, strict=True)]
  with open(dst, "w") as f:
    json.dump({"capability": torch.backends.cpu.get_cpu_capability(), "starts": per_interval}, f)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2])
