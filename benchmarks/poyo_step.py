"""POYO training step against the matmul peak, for the small (1.3M, batch 128) and large
(11.8M, batch 64) configs.

  python -m benchmarks.poyo_step --peak=runs/bench/matmul.json --out=runs/bench/poyo.json

Synthetic 1 s windows generated in-process: --units units (~100), --spikes spikes per
window (~2000) plus a start and an end token per unit, padded to --tokens (default: the
config's token bucket that holds them), --queries behaviour queries (100). LAMB as in
training. Model FLOPs count the padded tokens (the model computes them).
"""

from __future__ import annotations

from absl import flags
import jax
import jax.numpy as jnp
from flax import nnx

from benchmarks import common, flops, synthetic
from mtm_jax.tasks import poyo as poyo_task
from mtm_jax.configs import poyo as poyo_config
from mtm_jax.datasets.events import buckets as buckets_lib
from mtm_jax.models import poyo
from mtm_jax.training import entry, precision, step as step_lib

_CONFIGS = flags.DEFINE_list(
  "configs",
  ["small:128", "large:64:remat"],
  "size:batch[:remat]; a ':remat' row always recomputes its layers (the large config at "
  "batch 64 needs 36.5 GB of activations without it)",
)
_UNITS = flags.DEFINE_integer("units", 100, "units per window")
_SPIKES = flags.DEFINE_integer("spikes", 2000, "spikes per 1 s window")
_TOKENS = flags.DEFINE_integer("tokens", 0, "padded token length (0 = the config's bucket)")
_QUERIES = flags.DEFINE_integer("queries", 100, "behaviour queries per window")
_DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "compute dtypes")
_REMAT = flags.DEFINE_list("remat", ["false"], "remat settings (true/false) of the rows without ':remat'")
_ONEDNN = flags.DEFINE_list(
  "onednn",
  ["true"],
  "train step compiled with the programs' CPU options "
  "(parallel.sharding.compiler_options: oneDNN matmuls in bfloat16) and/or without",
)
_STEPS = flags.DEFINE_integer("steps", 3, "timed steps per row")
_WARMUP = flags.DEFINE_integer("warmup", 2, "untimed steps per row (compilation)")
_PEAK = flags.DEFINE_string("peak", None, "benchmarks.matmul JSON: adds fraction-of-peak columns")
_OUT = flags.DEFINE_string("out", None, "JSON output path")


def measure(
  config,
  batch_size: int,
  length: int,
  compiler_options: dict | None = None,
  *,
  units: int = 100,
  spikes: int = 2000,
  queries: int = 100,
  steps: int = 3,
  warmup: int = 2,
  block_each: bool = True,
) -> dict:
  """One row: timing and model FLOPs of `config`'s train step on `batch_size` synthetic
  windows of `units` units and `spikes` spikes padded to `length` tokens, `queries`
  behaviour queries each (block_each: see common.time_calls)."""
  dtype = precision.compute_dtype(config.model.dtype)
  model = poyo.from_config(config, units, 1, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  tx = poyo_task.make_optimizer(config, params)
  tasks = dict(config.model.tasks)
  step = jax.jit(
    poyo_task.make_train_step(graphdef, tx, tasks=tasks, dtype=dtype),
    donate_argnums=0,
    compiler_options=compiler_options,
  )
  batch = jax.tree.map(jnp.asarray, synthetic.poyo_batch(batch_size, units, spikes, length, queries))
  key = jax.random.key(0)
  holder = [step_lib.init_state(params, tx)]

  def call():
    holder[0], metrics = step(holder[0], batch, None, key)
    return metrics["loss"]

  t = common.time_calls(call, steps=steps, warmup=warmup, block_each=block_each)
  hp = model.hparams
  forward = flops.poyo_forward_flops(
    batch=batch_size,
    tokens=length,
    queries=queries,
    latents=model.n_latent_steps * hp.latents_per_step,
    dim=hp.dim,
    depth=hp.depth,
    cross_heads=hp.cross_heads,
    self_heads=hp.self_heads,
    head_dim=hp.head_dim,
    n_outputs=sum(tasks.values()),
  )
  model_flops = flops.train_flops(forward)
  return dict(
    size=config.model.size,
    params_m=poyo.count_params(model) / 1e6,
    batch=batch_size,
    tokens=length,
    dtype=dtype.name,
    remat=bool(config.model.remat),
    onednn=bool(compiler_options),
    seconds=t["seconds"],
    windows_per_s=batch_size / t["seconds"],
    model_gflop=model_flops / 1e9,
    achieved_gflops_per_s=model_flops / t["seconds"] / 1e9,
    compile_seconds=t["warmup_seconds"],
  )


def main(argv):
  del argv
  peak = common.load_peak(_PEAK.value)
  rows = []
  for item in _CONFIGS.value:
    size, batch_size, *suffix = item.split(":")
    if suffix not in ([], ["remat"]) or not batch_size.isdigit():
      raise ValueError(f"--configs: expected size:batch or size:batch:remat, got {item!r}")
    for dtype in _DTYPES.value:
      for remat in [True] if suffix else common.bools(_REMAT.value, "remat"):
        for options in common.compile_variants(dtype, _ONEDNN.value):
          config = poyo_config.get_config(size)
          config.model.dtype, config.model.remat = dtype, remat
          length = _TOKENS.value or buckets_lib.bucket_length(
            _SPIKES.value + 2 * _UNITS.value, config.data.token_buckets
          )
          row = measure(
            config,
            int(batch_size),
            length,
            options,
            units=_UNITS.value,
            spikes=_SPIKES.value,
            queries=_QUERIES.value,
            steps=_STEPS.value,
            warmup=_WARMUP.value,
          )
          rows.append(common.add_peak_fractions(row, peak))
          print(row, flush=True)
  columns = [
    "size",
    "params_m",
    "batch",
    "tokens",
    "dtype",
    "remat",
    "onednn",
    "seconds",
    "windows_per_s",
    "model_gflop",
    "achieved_gflops_per_s",
  ] + (["fraction_of_fp32_peak", "fraction_of_dtype_peak"] if peak else [])
  common.report("POYO train step", rows, columns + ["compile_seconds"], _OUT.value, peak_flops_per_s=peak)


if __name__ == "__main__":
  entry.run(main)
