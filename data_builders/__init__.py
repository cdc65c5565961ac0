"""TFDS builders of this project's data sets: `python -m data_builders.build`."""

from mtm_jax.training import host_memory

# `python -m data_builders.<name>`: re-run with huge pages now, before the program's imports.
host_memory.rerun_program_of(__name__)
