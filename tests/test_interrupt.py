"""Ctrl-C in a real `experiments.pretrain` process: the training loop finishes its step,
saves it, says so in one line and exits with 130; re-running resumes and ends bit for bit
as the uninterrupted reference run (tests/test_faults.py's helpers and reference)."""

import json
import os
import re
import signal

from tests import test_faults
from tests.test_faults import EVERY, STEPS, _assert_bitwise_equal, _env, _finish, _params, _pretrain, _steps
from tests.test_faults import _wait_for_checkpoint_after

cache_dir, reference = test_faults.cache_dir, test_faults.reference  # its fixtures: one reference run per session


def test_ctrl_c_saves_the_step_in_one_line_exits_130_and_a_rerun_resumes_bit_for_bit(
  data_dir, cache_dir, reference, tmp_path
):
  workdir, env = str(tmp_path / "run"), _env(cache_dir)
  run = _pretrain(data_dir, workdir, env)
  _wait_for_checkpoint_after(run, workdir, 0)
  run.send_signal(signal.SIGINT)
  code, err = _finish(run)
  assert code == 130, err[-3000:]
  assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
  stopped = max(_steps(workdir))
  assert EVERY <= stopped < STEPS
  lines = [l.split("] ")[-1] for l in err.splitlines()]
  assert lines[-1] == f"interrupted (Ctrl-C): saved the checkpoint of step {stopped}; re-run to resume", err[-3000:]
  assert any(re.match(r"Ctrl-C: stopping after this step and saving it", l) for l in lines), err[-3000:]
  data = json.load(open(os.path.join(workdir, "checkpoints", str(stopped), "data", "metadata")))
  assert data == {"next_index": stopped}

  code, err = _finish(_pretrain(data_dir, workdir, env))
  assert code == 0, err[-3000:]
  assert f"resumed from step {stopped}" in err
  _assert_bitwise_equal(_params(workdir), _params(reference))
