"""The absl programs, run as a user runs them (flag files, config overrides)."""

import json
import os
import subprocess
import sys

from tests.conftest import DATASET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
  result = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def test_pretrain_from_flagfile_then_evaluate(data_dir, tmp_path):
  workdir = tmp_path / "run"
  flagfile = tmp_path / "tiny.flags"
  flagfile.write_text("\n".join([
      "--config=mtm_jax/configs/ndt1.py:tiny,temporal",
      f"--workdir={workdir}",
      f"--config.data.datasets={DATASET}",
      f"--config.data.data_dir={data_dir}",
      "--config.train.steps=6",
      "--config.train.checkpoint_every=3",
  ]))
  _run("experiments.pretrain", f"--flagfile={flagfile}")
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
  out = _run("experiments.evaluate", f"--workdir={workdir}")
  assert "intra_region" in out and "oracle" in out
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert metrics["masking_mode"] == "temporal" and metrics["step"] == 6


def test_unknown_config_key_is_a_clear_error(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "experiments.pretrain", "--config=mtm_jax/configs/ndt1.py:tiny",
       f"--workdir={tmp_path}", "--config.train.stepz=3"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert "stepz" in result.stderr
