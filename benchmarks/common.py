"""Timing, tables and JSON output shared by the benchmarks.

Timings exclude compilation and warm-up: `time_steps` runs `warmup` calls first, then
times `steps` calls, blocking on each result. The machine's load is recorded with the
result (the development machine is shared), so a number can be judged later.
"""

from __future__ import annotations

import json
import os
import platform
import time
from typing import Callable

import jax
import numpy as np


def time_calls(fn: Callable[[], object], *, steps: int, warmup: int = 1, block_each: bool = True) -> dict:
  """Seconds per call of `fn` (which returns arrays to block on): median and min over
  `steps` timed calls, after `warmup` untimed calls (compilation happens there).

  block_each=False dispatches the `steps` calls back to back and blocks once, after the
  last (no host sync between steps, as an accelerator's step loop runs): seconds and
  seconds_min are then both the mean over the loop."""
  if steps < 1 or warmup < 0:
    raise ValueError(f"time_calls: steps must be >= 1 and warmup >= 0, got {steps}, {warmup}")
  t0 = time.perf_counter()
  for _ in range(warmup):
    jax.block_until_ready(fn())
  first = time.perf_counter() - t0
  if not block_each:
    t = time.perf_counter()
    jax.block_until_ready([fn() for _ in range(steps)])
    mean = (time.perf_counter() - t) / steps
    return dict(seconds=mean, seconds_min=mean, steps=steps, warmup_seconds=first)
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return dict(seconds=float(np.median(times)), seconds_min=float(np.min(times)), steps=steps, warmup_seconds=first)


def bools(values: list[str], flag: str) -> list[bool]:
  """A true/false list flag's values as bools; ValueError naming --flag otherwise."""
  table = {"true": True, "false": False}
  bad = [v for v in values if v.lower() not in table]
  if bad:
    raise ValueError(f"--{flag}: expected true or false, got {bad}")
  return [table[v.lower()] for v in values]


def compile_variants(dtype, onednn_flag: list[str]) -> list[dict | None]:
  """The distinct XLA compile options of --onednn=true/false for `dtype`: the programs'
  options (parallel.sharding.compiler_options) for true, None for false."""
  from mtm_jax.parallel import sharding  # pylint: disable=import-outside-toplevel

  variants = []
  for on in bools(onednn_flag, "onednn"):
    options = sharding.compiler_options(jax.devices(), dtype) if on else None
    if options not in variants:
      variants.append(options)
  return variants


def machine() -> dict:
  """What the numbers were measured on, including the load average at the time."""
  return dict(
    platform=platform.platform(),
    processor=platform.processor(),
    cpu_count=os.cpu_count(),
    load_average=os.getloadavg(),
    jax=jax.__version__,
    backend=jax.default_backend(),
    devices=len(jax.devices()),
    xla_flags=os.environ.get("XLA_FLAGS", ""),
    glibc_tunables=os.environ.get("GLIBC_TUNABLES", ""),
  )


def format_table(rows: list[dict], columns: list[str]) -> str:
  """A Markdown table of `rows` over `columns` (floats in 4 significant digits)."""
  fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
  return "\n".join(lines)


def report(name: str, rows: list[dict], columns: list[str], out: str | None, **extra) -> dict:
  """Prints the table and writes {benchmark, machine, rows, **extra} as JSON to `out`."""
  print(f"## {name}  (load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores)")
  print(format_table(rows, columns))
  result = dict(benchmark=name, machine=machine(), rows=rows, **extra)
  if out:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
      json.dump(result, f, indent=1, default=float)
  return result


def load_peak(path: str | None) -> dict:
  """{dtype name: FLOP/s, the fastest of its rows} from a benchmarks.matmul JSON file ({}
  when no path)."""
  if not path:
    return {}
  try:
    with open(path) as f:
      rows = json.load(f)["rows"]
    peak = {}
    for r in rows:  # the fastest row of each dtype (with and without oneDNN)
      peak[r["dtype"]] = max(peak.get(r["dtype"], 0.0), float(r["flops_per_s"]))
    return peak
  except (OSError, KeyError, ValueError, TypeError) as e:
    raise ValueError(
      f"--peak {path}: expected the JSON written by benchmarks.matmul (rows with dtype and flops_per_s): {e}"
    ) from e


def add_peak_fractions(row: dict, peak: dict) -> dict:
  """Adds fraction_of_fp32_peak and fraction_of_dtype_peak (achieved_gflops_per_s over the
  measured matmul peak) to `row` when a peak is known; returns the row."""
  if peak:
    achieved = row["achieved_gflops_per_s"] * 1e9
    row["fraction_of_fp32_peak"] = achieved / peak["float32"]
    row["fraction_of_dtype_peak"] = achieved / peak.get(row["dtype"], float("nan"))
  return row
