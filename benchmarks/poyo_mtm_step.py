"""Spike-token MtM training step against the matmul peak: the trainer's step (its loss
with MtM's masking, AdamW) at the presets' sizes.

  python -m benchmarks.poyo_mtm_step --peak=runs/bench/matmul.json --out=runs/bench/poyo_mtm.json

Synthetic whole 2 s trials generated in-process (benchmarks.synthetic.poyo_mtm_batch):
--units units (123) in 5 regions firing at --rate Hz (10), tokenised and padded to the
config's bucket as the trainer's batches (~2,700 tokens: 3,072). Each row: seconds per
step, trials/s, model GFLOP (benchmarks.flops.poyo_mtm_flops: the encoder's
cross-attention over the padded tokens, the latent self-attention, the decoder's
data.max_queries queries per trial; x3 for the step), achieved GFLOP/s and, with --peak,
its fraction of the measured matmul peak. --profile also times the forward pass, its
gradient and the forward pass's parts alone (benchmarks.poyo_mtm_profile: the masking,
encoder, processor, decoder + loss) and the host's batch building, in extra columns.
"""

from __future__ import annotations

import time

from absl import flags
import jax
import jax.numpy as jnp
from flax import nnx

from benchmarks import common, flops, synthetic
from mtm_jax.configs import poyo_mtm as poyo_mtm_config
from mtm_jax.models import poyo_mtm
from mtm_jax.tasks import poyo_mtm as poyo_mtm_task, registry
from mtm_jax.training import entry, precision, step as step_lib

_CONFIGS = flags.DEFINE_list("configs", ["small:8", "small:32", "base:8"], "preset:batch rows (configs/poyo_mtm.py)")
_UNITS = flags.DEFINE_integer("units", 123, "units of the session")
_RATE = flags.DEFINE_float("rate", 10.0, "firing rate of every unit (Hz)")
_DTYPES = flags.DEFINE_list("dtypes", ["float32"], "compute dtypes (config.model.dtype)")
_ONEDNN = flags.DEFINE_list(
  "onednn",
  ["true"],
  "train step compiled with the programs' CPU options "
  "(parallel.sharding.compiler_options: oneDNN matmuls in bfloat16) and/or without",
)
_STEPS = flags.DEFINE_integer("steps", 3, "timed steps per row")
_WARMUP = flags.DEFINE_integer("warmup", 1, "untimed steps per row (compilation)")
_PROFILE = flags.DEFINE_bool("profile", False, "also time the forward pass's parts (see the module doc)")
_PEAK = flags.DEFINE_string("peak", None, "benchmarks.matmul JSON: adds fraction-of-peak columns")
_OUT = flags.DEFINE_string("out", None, "JSON output path")

COLUMNS = [
  "size",
  "params_m",
  "batch",
  "tokens",
  "queries",
  "dtype",
  "onednn",
  "seconds",
  "trials_per_s",
  "model_gflop",
  "achieved_gflops_per_s",
]
PROFILE_COLUMNS = ["forward_s", "grad_s", "mask_s", "encoder_s", "processor_s", "decoder_loss_s", "host_batch_s"]


def measure(
  config,
  batch_size: int,
  compiler_options: dict | None = None,
  *,
  units: int = 123,
  rate: float = 10.0,
  steps: int = 3,
  warmup: int = 1,
  profile: bool = False,
) -> dict:
  """One row: timing and model FLOPs of the trainer's spike-token MtM step for `config` on
  `batch_size` synthetic trials of `units` units at `rate` Hz (profile: see the module doc)."""
  dtype = precision.compute_dtype(config.model.dtype)
  t0 = time.perf_counter()
  batch = synthetic.poyo_mtm_batch(config, batch_size, units, rate)
  host_batch = time.perf_counter() - t0
  model = poyo_mtm.from_config(config, units, 1, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  tx = poyo_mtm_task.make_optimizer(config)
  loss = registry.get("poyo_mtm").loss(config, graphdef)
  step = jax.jit(step_lib.make_train_step(loss, tx), donate_argnums=0, compiler_options=compiler_options)
  batch = jax.tree.map(jnp.asarray, batch)
  key = jax.random.key(0)
  holder = [step_lib.init_state(jax.tree.map(jnp.copy, params), tx)]  # donated; params stay for --profile

  def call():
    holder[0], metrics = step(holder[0], batch, None, key)
    return metrics["loss"]

  t = common.time_calls(call, steps=steps, warmup=warmup)
  length, queries = batch["unit_index"].shape[1], config.data.max_queries
  forward = flops.poyo_mtm_flops(model, batch=batch_size, tokens=length, queries=queries)
  model_flops = flops.train_flops(forward["total"])
  row = dict(
    size=config.model.size,
    params_m=poyo_mtm.count_params(model) / 1e6,
    batch=batch_size,
    tokens=length,
    queries=queries,
    dtype=dtype.name,
    onednn=bool(compiler_options),
    seconds=t["seconds"],
    trials_per_s=batch_size / t["seconds"],
    model_gflop=model_flops / 1e9,
    achieved_gflops_per_s=model_flops / t["seconds"] / 1e9,
    compile_seconds=t["warmup_seconds"],
    **{f"{part}_gflop": 3 * forward[part] / 1e9 for part in ("encoder", "processor", "decoder")},
  )
  if profile:
    from benchmarks import poyo_mtm_profile  # pylint: disable=import-outside-toplevel

    row.update(poyo_mtm_profile.parts(config, graphdef, params, batch, steps=steps), host_batch_s=host_batch)
  return row


def main(argv):
  del argv
  peak = common.load_peak(_PEAK.value)
  rows = []
  for item in _CONFIGS.value:
    size, _, batch_size = item.partition(":")
    if not batch_size.isdigit():
      raise ValueError(f"--configs: expected preset:batch, got {item!r}")
    for dtype in _DTYPES.value:
      for options in common.compile_variants(dtype, _ONEDNN.value):
        config = poyo_mtm_config.get_config(size)
        config.model.dtype = dtype
        row = measure(
          config,
          int(batch_size),
          options,
          units=_UNITS.value,
          rate=_RATE.value,
          steps=_STEPS.value,
          warmup=_WARMUP.value,
          profile=_PROFILE.value,
        )
        rows.append(common.add_peak_fractions(row, peak))
        print(row, flush=True)
  columns = COLUMNS + (["fraction_of_fp32_peak", "fraction_of_dtype_peak"] if peak else []) + ["compile_seconds"]
  common.report(
    f"spike-token MtM train step: {_UNITS.value} units at {_RATE.value:g} Hz, 2 s trials",
    rows,
    columns + (PROFILE_COLUMNS if _PROFILE.value else []),
    _OUT.value,
    peak_flops_per_s=peak,
  )


if __name__ == "__main__":
  entry.run(main)
