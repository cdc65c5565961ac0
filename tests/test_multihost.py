"""Two processes on 127.0.0.1 (2 CPU devices each, gloo collectives) pretrain and score a tiny NDT1
with experiments.pretrain on a (data 2, model 2) mesh: the data axis spans the processes,
each loads only its rows of every batch, and the checkpoint is written collectively. Both
end with the same parameters, those of the same run in one process, in one checkpoint."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import pytest

from mtm_jax.tasks import registry
from mtm_jax.configs import ndt1 as ndt1_config
from mtm_jax.parallel import mesh as mesh_lib, sharding
from mtm_jax.training import checkpoint
from tests.conftest import DATASET
from tests.test_sharding import comparable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 10
OVERRIDES = dict(steps=STEPS, log_every=5, eval_every=STEPS, checkpoint_every=5)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_programs(program: str, args, workdir, single):
  """Runs experiments.<program> as the two processes of a multi-host job (2 CPU devices
  each) in `workdir` and, alongside, in one process with 4 devices in `single`; returns
  their outputs."""
  port = _free_port()
  args = list(args) + ["--jax_cpu_collectives_implementation=gloo"]
  job = [
    f"--workdir={workdir}",
    f"--coordinator_address=127.0.0.1:{port}",
    "--num_processes=2",
    "--jax_num_cpu_devices=2",
  ]
  commands = [job + [f"--process_id={i}"] for i in (0, 1)] + [[f"--workdir={single}", "--jax_num_cpu_devices=4"]]
  # Compiled without LLVM optimisations: much faster to compile, the same arithmetic.
  env = dict(
    os.environ,
    PYTHONPATH=os.pathsep.join([ROOT] + os.environ.get("PYTHONPATH", "").split(os.pathsep)),
    XLA_FLAGS="--xla_backend_optimization_level=0",
  )
  # Each process writes to a file of its own: with pipes read one after another, a process whose
  # unread output filled its pipe (64 KiB) would block while its peer waits for it in a collective.
  logs = [tempfile.TemporaryFile("w+", encoding="utf-8") for _ in commands]
  procs = [
    subprocess.Popen(
      [sys.executable, "-m", "tests.multihost_worker", program, *args, *c],
      cwd=ROOT,
      env=env,
      stdout=log,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for c, log in zip(commands, logs)
  ]
  try:
    deadline = time.monotonic() + 900
    for p in procs:
      p.wait(timeout=max(deadline - time.monotonic(), 1))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  outputs = []
  for log in logs:
    log.seek(0)
    outputs.append(log.read())
    log.close()
  for c, p, out in zip(commands, procs, outputs):
    out = re.sub(r"\nExtension modules: [^\n]*", "", out)  # a crash's list of 200 modules hides its cause
    assert p.returncode == 0, f"{c} failed:\n{out[-5000:]}"
  return outputs


def _launch(data_dir, workdir, single):
  """The NDT1 pretraining of test_two_processes_train_like_one (see _run_programs)."""
  args = [
    "--config=mtm_jax/configs/ndt1.py:tiny",
    f"--config.data.datasets={DATASET}",
    f"--config.data.data_dir={data_dir}",
    "--config.mesh.data=2",
    "--config.mesh.model=2",
    *(f"--config.train.{k}={v}" for k, v in OVERRIDES.items()),
  ]
  return _run_programs("pretrain", args, workdir, single)


def _params(workdir, process=0) -> dict:
  return dict(np.load(os.path.join(workdir, f"params_process{process}.npz")))


def test_two_processes_train_like_one(data_dir, tmp_path):
  workdir, single = str(tmp_path / "two"), str(tmp_path / "one")
  outputs = _launch(data_dir, workdir, single)
  for out in outputs[:2]:
    assert "of 2: 2 local of 4 devices" in out, out[-3000:]

  # Both processes hold the same parameters at the end.
  p0, p1 = _params(workdir, 0), _params(workdir, 1)
  assert p0.keys() == p1.keys() and "layers/0/attn/query/kernel" in p0
  for name in p0:
    np.testing.assert_array_equal(p0[name], p1[name], err_msg=name)

  # One checkpoint directory, written once, loadable here (one process, 8 devices).
  assert checkpoint.latest_step(workdir) == STEPS
  trained = registry.load_trained(workdir)
  assert trained.step == STEPS and dict(trained.mesh.shape) == {"data": 2, "model": 2}
  for path, x in jax.tree_util.tree_flatten_with_path(trained.params)[0]:
    name = sharding.path_name(path)
    np.testing.assert_array_equal(np.asarray(x), p0[name], err_msg=name)
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    steps = [json.loads(line)["step"] for line in f]
  assert steps == [5, 10, 10], steps  # process 0 alone logs: losses at 5 and 10, validation at 10

  # The same run in one process on a (2, 2) mesh: each process fed its own rows.
  reference = _params(single)
  for name in filter(comparable, p0):
    np.testing.assert_allclose(p0[name], reference[name], rtol=1e-4, atol=1e-6, err_msg=name)

  # The model scored by two processes (each places its rows of every chunk of masks) and,
  # a copy of it, by one: the same four metrics.
  copy = os.path.join(os.path.dirname(workdir), "copy")
  shutil.copytree(workdir, copy)
  outputs = _run_programs("evaluate", ["--nodecoding"], workdir, copy)
  two, one = (json.loads(open(os.path.join(w, "metrics.json"), encoding="utf-8").read()) for w in (workdir, copy))
  for metric in ("co_smoothing_bps", "forward_prediction_bps", "inter_region_bps", "intra_region_bps"):
    assert np.isfinite(one[metric]), metric
    np.testing.assert_allclose(two[metric], one[metric], rtol=1e-5, err_msg=metric)


def test_multihost_flag_errors():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl.testing import flagsaver  # pylint: disable=g-import-not-at-top
  from experiments import multihost  # pylint: disable=g-import-not-at-top

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  cases = [
    (dict(coordinator_address="127.0.0.1:1", num_processes=2), "also needs --process_id"),
    (dict(coordinator_address="127.0.0.1:1", num_processes=2, process_id=2), "--process_id=2: expected 0 <="),
    (dict(process_id=1), "need --coordinator_address"),
  ]
  for values, message in cases:
    with flagsaver.flagsaver(**values):
      with pytest.raises(ValueError, match=message):
        multihost.initialize()
  multihost.initialize()  # no flags: one process, nothing to start
  assert jax.process_count() == 1


def test_mesh_of_a_bigger_run_fits_this_machine():
  config = ndt1_config.get_config("tiny")
  config.mesh.data, config.mesh.model = 16, 2  # a 32-device run's checkpoint, read on 8 devices
  assert dict(mesh_lib.from_config(config, fit=True).shape) == {"data": 4, "model": 2}
  with pytest.raises(ValueError, match="config.mesh: data=16 x model=2 needs more than the 8 devices"):
    mesh_lib.from_config(config)  # training must not shrink a mesh silently
  config.mesh.model = 16
  assert dict(mesh_lib.from_config(config, fit=True).shape) == {"data": 8, "model": 1}


POYO_STEPS = 6


def test_two_processes_train_and_evaluate_poyo_like_one(data_dir, tmp_path):
  """POYO through experiments.pretrain and experiments.evaluate on two processes (a data
  axis of 4 over both): each builds only its rows of every training and evaluation batch;
  the parameters and the scores are those of one process with 4 devices."""
  from data_builders import prepare  # pylint: disable=g-import-not-at-top

  session = "spike_events/reaching_001"
  prepare.build([session], data_dir)
  workdir, single = str(tmp_path / "two"), str(tmp_path / "one")
  args = [
    "--config=mtm_jax/configs/poyo.py:tiny",
    f"--config.data.datasets={session}",
    f"--config.data.data_dir={data_dir}",
    "--config.mesh.data=4",
    "--config.mesh.model=1",
    f"--config.train.steps={POYO_STEPS}",
    "--config.train.log_every=3",
    f"--config.train.eval_every={POYO_STEPS}",
    "--config.train.checkpoint_every=3",
  ]
  outputs = _run_programs("pretrain", args, workdir, single)
  for out in outputs[:2]:
    assert "of 2: 2 local of 4 devices" in out, out[-3000:]
  p0, p1, reference = _params(workdir, 0), _params(workdir, 1), _params(single)
  assert p0.keys() == p1.keys() and "unit_emb/embedding" in p0
  for name in p0:
    np.testing.assert_array_equal(p0[name], p1[name], err_msg=name)
    np.testing.assert_allclose(p0[name], reference[name], rtol=1e-4, atol=1e-6, err_msg=name)

  # The two-process model scored by two processes and, a copy of it, by one.
  copy = str(tmp_path / "copy")
  shutil.copytree(workdir, copy)
  outputs = _run_programs("evaluate", ["--nodecoding"], workdir, copy)
  two = json.loads(open(os.path.join(workdir, "metrics.json"), encoding="utf-8").read())
  one = json.loads(open(os.path.join(copy, "metrics.json"), encoding="utf-8").read())
  assert two["step"] == one["step"] == POYO_STEPS and np.isfinite(one["behaviour_r2"])
  np.testing.assert_allclose(two["behaviour_r2"], one["behaviour_r2"], rtol=1e-5)
  assert f"behaviour_r2: {two['behaviour_r2']:.4f}" in outputs[1]  # process 1 reports the same scores
