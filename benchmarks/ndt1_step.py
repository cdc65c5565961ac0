"""NDT1 + MtM training step and evaluation forward pass, against the matmul peak.

  python -m benchmarks.matmul --out=runs/bench/matmul.json
  python -m benchmarks.ndt1_step --peak=runs/bench/matmul.json --out=runs/bench/ndt1.json

Defaults: the paper's model (5 x 512, 8 heads, MLP 1024), batch 16, 100 bins, 668
neurons in 5 regions, MtM masking, AdamW; synthetic Poisson counts generated in-process.
Each row is one (mode, dtype, remat) setting: seconds per step (median of --steps after
--warmup untimed calls), bins per second, analytic model FLOPs (benchmarks.flops) and
XLA's own count, achieved FLOP/s and its fraction of the measured peak of that dtype.
"""

from __future__ import annotations

from absl import flags
import jax
import jax.numpy as jnp
from flax import nnx

from benchmarks import common, flops, synthetic
from mtm_jax.tasks import ndt1 as ndt1_task
from mtm_jax import masking
from mtm_jax.configs import ndt1 as ndt1_config
from mtm_jax.models import ndt1
from mtm_jax.training import entry, precision, step as step_lib

_SIZE = flags.DEFINE_enum("size", "paper", sorted(ndt1.PRESETS), "model size (mtm_jax.models.ndt1.PRESETS)")
_BATCH = flags.DEFINE_integer("batch", 16, "trials per step")
_BINS = flags.DEFINE_integer("bins", 100, "bins per trial")
_NEURONS = flags.DEFINE_integer("neurons", 668, "neurons of the session")
_REGIONS = flags.DEFINE_integer("regions", 5, "brain regions")
_DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "compute dtypes to measure")
_REMAT = flags.DEFINE_list("remat", ["false"], "remat settings to measure (true/false)")
_MODES = flags.DEFINE_list("modes", ["train", "eval"], "train and/or eval")
_ONEDNN = flags.DEFINE_list(
  "onednn",
  ["true"],
  "train step compiled with the programs' CPU options "
  "(parallel.sharding.compiler_options: oneDNN matmuls in bfloat16) and/or without",
)
_STEPS = flags.DEFINE_integer("steps", 5, "timed steps per row")
_WARMUP = flags.DEFINE_integer("warmup", 2, "untimed steps per row (compilation)")
_PEAK = flags.DEFINE_string("peak", None, "benchmarks.matmul JSON: adds fraction-of-peak columns")
_OUT = flags.DEFINE_string("out", None, "JSON output path")


def measure(
  config,
  mode: str,
  batch: int,
  bins: int,
  neurons: int,
  regions: int,
  steps: int,
  warmup: int,
  compiler_options: dict | None = None,
  *,
  block_each: bool = True,
) -> dict:
  """One row: timing and FLOPs of the train step (compiled with `compiler_options`) or
  the eval forward pass of `config` (block_each: see common.time_calls)."""
  dtype = precision.compute_dtype(config.model.dtype)
  model = ndt1.from_config(config, neurons, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  data, region_table = synthetic.ndt1_batch(batch, bins, neurons, regions)
  width, n_layers, _, mlp_width = ndt1.size_dims(config.model.size)
  forward = flops.ndt1_forward_flops(
    batch=batch,
    bins=bins,
    neurons=neurons,
    width=width,
    layers=n_layers,
    mlp_width=mlp_width,
    n_special=model.n_special,
    embed_mult=config.model.embed_mult,
  )
  key = jax.random.key(0)
  if mode == "train":
    tx = ndt1_task.make_optimizer(config)
    mask_config = masking.MaskConfig(config.masking.ratio, config.masking.causal_ratio)
    fn = jax.jit(
      ndt1_task.make_train_step(graphdef, tx, config.masking.mode, mask_config, dtype=dtype),
      donate_argnums=0,
      compiler_options=compiler_options,
    )
    state = step_lib.init_state(params, tx)
    xla = fn.lower(state, data, region_table, key).compile().cost_analysis()
    holder = [state]

    def call():
      holder[0], metrics = fn(holder[0], data, region_table, key)
      return metrics["loss"]

    model_flops = flops.train_flops(forward)
  elif mode == "eval":
    fn = jax.jit(lambda p, x: nnx.merge(graphdef, precision.compute_params(p, dtype))(x).astype(jnp.float32))
    xla = fn.lower(params, data["spikes"]).compile().cost_analysis()
    call = lambda: fn(params, data["spikes"])
    model_flops = forward
  else:
    raise ValueError(f"--modes: unknown {mode!r}; expected train or eval")
  t = common.time_calls(call, steps=steps, warmup=warmup, block_each=block_each)
  xla = xla[0] if isinstance(xla, (list, tuple)) else xla
  return dict(
    mode=mode,
    dtype=dtype.name,
    remat=bool(config.model.remat),
    onednn=bool(compiler_options) and mode == "train",
    seconds=t["seconds"],
    bins_per_s=batch * bins / t["seconds"],
    model_gflop=model_flops / 1e9,
    xla_gflop=float(xla.get("flops", float("nan"))) / 1e9 if xla else float("nan"),
    achieved_gflops_per_s=model_flops / t["seconds"] / 1e9,
    compile_seconds=t["warmup_seconds"],
  )


def main(argv):
  del argv
  peak = common.load_peak(_PEAK.value)
  rows = []
  for mode in _MODES.value:
    for dtype in _DTYPES.value:
      for remat in common.bools(_REMAT.value, "remat"):
        for i, options in enumerate(common.compile_variants(dtype, _ONEDNN.value)):
          if mode == "eval" and (remat or i):
            continue  # remat and the train step's compile options change only training
          config = ndt1_config.get_config("paper")
          config.model.size, config.model.dtype, config.model.remat = _SIZE.value, dtype, remat
          row = measure(
            config,
            mode,
            _BATCH.value,
            _BINS.value,
            _NEURONS.value,
            _REGIONS.value,
            _STEPS.value,
            _WARMUP.value,
            options,
          )
          rows.append(common.add_peak_fractions(row, peak))
          print(row, flush=True)
  columns = [
    "mode",
    "dtype",
    "remat",
    "onednn",
    "seconds",
    "bins_per_s",
    "model_gflop",
    "xla_gflop",
    "achieved_gflops_per_s",
  ]
  columns += ["fraction_of_fp32_peak", "fraction_of_dtype_peak"] if peak else []
  common.report(
    f"NDT1 {_SIZE.value}: batch {_BATCH.value} x {_BINS.value} bins x {_NEURONS.value} neurons",
    rows,
    columns + ["compile_seconds"],
    _OUT.value,
    peak_flops_per_s=peak,
  )


if __name__ == "__main__":
  entry.run(main)
