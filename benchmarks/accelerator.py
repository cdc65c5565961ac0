"""The accelerator check: one program that, on a GPU machine, in under 10 minutes, prints
the devices, installs the carried wheels, runs the `gpu`-marked tests and the benchmarks
at GPU sizes, and writes every table and JSON under --out ($OUT by default).

  python -m benchmarks.accelerator --fetch_wheels          # here: the wheels into .whl/
  python -m benchmarks.accelerator                         # there (docs/accelerators.md)
  python -m benchmarks.accelerator --dry_run --out=runs/accelerator   # any CPU, tiny sizes

Stages (--stages, in this order): devices, tests, matmul, ndt1, poyo, evaluation, demo.
Each runs in its own process (benchmarks.accelerator_stages), so a stage that fails or
overruns costs only itself, and each is time-boxed: it gets at most its own cap and what
is left of --budget_s; a stage with too little time left is skipped with a note. After
each stage summary.md (the tables, the goals) and results.json are rewritten, so a
killed run still leaves what it measured. This module imports no JAX and nothing of the
project (summary.md's tables use benchmarks.common, which imports only JAX): the
wheels are installed before any of the project is imported.
"""

from __future__ import annotations

import glob
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
import time

from absl import app, flags

STAGES = ("devices", "tests", "matmul", "ndt1", "poyo", "evaluation", "demo")
# Seconds each stage may take at most on the GPU (the dry run: DRY_CAP each).
STAGE_CAP = dict(devices=40, tests=120, matmul=40, ndt1=120, poyo=150, evaluation=120, demo=180)
DRY_CAP = 300  # the dry run has no device time to save; a loaded 2-core CPU is slow
MIN_STAGE_S = 15  # a stage with less time left than this is skipped

# The packages the device image lacks that the check imports (KINDS.md's package list),
# with what they need in turn and the image lacks too, and protobuf: the generated
# modules of tensorflow-metadata and grain, imported with tfds and grain, need a runtime
# at least as new as theirs (6.31.1), which the image's may not be; this one is the
# version tested here. pynwb, ONE-api and iblatlas (real data only) are imported lazily
# by the project and are not carried.
WHEELS = (
  "grain",
  "array_record",
  "portpicker",
  "tensorflow-datasets",
  "dm-tree",
  "immutabledict",
  "promise",
  "simple-parsing",
  "docstring-parser",
  "tensorflow-metadata",
  "googleapis-common-protos",
  "termcolor",
  "toml",
  "ml_collections",
  "tensorboardX",
  "importlib_resources",
  "protobuf",
)
SDIST_ONLY = ("promise",)  # no wheel on the index: built here (pure Python)
PLATFORMS = (
  "manylinux_2_28_x86_64",
  "manylinux_2_27_x86_64",
  "manylinux_2_24_x86_64",
  "manylinux_2_17_x86_64",
  "manylinux2014_x86_64",
  "manylinux1_x86_64",
)
WHEELS_MAX_MIB = 40

_OUT = flags.DEFINE_string("out", os.environ.get("OUT") or "runs/accelerator", "output folder (default $OUT)")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "every stage on the CPU at tiny sizes (a minute or two)")
_BUDGET = flags.DEFINE_float("budget_s", 540.0, "wall-clock seconds for all stages together")
_STAGES = flags.DEFINE_list("stages", list(STAGES), f"stages to run, of {STAGES}")
_WHEELS = flags.DEFINE_string("wheels", ".whl", "folder of wheels to install before the stages (if it exists)")
_FETCH = flags.DEFINE_bool("fetch_wheels", False, "download the wheels the device lacks into --wheels and exit")


def pinned(names=WHEELS) -> list[str]:
  """name==version of each package, at the version installed here (the tested one)."""
  return [f"{n}=={importlib.metadata.version(n)}" for n in names]


def fetch_wheels(folder: str) -> float:
  """Downloads (or, for SDIST_ONLY, builds) the wheels of WHEELS for the device's
  Python 3.12 on x86-64 Linux into `folder`; returns their size in MiB. Raises
  ValueError if they exceed WHEELS_MAX_MIB (the device tool carries 64 MiB in all)."""
  os.makedirs(folder, exist_ok=True)
  binary = [n for n in WHEELS if n not in SDIST_ONLY]
  platforms = [a for p in PLATFORMS for a in ("--platform", p)]
  pip = [sys.executable, "-m", "pip"]
  subprocess.run(
    pip
    + [
      "download",
      "-q",
      "--no-deps",
      "--only-binary=:all:",
      "--python-version",
      "3.12",
      "--implementation",
      "cp",
      *platforms,
      "-d",
      folder,
      *pinned(binary),
    ],
    check=True,
  )
  subprocess.run(pip + ["wheel", "-q", "--no-deps", "-w", folder, *pinned(SDIST_ONLY)], check=True)
  mib = sum(os.path.getsize(p) for p in glob.glob(os.path.join(folder, "*.whl"))) / 2**20
  if mib > WHEELS_MAX_MIB:
    raise ValueError(f"{folder}: the wheels take {mib:.1f} MiB, more than the {WHEELS_MAX_MIB} MiB planned")
  return mib


def install_wheels(folder: str, site: str) -> dict:
  """pip-installs every wheel of `folder` into the folder `site` (no index, no
  dependencies, as the device tool's README says) and returns {site, wheels, seconds};
  {} when `folder` holds none. The stages find it through PYTHONPATH."""
  wheels = sorted(glob.glob(os.path.join(folder, "*.whl")))
  if not wheels:
    return {}
  start = time.time()
  subprocess.run(
    [
      sys.executable,
      "-m",
      "pip",
      "install",
      "-q",
      "--no-index",
      "--no-deps",
      "--no-compile",
      "--no-cache-dir",
      "--upgrade",
      "--target",
      site,
      *wheels,
    ],
    check=True,
  )
  return dict(site=site, wheels=[os.path.basename(w) for w in wheels], seconds=round(time.time() - start, 1))


def stage_command(stage: str, result: str, dry_run: bool, peak: str) -> list[str]:
  """The command line of one stage: pytest for the tests, else a stage process."""
  if stage == "tests":  # the dry run only collects them (from the one file that holds most)
    where = ["tests/test_accelerator.py", "--collect-only"] if dry_run else ["tests"]
    return [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-n", "0", *where]
  return [sys.executable, "-m", "benchmarks.accelerator_stages", stage, result, "dry" if dry_run else "gpu", peak]


def tests_result(log_text: str) -> dict:
  """{rows: [{outcome, count}]} from pytest's last summary line in `log_text`."""
  lines = [l for l in log_text.splitlines() if re.search(r"\b(passed|failed|error|errors|collected)\b", l)]
  counts = re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected|tests? collected)", lines[-1] if lines else "")
  return dict(
    title="gpu-marked tests (pytest -m gpu)",
    columns=["outcome", "count"],
    rows=[dict(outcome=o, count=int(n)) for n, o in counts],
  )


def run_stage(stage: str, seconds: float, scratch: str, log, env: dict, dry_run: bool) -> dict:
  """Runs one stage for at most `seconds`; returns its result (rows so far when it
  overran) with status ("ok", "failed (exit N)" or "timed out after S s") and seconds."""
  result = os.path.join(scratch, f"{stage}.json")
  peak = os.path.join(scratch, "matmul.json")
  start = time.time()
  log.write(f"\n===== {stage} (at most {seconds:.0f} s) =====\n")
  log.flush()
  try:
    proc = subprocess.run(
      stage_command(stage, result, dry_run, peak),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      timeout=seconds,
      env=env,
    )
    output, status = proc.stdout, "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
  except subprocess.TimeoutExpired as e:
    output = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
    status = f"timed out after {seconds:.0f} s"
  log.write(output)
  log.flush()
  if stage == "tests":
    out = tests_result(output)
  else:
    try:
      with open(result) as f:
        out = json.load(f)
    except (OSError, ValueError):
      out = dict(rows=[])
  if status == "ok" and not out.get("rows"):
    status = "failed (no rows)"
  return dict(out, status=status, seconds=round(time.time() - start, 1))


# (stage, label, rows' filter, value of a row, goal: "min" or "max", threshold)
GOALS = (
  (
    "ndt1",
    "NDT1 paper bf16 train step MFU",
    dict(mode="train", dtype="bfloat16"),
    "fraction_of_dtype_peak",
    "min",
    0.35,
  ),
  (
    "poyo",
    "POYO large bf16 train step MFU",
    dict(size="large", dtype="bfloat16"),
    "fraction_of_dtype_peak",
    "min",
    0.25,
  ),
  (
    "poyo",
    "POYO small bf16 train step MFU",
    dict(size="small", dtype="bfloat16"),
    "fraction_of_dtype_peak",
    "min",
    0.15,
  ),
  ("evaluation", "evaluation at paper size, s", dict(size="paper", task="total"), "seconds", "max", 60.0),
  ("evaluation", "evaluation at demo size, s", dict(size="demo", task="total"), "seconds", "max", 10.0),
  ("demo", "make demo's trainings and evaluations, s", dict(), "seconds", "max", None),
)


def goal_rows(results: dict) -> list[dict]:
  """One row per GOALS entry: the best value measured (highest MFU, lowest seconds) and
  whether it meets the goal ("n/a" when nothing was measured)."""
  rows = []
  for stage, label, where, key, kind, threshold in GOALS:
    values = [
      r[key]
      for r in results["stages"].get(stage, {}).get("rows", [])
      if key in r and all(r.get(k) == v for k, v in where.items())
    ]
    best = (max if kind == "min" else min)(values) if values else None
    met = "n/a" if best is None or threshold is None else (best >= threshold if kind == "min" else best <= threshold)
    rows.append(
      dict(
        goal=label,
        target=f"{'>=' if kind == 'min' else '<'} {threshold}" if threshold else "-",
        best="not measured" if best is None else best,
        met=met,
      )
    )
  return rows


def summary(results: dict, header: str) -> str:
  """summary.md: the goals, then each stage's status and table."""
  from benchmarks import common  # pylint: disable=import-outside-toplevel  # imports jax, not the project

  lines = [header, "", "## goals", "", common.format_table(goal_rows(results), ["goal", "target", "best", "met"]), ""]
  for stage, r in results["stages"].items():
    lines += [f"## {stage}: {r.get('title', '')}", "", f"status: {r['status']}, {r.get('seconds', 0)} s", ""]
    if r.get("rows"):
      lines += [common.format_table(r["rows"], r.get("columns") or list(r["rows"][0])), ""]
  return "\n".join(lines) + "\n"


def write(out: str, results: dict, header: str) -> None:
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(results, f, indent=1, default=str)
  with open(os.path.join(out, "summary.md"), "w") as f:
    f.write(summary(results, header))


def run_all(out: str, stages, budget_s: float, dry_run: bool, wheels: str) -> dict:
  """Installs the wheels, runs `stages` within `budget_s` and writes out/summary.md,
  out/results.json and out/log.txt; returns the results."""
  bad = [s for s in stages if s not in STAGES]
  if bad:
    raise ValueError(f"--stages: unknown {bad}; expected some of {STAGES}")
  deadline = time.time() + budget_s
  os.makedirs(out, exist_ok=True)
  header = (
    f"# accelerator check{' (dry run: CPU, tiny sizes)' if dry_run else ''}\n\n"
    f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}, budget {budget_s:.0f} s"
  )
  with tempfile.TemporaryDirectory(prefix="accelerator_") as scratch, open(os.path.join(out, "log.txt"), "w") as log:
    installed = install_wheels(wheels, os.path.join(scratch, "site")) if os.path.isdir(wheels) else {}
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if installed:
      env["PYTHONPATH"] = os.pathsep.join(filter(None, [installed["site"], os.getcwd(), env.get("PYTHONPATH")]))
    if dry_run:  # on the CPU, compiling at XLA's backend level 0 as the tests do (about 4x faster)
      env["JAX_PLATFORMS"] = "cpu"
      env["XLA_FLAGS"] = " ".join(filter(None, [env.get("XLA_FLAGS"), "--xla_backend_optimization_level=0"]))
    results = dict(dry_run=dry_run, date=time.strftime("%Y-%m-%d"), wheels=installed, stages={})
    for stage in stages:
      left = deadline - time.time()
      if left < MIN_STAGE_S:
        results["stages"][stage] = dict(status=f"skipped: {max(left, 0):.0f} s of the budget left", rows=[])
      else:
        cap = DRY_CAP if dry_run else STAGE_CAP[stage]
        results["stages"][stage] = run_stage(stage, min(cap, left), scratch, log, env, dry_run)
      print(f"{stage}: {results['stages'][stage]['status']}", flush=True)
      write(out, results, header)
  with open(os.path.join(out, "summary.md")) as f:
    print(f.read())
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _FETCH.value:
    print(f"{_WHEELS.value}: {fetch_wheels(_WHEELS.value):.1f} MiB of wheels")
    return
  results = run_all(_OUT.value, _STAGES.value, _BUDGET.value, _DRY_RUN.value, _WHEELS.value)
  if any(r["status"].startswith(("failed", "timed out")) for r in results["stages"].values()):
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
