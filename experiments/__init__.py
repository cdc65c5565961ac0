"""absl programs: `python -m experiments.<name>`."""

from mtm_jax.training import host_memory

# `python -m experiments.<name>`: re-run with huge pages now, before the program's imports.
host_memory.rerun_program_of(__name__)
