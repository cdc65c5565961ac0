"""The spike-token MtM benchmarks run on a tiny config and fill their tables with positive,
finite numbers. The step benchmark runs in a process of its own: its module defines absl
flags (--out, --steps...) that other benchmark modules imported by the suite define too."""

import json
import math
import os
import subprocess
import sys

from benchmarks import poyo_mtm_eval

_STEP_ROW = """
import json
from benchmarks import poyo_mtm_step
from mtm_jax.configs import poyo_mtm as poyo_mtm_config
row = poyo_mtm_step.measure(poyo_mtm_config.get_config("tiny"), 2, units=12, steps=1, warmup=1, profile=True)
print(json.dumps(dict(row=row, columns=poyo_mtm_step.COLUMNS + poyo_mtm_step.PROFILE_COLUMNS)))
"""


def _positive(row: dict, columns: list[str]):
  for c in columns:
    assert c in row, c
    if isinstance(row[c], float):
      assert math.isfinite(row[c]) and row[c] > 0, (c, row[c])


def test_poyo_mtm_step_with_its_profile():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root, MTM_JAX_HUGE_PAGES="0")
  done = subprocess.run([sys.executable, "-c", _STEP_ROW], cwd=root, env=env, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  out = json.loads(done.stdout.strip().splitlines()[-1])
  row = out["row"]
  _positive(row, out["columns"] + ["compile_seconds"])
  assert row["tokens"] >= 2 * 12 and row["queries"] == 64
  assert math.isclose(row["model_gflop"], sum(row[f"{p}_gflop"] for p in ("encoder", "processor", "decoder")))


def test_poyo_mtm_evaluation_times_the_four_tasks():
  rows = poyo_mtm_eval.measure("tiny", units=10, trials=3, regions=2, max_masks=1, widths=[0.02, 0.01])
  assert [r["task"] for r in rows] == ["co_smoothing", "forward_prediction", "inter_region", "intra_region", "total"]
  for r in rows:
    _positive(r, [c for c in poyo_mtm_eval.COLUMNS if c in r and c != "compile_seconds"])
    assert r["compile_seconds"] >= 0
  assert rows[0]["extrapolated"] and rows[0]["masks"] == 10 and rows[0]["copies"] == 30
