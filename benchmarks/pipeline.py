"""Input pipeline throughput against the training steps' consumption rate.

  python -m benchmarks.pipeline --data_dir=/tmp/bench_tfds --ndt1=runs/bench/ndt1.json \
      --poyo=runs/bench/poyo.json --out=runs/bench/pipeline.json

Builds (once, if missing) a synthetic binned session and a synthetic event session into
--data_dir, then measures trials (windows) per second of:
- ndt1 source: the TFDS array_record data source read through grain, batched (no preloading);
- ndt1 training: the training pipeline (split loaded once, then shuffled, padded
  batches from grain, as mtm_jax.training.trainer reads them), with the load time apart;
- poyo training: POYO's training windows (unit dropout, tokenisation, buckets).
With --ndt1/--poyo (the benchmarks' JSON) each row also shows how many times faster it
is than the float32 train step consumes examples.
"""

from __future__ import annotations

import json
import time

from absl import flags
import grain

from benchmarks import common
from data_builders import prepare
from mtm_jax.tasks import poyo as poyo_task
from mtm_jax.configs import poyo as poyo_config
from mtm_jax.datasets import pipeline, provenance
from mtm_jax.datasets.events import batches as batches_lib
from mtm_jax.datasets.events import tfds
from mtm_jax.datasets.events import windows as windows_lib
from mtm_jax.training import entry

_DATA_DIR = flags.DEFINE_string("data_dir", "/tmp/mtm_jax_bench_tfds", "TFDS data_dir (built if missing)")
_BINNED = flags.DEFINE_string("binned", "ibl_binned/synthetic_000", "binned session")
_EVENTS = flags.DEFINE_string("events", "spike_events/reaching_000", "event session")
_BATCHES = flags.DEFINE_integer("batches", 50, "batches timed per row")
_NDT1 = flags.DEFINE_string("ndt1", None, "benchmarks.ndt1_step JSON (consumption rate)")
_POYO = flags.DEFINE_string("poyo", None, "benchmarks.poyo_step JSON (consumption rate)")
_OUT = flags.DEFINE_string("out", None, "JSON output path")


def _rate(batches, n: int, batch_size: int) -> float:
  """Examples per second of pulling n batches from an iterable."""
  it = iter(batches)
  next(it)  # start-up (threads, first read) excluded
  t0 = time.perf_counter()
  for _ in range(n):
    next(it)
  return n * batch_size / (time.perf_counter() - t0)


def _consumption(path: str | None, match: dict, per_second: str) -> float | None:
  if not path:
    return None
  with open(path) as f:
    rows = json.load(f)["rows"]
  for r in rows:
    if all(r.get(k) == v for k, v in match.items()):
      return float(r[per_second])
  raise ValueError(f"{path}: no row with {match}")


def main(argv):
  del argv
  prepare.build([_BINNED.value, _EVENTS.value], _DATA_DIR.value)
  rows = []
  batch = 16
  ndt1_rate = _consumption(_NDT1.value, dict(mode="train", dtype="float32", remat=False), "bins_per_s")
  ndt1_rate = None if ndt1_rate is None else ndt1_rate / 100  # trials per second (100 bins each)

  source = provenance.open_built(_BINNED.value, _DATA_DIR.value).as_data_source(split="train")
  ds = (
    grain.MapDataset.source(source)
    .seed(0)
    .shuffle()
    .repeat()
    .batch(batch, drop_remainder=True)
    .to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
  )
  rows.append(
    dict(
      pipeline="ndt1 source (TFDS data source -> grain)",
      examples_per_s=_rate(ds, _BATCHES.value, batch),
      consumed_per_s=ndt1_rate,
    )
  )

  t0 = time.perf_counter()
  session = pipeline.load_sessions([_BINNED.value], _DATA_DIR.value, splits=("train",))[0]
  load = time.perf_counter() - t0
  arrays = session.splits["train"]
  ds = pipeline.iterate_from(pipeline.training_batches(arrays, batch, 0, n_neurons=session.info.n_neurons), 0)
  rows.append(
    dict(
      pipeline="ndt1 training batches (preloaded split)",
      examples_per_s=_rate(ds, _BATCHES.value, batch),
      consumed_per_s=ndt1_rate,
      load_seconds=load,
      examples_loaded=len(arrays["spikes"]),
    )
  )

  config = poyo_config.get_config("small")
  sessions = [tfds.load_event_session(_EVENTS.value, _DATA_DIR.value)]
  data = windows_lib.prepare(sessions, "train", poyo_task.window_config(config, train=True))
  poyo_batch = config.data.batch_size
  poyo_rate = _consumption(_POYO.value, dict(size="small", dtype="float32", remat=False), "windows_per_s")
  ds = pipeline.iterate_from(batches_lib.training_batches(data, poyo_batch, 0), 0)
  rows.append(
    dict(
      pipeline="poyo small training windows",
      examples_per_s=_rate(ds, max(5, _BATCHES.value // 10), poyo_batch),
      consumed_per_s=poyo_rate,
    )
  )
  for r in rows:
    if r.get("consumed_per_s"):
      r["ratio"] = r["examples_per_s"] / r["consumed_per_s"]
  common.report(
    "input pipeline", rows, ["pipeline", "examples_per_s", "consumed_per_s", "ratio", "load_seconds"], _OUT.value
  )


if __name__ == "__main__":
  entry.run(main)
