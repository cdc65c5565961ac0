"""--datasets names the data sets of a run in pretrain, finetune and evaluate; the earlier
names (pretrain's and evaluate's --sessions, finetune's --dataset) are aliases of it: the
same flag, the same value."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARSE = """
import json, sys
from tests import program_flags
spec = json.loads(sys.argv[1])
print(json.dumps({p: program_flags.program_flags(p, parse)["parsed"] for p, parse in spec.items()}))
"""
CONFIG = ["--config=mtm_jax/configs/ndt1.py:tiny", "--workdir=w"]
PROGRAMS = {
  "experiments.pretrain": (CONFIG, ["sessions"]),
  "experiments.finetune": (CONFIG, ["dataset", "sessions"]),
  "experiments.evaluate": (["--workdir=w"], ["sessions"]),
}


def test_datasets_and_its_earlier_names_are_one_flag():
  spec = {
    program: [[*base, "--datasets=a,b"], *[[*base, f"--{o}=a,b"] for o in old]]
    for program, (base, old) in PROGRAMS.items()
  }
  env = dict(os.environ, MTM_JAX_HUGE_PAGES="0")
  result = subprocess.run(
    [sys.executable, "-c", PARSE, json.dumps(spec)], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300
  )
  assert result.returncode == 0, result.stderr[-3000:]
  for program, runs in json.loads(result.stdout.splitlines()[-1]).items():
    new, *olds = runs
    assert new["datasets"] == [["a", "b"] if program == "experiments.evaluate" else "a,b", True], program
    for name, old in zip(PROGRAMS[program][1], olds):
      assert old["datasets"][0] == new["datasets"][0], (program, name)  # the same value
      assert old[name][1] and not new[name][1], (program, name)  # given by its old name
