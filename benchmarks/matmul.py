"""The machine's matmul peak: FLOP/s of a large jitted jnp.dot in float32 and bfloat16.

  python -m benchmarks.matmul --size=4096 --steps=5 --out=runs/bench/matmul.json

This is the reference line of the other benchmarks (their `--peak` flag reads this file
and takes, per dtype, the fastest row): XLA's own dot and oneDNN's (the train steps'
CPU compile option, mtm_jax.parallel.sharding.compiler_options).
"""

from __future__ import annotations

from absl import flags
import jax
import jax.numpy as jnp

from benchmarks import common
from mtm_jax.training import entry

_SIZE = flags.DEFINE_integer("size", 4096, "square matrix size")
_STEPS = flags.DEFINE_integer("steps", 5, "timed calls per dtype")
_DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "dtypes to measure")
_ONEDNN = flags.DEFINE_list(
  "onednn", ["false", "true"], "compiled without and/or with the train steps' CPU options (oneDNN matmuls in bfloat16)"
)
_OUT = flags.DEFINE_string("out", None, "JSON output path")


def matmul_flops(m: int, k: int, n: int) -> int:
  """FLOPs of one [m, k] @ [k, n] product (one multiply and one add per term)."""
  return 2 * m * k * n


def measure(size: int, dtype, steps: int, compiler_options: dict | None = None) -> dict:
  """{dtype, size, onednn, seconds, flops_per_s} of a [size, size] @ [size, size] jnp.dot."""
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (size, size), jnp.float32).astype(dtype)
  b = jax.random.normal(kb, (size, size), jnp.float32).astype(dtype)
  dot = jax.jit(jnp.dot, compiler_options=compiler_options)
  t = common.time_calls(lambda: dot(a, b), steps=steps, warmup=1)
  flops = matmul_flops(size, size, size)
  return dict(
    dtype=jnp.dtype(dtype).name,
    size=size,
    onednn=bool(compiler_options),
    seconds=t["seconds"],
    flops_per_s=flops / t["seconds"],
    gflops_per_s=flops / t["seconds"] / 1e9,
    best_gflops_per_s=flops / t["seconds_min"] / 1e9,
  )


def main(argv):
  del argv
  rows = [
    measure(_SIZE.value, jnp.dtype(d), _STEPS.value, options)
    for d in _DTYPES.value
    for options in common.compile_variants(d, _ONEDNN.value)
  ]
  common.report(
    "matmul peak", rows, ["dtype", "size", "onednn", "seconds", "gflops_per_s", "best_gflops_per_s"], _OUT.value
  )


if __name__ == "__main__":
  entry.run(main)
