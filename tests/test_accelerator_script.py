"""benchmarks/accelerator.py's dry run (every stage on the CPU at tiny sizes), so the
device check cannot rot between the sessions that have a GPU."""

import json
import os
import subprocess
import sys
import zipfile

import pytest

from benchmarks import accelerator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fake_wheel(folder) -> str:
  """A minimal pure-Python wheel (module accelerator_fake_wheel) in `folder`."""
  name, dist = "accelerator_fake_wheel", "accelerator_fake_wheel-0.1.dist-info"
  path = os.path.join(folder, f"{name}-0.1-py3-none-any.whl")
  files = {
    f"{name}/__init__.py": "VALUE = 7\n",
    f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n",
    f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
  }
  files[f"{dist}/RECORD"] = "".join(f"{f},,\n" for f in files) + f"{dist}/RECORD,,\n"
  with zipfile.ZipFile(path, "w") as z:
    for f, text in files.items():
      z.writestr(f, text)
  return path


def _dry_run(tmp_path, stages) -> dict:
  wheels = tmp_path / "whl"
  wheels.mkdir()
  _fake_wheel(str(wheels))
  out = tmp_path / "out"
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "benchmarks.accelerator",
      "--dry_run",
      f"--out={out}",
      f"--stages={','.join(stages)}",
      f"--wheels={wheels}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert sorted(os.listdir(out)) == ["log.txt", "results.json", "summary.md"]  # the device tool returns <= 8 files
  with open(out / "results.json") as f:
    results = json.load(f)
  assert results["dry_run"] and results["wheels"]["wheels"] == ["accelerator_fake_wheel-0.1-py3-none-any.whl"]
  assert list(results["stages"]) == list(stages)
  summary = (out / "summary.md").read_text()
  for stage, result in results["stages"].items():
    assert result["status"] == "ok" and result["rows"], (stage, result["status"])
    assert f"## {stage}:" in summary
  assert "## goals" in summary
  return results


def test_dry_run_writes_every_stage(tmp_path):
  results = _dry_run(tmp_path, [s for s in accelerator.STAGES if s != "demo"])
  stages = results["stages"]
  assert stages["devices"]["rows"][0]["platform"] == "cpu"
  assert any(os.path.basename(p).startswith("site") for p in stages["devices"]["sys_path"])  # the carried wheels
  assert {r["outcome"] for r in stages["tests"]["rows"]} >= {"tests collected"}
  assert {r["dtype"] for r in stages["matmul"]["rows"]} == {"float32", "bfloat16"}
  for stage in ("ndt1", "poyo"):
    assert all(r["seconds"] > 0 and 0 < r["fraction_of_dtype_peak"] for r in stages[stage]["rows"]), stage
  assert [r["task"] for r in stages["evaluation"]["rows"]][-1] == "total"
  assert {r["goal"] for r in accelerator.goal_rows(results)} == {g[1] for g in accelerator.GOALS}


@pytest.mark.slow
def test_dry_run_demo_stage(tmp_path):
  demo = _dry_run(tmp_path, ["demo"])["stages"]["demo"]
  assert demo["rows"][0]["steps"] == 1 and demo["report"]["preset"] == "tiny"


def test_unknown_stage_is_an_error(tmp_path):
  with pytest.raises(ValueError, match="--stages: unknown"):
    accelerator.run_all(str(tmp_path), ["matmul", "gpu_magic"], 10, True, str(tmp_path / "none"))


def test_project_imports_without_the_uncarried_packages():
  """pynwb, ONE-api and iblatlas are not carried to the GPU machine: the programs the
  check runs must import without them (they are imported only for NWB / IBL sources)."""
  blocked = ("pynwb", "hdmf", "one", "iblatlas")
  code = (
    f"import sys\nfor m in {blocked!r}:\n  sys.modules[m] = None\n"
    "import experiments.demo, data_builders.prepare, mtm_jax.training.trainer, mtm_jax.tasks.registry\n"
    "import mtm_jax.evaluation.ndt1, benchmarks.accelerator_stages\n"
  )
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
