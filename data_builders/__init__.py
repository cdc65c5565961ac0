"""TFDS builders of this project's data sets: `python -m data_builders.build`."""

from mtm_jax.training import host_memory, interrupt

interrupt.guard_program_of(__name__)  # Ctrl-C while the program is imported: `interrupted`, status 130

# `python -m data_builders.<name>`: re-run with huge pages now, before the program's imports.
host_memory.rerun_program_of(__name__)
