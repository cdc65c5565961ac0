"""BrainWideBench's official scorer (ibl-bwb-eval 0.1.0) run in its own environment (`make
bwb-env`: parity/.bwb-venv, or the interpreter in $MTM_BWB_PYTHON), for the tests that compare
mtm_jax.bwb with it; a test calling these is skipped, with the reason, where it is absent."""

import json
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-6  # the scorer accumulates in float32, mtm_jax.bwb in float64


def approx(value):
  """`value` to 1e-6, absolute or relative, whichever is larger: the scorer's float32 sums
  carry a relative error of about 1e-7, so a score of -23 bits per spike (a model far from the
  data) differs by 1.5e-6 in absolute terms."""
  return pytest.approx(value, abs=TOLERANCE, rel=TOLERANCE)


def scorer_python() -> str:
  python = os.environ.get("MTM_BWB_PYTHON") or os.path.join(ROOT, "parity", ".bwb-venv", "bin", "python")
  if not os.path.exists(python):
    pytest.skip("no BrainWideBench scorer environment (parity/.bwb-venv or $MTM_BWB_PYTHON): run `make bwb-env`")
  return python


def run(args, timeout=300) -> str:
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  result = subprocess.run(
    [scorer_python(), *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def scores(pred_dir, gt_dir, out) -> tuple[dict, dict]:
  """The official scorer's (raw, aggregate) of a submission folder, keys as tuples."""
  run([os.path.join(ROOT, "parity", "bwb_score.py"), str(pred_dir), str(gt_dir), str(out)])
  with open(out) as f:
    data = json.load(f)
  return {tuple(k): v for k, v in data["raw"]}, {tuple(k): v for k, v in data["aggregate"]}
