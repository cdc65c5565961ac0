"""Speed benchmarks: `python -m benchmarks.<name> --out=results.json`. Each prints a table."""

from mtm_jax.training import host_memory

# `python -m benchmarks.<name>`: re-run with huge pages now, before the benchmark's imports.
host_memory.rerun_program_of(__name__)
