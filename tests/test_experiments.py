"""The absl programs, run as a user runs them (flag files, config overrides)."""

import json
import os
import subprocess
import sys

import numpy as np

from tests.conftest import DATASET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
  result = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def _output(*args) -> list[str]:
  """The lines a program prints (stdout and stderr together); it must succeed."""
  result = subprocess.run(
    [sys.executable, "-m", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600
  )
  assert result.returncode == 0, result.stdout[-3000:]
  return result.stdout.splitlines()


def test_a_short_run_prints_a_line_per_log_step_and_checkpoint_and_verbosity_brings_library_logs_back(
  data_dir, tmp_path
):
  common = [
    "experiments.pretrain",
    "--config=mtm_jax/configs/ndt1.py:tiny",
    f"--config.data.datasets={DATASET}",
    f"--config.data.data_dir={data_dir}",
    "--config.mesh.data=1",
  ]
  steps, log_every, checkpoints = 20, 5, 2
  lines = _output(
    *common,
    f"--workdir={tmp_path / 'quiet'}",
    f"--config.train.steps={steps}",
    f"--config.train.log_every={log_every}",
    "--config.train.checkpoint_every=10",
    "--config.train.eval_every=10",
  )
  text = "\n".join(lines)
  assert len(lines) <= steps // log_every + checkpoints + 5, text  # + devices, session, parameters, first step, spare
  assert [l.split("] ")[-1] for l in lines if "compiled and ran in" in l][0].startswith(f"step 1/{steps} compiled")
  assert [l.split("] ")[-1] for l in lines if "saved checkpoint" in l] == [
    "saved checkpoint of step 10",
    "saved checkpoint of step 20",
  ]
  assert len([l for l in lines if f"/{steps}  loss" in l]) == steps // log_every
  assert "CheckpointManagerOptions" not in text and "orbax" not in text.lower()
  # The run's resolved config is in its workdir, and --print_config prints it (no --workdir needed).
  saved = json.loads((tmp_path / "quiet" / "config.json").read_text())
  assert saved["train"]["steps"] == steps and saved["data"]["data_dir"] == os.path.abspath(data_dir)
  printed = _run(
    *common,
    f"--config.train.steps={steps}",
    f"--config.train.log_every={log_every}",
    "--config.train.checkpoint_every=10",
    "--config.train.eval_every=10",
    "--print_config",
  )
  assert json.loads(printed) == saved

  lines = _output(
    *common,
    f"--workdir={tmp_path / 'verbose'}",
    "--config.train.steps=2",
    "--config.train.checkpoint_every=2",
    "--verbosity=1",
  )
  assert any("CheckpointManagerOptions" in l for l in lines)  # Orbax's INFO is back
  assert not any(l.startswith("D") for l in lines)  # and not DEBUG (absl's own 1)


def test_pretrain_finetune_evaluate_from_flagfiles(study_data_dir, tmp_path):
  workdir = tmp_path / "run"
  flagfile = tmp_path / "tiny.flags"
  flagfile.write_text(
    "\n".join(
      [
        "--config=mtm_jax/configs/ndt1.py:tiny,stitch,temporal",
        f"--workdir={workdir}",
        f"--config.data.data_dir={study_data_dir}",
        "--config.train.steps=6",
        "--config.train.checkpoint_every=3",
        "--config.eval.head_steps=0",  # decoding heads are tested in test_training
        f"--sessions={DATASET}",
      ]
    )
  )
  _run("experiments.pretrain", f"--flagfile={flagfile}")
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
  out = _run("experiments.evaluate", f"--workdir={workdir}", "--plots")
  assert "intra_region" in out and "oracle" in out and "choice_accuracy" in out
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert metrics["masking_mode"] == "temporal" and metrics["step"] == 6
  assert (workdir / "rasters.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

  # Fine-tune on another session by the pretrained path alone; its config travels with it.
  ft = tmp_path / "ft"
  _run(
    "experiments.finetune",
    "--config=mtm_jax/configs/ndt1.py:tiny,stitch,temporal",
    f"--pretrained={workdir}",
    "--dataset=ibl_binned/synthetic_007",
    f"--workdir={ft}",
    f"--config.data.data_dir={study_data_dir}",
    "--config.train.steps=2",
    "--config.train.checkpoint_every=2",
  )
  _run("experiments.evaluate", f"--workdir={ft}")
  metrics = json.loads((ft / "metrics.json").read_text())
  assert metrics["session"] == "ibl_binned/synthetic_007" and metrics["n_neurons"] == 134


def test_unknown_config_key_is_a_clear_error(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.pretrain",
      "--config=mtm_jax/configs/ndt1.py:tiny",
      f"--workdir={tmp_path}",
      "--config.train.stepz=3",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 1
  assert result.stderr.splitlines() == [
    "error: --config.train.stepz: no such field in config.train; did you mean config.train.steps?"
  ], result.stderr
  assert not os.path.exists(tmp_path / "config.json")


def test_a_ctrl_c_outside_the_training_loop_is_one_line_and_status_130():
  program = "from mtm_jax.training import entry\ndef main(argv):\n  raise KeyboardInterrupt\nentry.run(main)"
  result = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 130 and result.stderr.strip().splitlines()[-1] == "interrupted", result.stderr
  assert "Traceback" not in result.stderr


def test_a_bad_input_is_one_error_line_and_its_traceback_is_behind_verbosity(tmp_path):
  missing = tmp_path / "no_run"
  args = [sys.executable, "-m", "experiments.evaluate", f"--workdir={missing}"]
  result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert lines[-2:] == [
    f"error: FileNotFoundError: {missing}: no checkpoints directory ({missing}/checkpoints); "
    "was a model trained there?",
    "(--verbosity=1 shows the traceback)",
  ], result.stderr
  assert "Traceback" not in result.stderr and len(lines) <= 3, result.stderr
  result = subprocess.run(args + ["--verbosity=1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1 and "Traceback (most recent call last)" in result.stderr


def test_poyo_through_the_same_programs(data_dir, tmp_path):
  """POYO configs dispatch to POYO: pretrain on one reaching session, adapt to another by
  unit identification, and evaluate the behaviour R^2 with the ridge baseline."""
  from data_builders import prepare  # pylint: disable=g-import-not-at-top

  prepare.build(["spike_events/reaching_000", "spike_events/reaching_001"], data_dir)
  common = [
    "--config=mtm_jax/configs/poyo.py:tiny",
    f"--config.data.data_dir={data_dir}",
    "--config.train.steps=4",
    "--config.train.log_every=2",
    "--config.train.eval_every=4",
    "--config.train.checkpoint_every=4",
  ]
  pre, new = tmp_path / "poyo", tmp_path / "poyo_new"
  _run("experiments.pretrain", *common, "--sessions=spike_events/reaching_000", f"--workdir={pre}")
  _run(
    "experiments.finetune",
    *common,
    f"--pretrained={pre}",
    "--dataset=spike_events/reaching_001",
    "--mode=unit_id",
    f"--workdir={new}",
  )
  out = _run("experiments.evaluate", f"--workdir={new}")
  assert "behaviour_r2" in out
  metrics = json.loads((new / "metrics.json").read_text())
  assert np.isfinite(metrics["behaviour_r2"]) and np.isfinite(metrics["baseline_r2"]) and metrics["step"] == 4
