"""One stage of the accelerator check (benchmarks/accelerator.py), in its own process:

  python -m benchmarks.accelerator_stages STAGE RESULT.json gpu|dry PEAK.json

writes {title, columns, rows} to RESULT.json after every row (a stage stopped at its time
limit keeps the rows it finished). PEAK.json is the matmul stage's result (the other
stages' MFU is achieved FLOP/s over its rate of the same dtype). Each stage reuses the
benchmark modules' measure functions; only one of those modules is imported per process
(they define absl flags). "dry" runs the same code on the CPU at tiny sizes.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time

from absl import flags

# Per stage, the GPU sizes and the dry run's. NDT1 rows: (mode, dtype, batch, attention
# dropout or None for the config's); POYO rows: (size, dtype, batch).
SIZES = dict(
  gpu=dict(
    matmul=dict(size=8192, steps=10, dtypes=("float32", "bfloat16")),
    ndt1=dict(
      size="paper",
      bins=100,
      neurons=668,
      regions=5,
      steps=10,
      warmup=2,
      block_each=False,
      rows=(
        ("train", "bfloat16", 256, None),
        ("train", "bfloat16", 512, None),
        ("train", "bfloat16", 1024, None),
        ("train", "float32", 256, None),
        ("train", "bfloat16", 512, 0.0),
        ("eval", "bfloat16", 1024, None),
      ),
    ),
    poyo=dict(
      units=100,
      spikes=2000,
      queries=100,
      steps=5,
      warmup=2,
      block_each=False,
      rows=(
        ("small", "bfloat16", 64),
        ("small", "bfloat16", 128),
        ("small", "bfloat16", 256),
        ("large", "bfloat16", 64),
        ("large", "bfloat16", 128),
        ("large", "bfloat16", 256),
      ),
    ),
    evaluation=dict(sizes=("demo", "paper"), neurons=700, trials=180, regions=5),
    demo=dict(preset="demo", steps=None),
  ),
  dry=dict(
    matmul=dict(size=128, steps=2, dtypes=("float32", "bfloat16")),
    ndt1=dict(
      size="tiny",
      bins=20,
      neurons=16,
      regions=2,
      steps=1,
      warmup=1,
      block_each=False,
      rows=(("train", "bfloat16", 2, None), ("eval", "bfloat16", 2, None)),
    ),
    poyo=dict(units=8, spikes=40, queries=10, steps=1, warmup=1, block_each=False, rows=(("tiny", "bfloat16", 2),)),
    evaluation=dict(sizes=("tiny",), neurons=12, trials=3, regions=2),
    demo=dict(preset="tiny", steps=1),
  ),
)


class Recorder:
  """Collects a stage's rows and rewrites its RESULT.json after each one."""

  def __init__(self, path: str, title: str, columns: list[str], **extra):
    self.path, self.result = path, dict(title=title, columns=columns, rows=[], **extra)
    self.save()

  def add(self, row: dict) -> None:
    self.result["rows"].append(row)
    self.result["columns"] = list(dict.fromkeys(self.result["columns"] + list(row)))
    print(row, flush=True)
    self.save()

  def save(self) -> None:
    with open(self.path, "w") as f:
      json.dump(self.result, f, indent=1, default=float)


def _error_row(error: Exception, **row) -> dict:
  """A row for a setting that failed (e.g. out of device memory): its first line."""
  return dict(row, error=f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200]}")


# Modules of the carried wheels (benchmarks/accelerator.py WHEELS) the project imports.
CARRIED_IMPORTS = ("grain", "array_record", "tensorflow_datasets", "ml_collections", "tensorboardX")


def _importable(name: str) -> str:
  """ "ok" or the first line of the error importing module `name`."""
  try:
    __import__(name)
    return "ok"
  except Exception as e:  # pylint: disable=broad-except  # any failure is the answer
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def devices(rec: Recorder, sizes: dict, peak: dict) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  import flax, optax, orbax.checkpoint  # pylint: disable=import-outside-toplevel,multiple-imports

  del sizes, peak
  versions = dict(
    python=platform.python_version(),
    jax=jax.__version__,
    flax=flax.__version__,
    optax=optax.__version__,
    orbax=orbax.checkpoint.__version__,
  )
  try:
    smi = subprocess.run(
      ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.sm", "--format=csv,noheader"],
      capture_output=True,
      text=True,
      timeout=20,
    ).stdout.strip()
  except (OSError, subprocess.TimeoutExpired) as e:
    smi = f"nvidia-smi: {e}"
  rec.result.update(
    versions=versions,
    nvidia_smi=smi,
    backend=jax.default_backend(),
    imports={name: _importable(name) for name in CARRIED_IMPORTS},
    sys_path=sys.path,
  )
  for d in jax.devices():
    rec.add(dict(id=d.id, platform=d.platform, kind=d.device_kind, backend=jax.default_backend(), **versions))


def matmul(rec: Recorder, sizes: dict, peak: dict) -> None:
  from benchmarks import matmul as bench  # pylint: disable=import-outside-toplevel

  del peak
  for dtype in sizes["dtypes"]:
    rec.add(bench.measure(sizes["size"], dtype, sizes["steps"]))


def ndt1(rec: Recorder, sizes: dict, peak: dict) -> None:
  from benchmarks import common, ndt1_step  # pylint: disable=import-outside-toplevel
  from mtm_jax.configs import ndt1 as ndt1_config  # pylint: disable=import-outside-toplevel

  for mode, dtype, batch, attention_dropout in sizes["rows"]:
    config = ndt1_config.get_config("paper")
    config.model.size, config.model.dtype = sizes["size"], dtype
    if attention_dropout is not None:
      config.model.attention_dropout = attention_dropout
    setting = dict(
      size=sizes["size"], mode=mode, dtype=dtype, batch=batch, attention_dropout=config.model.attention_dropout
    )
    try:
      row = ndt1_step.measure(
        config,
        mode,
        batch,
        sizes["bins"],
        sizes["neurons"],
        sizes["regions"],
        sizes["steps"],
        sizes["warmup"],
        block_each=sizes["block_each"],
      )
    except Exception as e:  # pylint: disable=broad-except  # out of memory at a large batch: noted, next row
      rec.add(_error_row(e, **setting))
      continue
    rec.add(common.add_peak_fractions(dict(setting, **row, tokens_per_s=row["bins_per_s"]), peak))


def poyo(rec: Recorder, sizes: dict, peak: dict) -> None:
  from benchmarks import common, poyo_step  # pylint: disable=import-outside-toplevel
  from mtm_jax.configs import poyo as poyo_config  # pylint: disable=import-outside-toplevel
  from mtm_jax.datasets.events import buckets as buckets_lib  # pylint: disable=import-outside-toplevel

  for size, dtype, batch in sizes["rows"]:
    config = poyo_config.get_config(size)
    config.model.dtype, config.model.remat = dtype, False
    length = buckets_lib.bucket_length(sizes["spikes"] + 2 * sizes["units"], config.data.token_buckets)
    try:
      row = poyo_step.measure(
        config,
        batch,
        length,
        units=sizes["units"],
        spikes=sizes["spikes"],
        queries=sizes["queries"],
        steps=sizes["steps"],
        warmup=sizes["warmup"],
        block_each=sizes["block_each"],
      )
    except Exception as e:  # pylint: disable=broad-except  # out of memory at a large batch: noted, next row
      rec.add(_error_row(e, size=size, dtype=dtype, batch=batch))
      continue
    rec.add(common.add_peak_fractions(dict(row, tokens_per_s=batch * length / row["seconds"]), peak))


def evaluation(rec: Recorder, sizes: dict, peak: dict) -> None:
  from benchmarks import evaluation as bench  # pylint: disable=import-outside-toplevel

  for size in sizes["sizes"]:
    for row in bench.measure(size, sizes["neurons"], sizes["trials"], sizes["regions"], peak=peak):
      rec.add(dict(size=size, **row))


def demo(rec: Recorder, sizes: dict, peak: dict) -> None:
  from experiments import demo as demo_program  # pylint: disable=import-outside-toplevel

  del peak
  with tempfile.TemporaryDirectory(prefix="accelerator_demo_") as work:
    start = time.time()
    report = demo_program.run_demo(
      "ibl_binned/synthetic_000",
      os.path.join(work, "tfds"),
      os.path.join(work, "runs"),
      sizes["preset"],
      sizes["steps"],
    )
  rec.result["report"] = report
  metrics = ("co_smoothing_bps", "forward_prediction_bps", "inter_region_bps", "intra_region_bps")
  rec.add(
    dict(
      preset=sizes["preset"],
      steps=report["steps"],
      seconds=time.time() - start,
      **{f"mtm_{m}": report["mtm"][m] for m in metrics},
      **{f"temporal_{m}": report["temporal"][m] for m in metrics},
    )
  )


STAGES = dict(devices=devices, matmul=matmul, ndt1=ndt1, poyo=poyo, evaluation=evaluation, demo=demo)
TITLES = dict(
  devices="devices and versions",
  matmul="matmul peak (jnp.dot, square)",
  ndt1="NDT1 + MtM train step and eval forward (synthetic counts)",
  poyo="POYO train step (synthetic 1 s windows)",
  evaluation="four-metric evaluation, compilation included",
  demo="make demo on this device (data build, two trainings, evaluations)",
)


def main(argv: list[str]) -> None:
  if len(argv) != 5 or argv[1] not in STAGES or argv[3] not in SIZES:
    raise SystemExit(
      f"usage: python -m benchmarks.accelerator_stages {{{'|'.join(STAGES)}}} RESULT.json "
      f"{{gpu|dry}} PEAK.json; got {argv[1:]}"
    )
  _, stage, result, mode, peak_path = argv
  flags.FLAGS.mark_as_parsed()  # the benchmark modules' flags keep their defaults; none is read
  from benchmarks import common  # pylint: disable=import-outside-toplevel

  peak = common.load_peak(peak_path) if os.path.exists(peak_path) else {}
  rec = Recorder(result, TITLES[stage], [], mode=mode)
  STAGES[stage](rec, SIZES[mode].get(stage, {}), peak)


if __name__ == "__main__":
  main(sys.argv)
