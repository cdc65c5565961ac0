"""Ctrl-C in a real `experiments.pretrain` process: the training loop finishes its step,
saves it, says so in one line and exits with 130; re-running resumes and ends bit for bit
as the uninterrupted reference run (tests/test_faults.py's helpers and reference). Ctrl-C
while any program is still being imported: `interrupted` and 130, no traceback."""

import json
import os
import re
import signal
import subprocess
import sys

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


# A sitecustomize that raises KeyboardInterrupt (as Ctrl-C would) when the program first imports
# absl, NumPy or JAX: deterministically inside the program's imports, before entry.run.
_CTRL_C_AT_IMPORT = """
import sys

class CtrlC:
  def find_spec(self, name, path=None, target=None):
    if name in ("absl", "numpy", "jax"):
      raise KeyboardInterrupt
    return None

sys.meta_path.insert(0, CtrlC())
"""


def _programs():
  """Every `python -m` program of experiments, data_builders and benchmarks."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = []
  for package in ("experiments", "data_builders", "benchmarks"):
    for name in sorted(os.listdir(os.path.join(root, package))):
      path = os.path.join(root, package, name)
      if name.endswith(".py") and 'if __name__ == "__main__"' in open(path, encoding="utf-8").read():
        out.append(f"{package}.{name[:-3]}")
  return root, out


def test_ctrl_c_while_a_program_is_imported_prints_interrupted_and_exits_130(tmp_path):
  root, programs = _programs()
  assert {"experiments.pretrain", "experiments.evaluate", "experiments.demo", "data_builders.build"} <= set(programs)
  (tmp_path / "sitecustomize.py").write_text(_CTRL_C_AT_IMPORT)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), root]), MTM_JAX_HUGE_PAGES="0")
  runs = {
    p: subprocess.Popen([sys.executable, "-m", p], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for p in programs
  }
  for program, run in runs.items():
    out, err = (x.decode() for x in run.communicate(timeout=120))
    assert run.returncode == 130, (program, run.returncode, err[-2000:])
    assert err.strip() == "interrupted" and not out, (program, err[-2000:])
  # --verbosity=1 keeps Python's traceback, as for Ctrl-C in main.
  run = subprocess.run(
    [sys.executable, "-m", "experiments.evaluate", "--verbosity=1"], cwd=root, env=env, capture_output=True, text=True
  )
  assert "KeyboardInterrupt" in run.stderr and "Traceback" in run.stderr
