"""Surviving faults: exact resume after SIGKILL and SIGTERM (real `experiments.pretrain`
processes), damaged checkpoints, non-finite steps, bad configurations. One uninterrupted
reference run (a subprocess, one CPU device) is shared by the tests of this module."""

import fcntl
import glob
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from absl import flags
from flax import nnx
from ml_collections import config_flags
import ml_collections

from mtm_jax.tasks import registry
from mtm_jax.configs import ndt1 as ndt1_config
from mtm_jax.training import checkpoint, entry, stopping, trainer
from tests.conftest import DATASET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, EVERY = 40, 5  # tiny NDT1, a checkpoint every 5 steps (the newest 3 are kept)


def _train_flags(data_dir, workdir) -> list[str]:
  return [
    "--config=mtm_jax/configs/ndt1.py:tiny",
    f"--workdir={workdir}",
    f"--config.data.datasets={DATASET}",
    f"--config.data.data_dir={data_dir}",
    f"--config.train.steps={STEPS}",
    f"--config.train.checkpoint_every={EVERY}",
    f"--config.train.log_every={EVERY}",
    f"--config.train.eval_every={STEPS}",
    "--config.mesh.data=1",
  ]


def _config(data_dir, **train):
  """The config the subprocess runs train with (for in-process runs in its workdirs)."""
  c = ndt1_config.get_config("tiny")
  c.data.datasets, c.data.data_dir, c.mesh.data = DATASET, data_dir, 1
  c.train.update(dict(steps=STEPS, checkpoint_every=EVERY, log_every=EVERY, eval_every=STEPS))
  c.train.update(train)
  return c


def _env(cache_dir) -> dict:
  """The subprocesses' environment: this checkout on the path, one CPU device, and a
  shared persistent compilation cache (the same executable for every run)."""
  env = dict(
    os.environ,
    PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
    JAX_COMPILATION_CACHE_DIR=str(cache_dir),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PLATFORMS="cpu",
  )
  env.pop("XLA_FLAGS", None)
  return env


def _pretrain(data_dir, workdir, env, *extra_flags) -> subprocess.Popen:
  return subprocess.Popen(
    [sys.executable, "-m", "experiments.pretrain", *_train_flags(data_dir, workdir), *extra_flags],
    cwd=ROOT,
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )


def _finish(process, timeout=600) -> tuple[int, str]:
  _, err = process.communicate(timeout=timeout)
  return process.returncode, err


def _steps(workdir) -> list[int]:
  path = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(path) if n.isdigit()) if os.path.isdir(path) else []


def _wait_for_checkpoint_after(process, workdir, step, timeout=600) -> None:
  """Returns once a finished checkpoint of a step > `step` exists (the run goes on)."""
  t0 = time.time()
  while not any(s > step for s in _steps(workdir)):
    assert process.poll() is None, f"the run ended early: {process.stderr.read()[-2000:]}"
    assert time.time() - t0 < timeout
    time.sleep(0.02)


def _params(workdir, step=None):
  return jax.device_get(nnx.to_pure_dict(registry.load_trained(workdir, step).params))


def _assert_bitwise_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def _shared_dir(tmp_path_factory, name):
  """A directory every pytest-xdist worker of this session sees (one run of pytest)."""
  base = tmp_path_factory.getbasetemp()
  path = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name
  path.mkdir(exist_ok=True)
  return path


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return _shared_dir(tmp_path_factory, "faults_jax_cache")


@pytest.fixture(scope="module")
def reference(data_dir, cache_dir, tmp_path_factory):
  """Workdir of an uninterrupted run of experiments.pretrain (steps 30, 35, 40 kept), run
  once per test session: the first worker to get here runs it, the others wait for it."""
  root = _shared_dir(tmp_path_factory, "faults_reference")
  workdir = str(root / "run")
  with open(root / "lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (root / "done").exists():
      shutil.rmtree(workdir, ignore_errors=True)
      code, err = _finish(_pretrain(data_dir, workdir, _env(cache_dir)))
      assert code == 0, err[-3000:]
      (root / "done").write_text("ok")
  assert _steps(workdir) == [30, 35, 40]
  return workdir


def test_sigterm_then_sigkill_resume_bit_for_bit(data_dir, cache_dir, reference, tmp_path):
  """SIGTERM after the first checkpoint: the run saves its current step and exits with
  the documented code; restarted, it is SIGKILLed at whatever step it has reached after
  its next checkpoint; restarted again, it ends with the reference's parameters, bit for
  bit (same device count)."""
  workdir, env = str(tmp_path / "run"), _env(cache_dir)
  run = _pretrain(data_dir, workdir, env)
  _wait_for_checkpoint_after(run, workdir, 0)
  run.send_signal(signal.SIGTERM)
  code, err = _finish(run)
  assert code == stopping.PREEMPTED_EXIT_CODE, err[-3000:]
  assert "SIGTERM: saved the checkpoint of step" in err
  stopped = max(_steps(workdir))
  assert EVERY <= stopped < STEPS
  # The SIGTERM checkpoint holds the data position and PRNG key of its step.
  item = lambda name: json.load(open(os.path.join(workdir, "checkpoints", str(stopped), name, "metadata")))
  assert item("data") == {"next_index": stopped}
  assert item("progress") == dict(step=stopped, rng=checkpoint.key_record(jax.random.key(0)), nonfinite_in_a_row=0)

  run = _pretrain(data_dir, workdir, env)  # resumes; killed without warning
  _wait_for_checkpoint_after(run, workdir, stopped)
  run.kill()
  assert _finish(run)[0] == -signal.SIGKILL
  assert max(_steps(workdir)) < STEPS

  code, err = _finish(_pretrain(data_dir, workdir, env))
  assert code == 0, err[-3000:]
  assert "resumed from step" in err
  _assert_bitwise_equal(_params(workdir), _params(reference))


def test_a_full_disk_stops_the_run_at_the_next_step_in_one_line_and_a_rerun_resumes(
  data_dir, cache_dir, reference, tmp_path
):
  """The checkpoint of step 20 fails with ENOSPC in Orbax's background writer (every file
  of it and of later steps fails, as on a full disk): the run stops at a step before its
  next checkpoint (30) with one final line and status 1, no traceback; step 10 stays
  intact. Re-run with space, it resumes from step 10
  and ends with the uninterrupted run's parameters, bit for bit."""
  workdir, env, every = str(tmp_path / "run"), _env(cache_dir), "--config.train.checkpoint_every=10"
  full = subprocess.run(
    [sys.executable, "-m", "tests.full_disk_worker", "20", *_train_flags(data_dir, workdir), every],
    cwd=ROOT,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    timeout=600,
  )
  lines = full.stdout.strip().splitlines()
  assert full.returncode == 1, full.stdout[-3000:]
  directory = os.path.join(workdir, "checkpoints")
  match = re.fullmatch(
    rf"error: checkpoint of step 20 could not be written to {re.escape(directory)}: \[Errno 28\] "
    r"No space left on device; training stopped at step (\d+); the newest checkpoint is step 10 "
    r"\(re-run to resume once the cause is fixed\)",
    lines[-1],
  )
  assert match, lines[-5:]
  assert 20 < int(match.group(1)) < 30  # noticed at a step boundary, not at the next save
  assert not [l for l in lines[:-1] if l.startswith("error:")] and "Traceback" not in full.stdout
  assert len(lines) < 40, full.stdout  # Orbax's own error lines are one line each
  # The failed save's tmp directory is removed, or (still written to by Orbax's abandoned
  # writes) left to be moved aside by the re-run; no finished step but 10.
  assert [n for n in os.listdir(directory) if checkpoint.TMP_MARK not in n] == ["10"]
  assert registry.load_trained(workdir).step == 10

  code, err = _finish(_pretrain(data_dir, workdir, env, every))
  assert code == 0, err[-3000:]
  assert "resumed from step 10" in err
  _assert_bitwise_equal(_params(workdir), _params(reference))


# ------------------------------------------------------------------------------------------
# Damaged checkpoints
# ------------------------------------------------------------------------------------------


def _truncate_array_file(step_dir):
  files = [f for f in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)]
  biggest = max(files, key=os.path.getsize)
  os.truncate(biggest, os.path.getsize(biggest) // 2)


DAMAGES = {
  "truncated array file": _truncate_array_file,
  "missing array metadata": lambda d: os.remove(os.path.join(d, "state", "_METADATA")),
  "unreadable config": lambda d: open(os.path.join(d, "config", "metadata"), "w").write('{"seed": '),
  "half-written (tmp dir)": lambda d: os.rename(d, d + ".orbax-checkpoint-tmp-1234567"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_latest_checkpoint_is_reported_and_skipped(reference, tmp_path, caplog, damage):
  workdir = str(tmp_path / "damaged")
  shutil.copytree(reference, workdir)
  DAMAGES[damage](os.path.join(workdir, "checkpoints", str(STEPS)))
  with caplog.at_level(logging.WARNING):
    trained = registry.load_trained(workdir)
  assert trained.step == STEPS - EVERY
  _assert_bitwise_equal(jax.device_get(nnx.to_pure_dict(trained.params)), _params(reference, STEPS - EVERY))
  warning = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
  assert str(STEPS) in warning and os.path.join(workdir, "checkpoints") in warning
  assert "damaged" in warning or "half-written" in warning or "do not read" in warning
  # Analysis reads only: nothing is moved or deleted.
  assert len(os.listdir(os.path.join(workdir, "checkpoints"))) == 3


def test_training_resumes_past_a_damaged_checkpoint_and_keeps_the_good_one(data_dir, cache_dir, reference, tmp_path):
  """The damaged newest checkpoint is moved aside (so retention, which deletes the
  oldest first, cannot delete the good one for it); training resumes from the previous
  one and ends where the uninterrupted run ended, bit for bit."""
  workdir = str(tmp_path / "resume")
  shutil.copytree(reference, workdir)
  _truncate_array_file(os.path.join(workdir, "checkpoints", str(STEPS)))
  code, err = _finish(_pretrain(data_dir, workdir, _env(cache_dir), "--config.train.keep_checkpoints=2"))
  assert code == 0, err[-3000:]
  assert f"checkpoint of step {STEPS} in {os.path.join(workdir, 'checkpoints')} is damaged and skipped" in err
  assert f"resumed from step {STEPS - EVERY}" in err
  assert os.listdir(os.path.join(workdir, checkpoint.DAMAGED_DIR))[0].startswith(f"{STEPS}.")
  assert _steps(workdir) == [STEPS - EVERY, STEPS]  # max_to_keep=2: the good 35 and the new 40
  _assert_bitwise_equal(_params(workdir), _params(reference))


def test_no_readable_checkpoint_is_a_clear_error(reference, tmp_path):
  workdir = str(tmp_path / "all_damaged")
  shutil.copytree(reference, workdir)
  for step in _steps(workdir):
    _truncate_array_file(os.path.join(workdir, "checkpoints", str(step)))
  with pytest.raises(FileNotFoundError, match="no readable checkpoint"):
    registry.load_trained(workdir)
  with pytest.raises(ValueError, match=f"checkpoint of step {STEPS} is damaged"):
    registry.load_trained(workdir, STEPS)


# ------------------------------------------------------------------------------------------
# Bad configuration and inputs: clear errors before anything is written
# ------------------------------------------------------------------------------------------


def _snapshot(workdir) -> dict:
  return {p: (os.path.getsize(p), os.path.getmtime(p)) for p in glob.glob(os.path.join(workdir, "**"), recursive=True)}


def _edit_sessions(workdir, edit):
  for path in glob.glob(os.path.join(workdir, "checkpoints", "*", "sessions", "metadata")):
    records = json.load(open(path))
    edit(records)
    json.dump(records, open(path, "w"))


def _other_model(c):
  c.model.embed_mult = 3


def _batch_not_divisible(c):
  c.data.batch_size, c.mesh.data = 12, -1  # 8 devices


def _no_nonfinite_steps(c):
  c.train.max_nonfinite_steps = 0


@pytest.mark.parametrize(
  "change, message",
  [
    (_other_model, "config.model.embed_mult: checkpoint 2, this config 3"),
    (_batch_not_divisible, "config.data.batch_size: 12 is not divisible by the 8 devices"),
    (_no_nonfinite_steps, "config.train.max_nonfinite_steps: expected a positive integer"),
  ],
)
def test_bad_config_fails_before_touching_the_run(data_dir, reference, tmp_path, change, message):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  before = _snapshot(workdir)
  config = _config(data_dir)
  change(config)
  with pytest.raises(ValueError, match=message):
    trainer.train(registry.get("ndt1"), config, workdir)
  assert _snapshot(workdir) == before


def test_data_set_with_other_neurons_than_the_checkpoint_is_a_clear_error(data_dir, reference, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  _edit_sessions(workdir, lambda records: records[0]["region_names"].pop())  # as if rebuilt with 113 neurons
  before = _snapshot(workdir)
  with pytest.raises(ValueError, match="region_names = 113 entries in the checkpoint but 114 entries in the data set"):
    trainer.train(registry.get("ndt1"), _config(data_dir), workdir)
  assert _snapshot(workdir) == before


def test_unknown_config_key_in_an_override_names_the_key(monkeypatch, capsys):
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "config", flag_values=values)
  argv = ["prog", "--config=mtm_jax/configs/ndt1.py:tiny", "--config.optimizer.lerning_rate=1e-3"]
  with pytest.raises(flags.Error, match="lerning_rate"):
    values(argv)
  # The programs' parsing (entry.parse_flags; config_flags reads the overrides from sys.argv): one line, status 1.
  monkeypatch.setattr(sys, "argv", argv)
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "config", flag_values=values)
  with pytest.raises(SystemExit) as exit_:
    entry.parse_flags(argv, values)
  assert exit_.value.code == 1
  assert capsys.readouterr().err == (
    "error: --config.optimizer.lerning_rate: no such field in config.optimizer; "
    "did you mean config.optimizer.learning_rate?\n"
  )


# ------------------------------------------------------------------------------------------
# Non-finite steps
# ------------------------------------------------------------------------------------------


def test_evaluating_on_a_data_set_with_other_neurons_is_a_clear_error(reference, monkeypatch):
  from mtm_jax.datasets import pipeline  # pylint: disable=g-import-not-at-top
  from mtm_jax.evaluation import ndt1 as ndt1_eval  # pylint: disable=g-import-not-at-top

  trained = registry.load_trained(reference)
  rebuilt = lambda *args, **kwargs: dict(spikes=np.zeros((4, 100, 113), np.int32))  # one neuron fewer
  monkeypatch.setattr(pipeline, "load_split", rebuilt)
  with pytest.raises(ValueError, match="113 neurons, the model's session row 0 has 114; was the data set rebuilt"):
    ndt1_eval.evaluate_session(trained, DATASET, "test")


def test_a_checkpoint_without_newer_model_options_gets_their_defaults():
  # A model config saved before config.model.dtype and remat existed: fine-tuning from it
  # keeps every saved field and takes the defaults of the ones it lacks.
  saved = ml_collections.ConfigDict({"size": "tiny", "tasks": {"hand_velocity": 2}})
  defaults = ml_collections.ConfigDict({"size": "small", "tasks": {"cursor": 3}, "dtype": "float32", "remat": False})
  merged = checkpoint.with_defaults(saved, defaults)
  assert merged.to_dict() == {"size": "tiny", "tasks": {"hand_velocity": 2}, "dtype": "float32", "remat": False}
  assert saved.to_dict() == {"size": "tiny", "tasks": {"hand_velocity": 2}}  # not modified
