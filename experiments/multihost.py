"""Multi-host flags shared by the training programs, and JAX's distributed start-up.

One process per host (or per GPU group); every process runs the same command line, with
its own --process_id:

  python -m experiments.pretrain ... --coordinator_address=HOST0:1234 --num_processes=4 --process_id=$RANK

or, under a scheduler JAX detects (SLURM, Open MPI, Kubernetes JobSet, Cloud TPU pods),
just --distributed. Without either the program runs as one process. See docs/scaling.md.
"""

from absl import flags, logging
import jax

_COORDINATOR = flags.DEFINE_string(
  "coordinator_address",
  None,
  "host:port of process 0's coordination service (multi-host); needs --num_processes and --process_id.",
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes in the job (multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's rank, 0 ... num_processes - 1 (multi-host).")
_DISTRIBUTED = flags.DEFINE_bool(
  "distributed",
  False,
  "Start JAX's multi-host runtime with the cluster's auto-detection "
  "(SLURM, Open MPI, Kubernetes, TPU pods) when --coordinator_address is not given.",
)


def initialize() -> None:
  """jax.distributed.initialize from the flags (before any other JAX call), or nothing
  for a single process. Raises ValueError naming the missing or bad flag."""
  if _COORDINATOR.value:
    missing = [
      f"--{name}"
      for name, flag in (("num_processes", _NUM_PROCESSES), ("process_id", _PROCESS_ID))
      if flag.value is None
    ]
    if missing:
      raise ValueError(f"--coordinator_address={_COORDINATOR.value} also needs {' and '.join(missing)}")
    if _NUM_PROCESSES.value < 1 or not 0 <= _PROCESS_ID.value < _NUM_PROCESSES.value:
      raise ValueError(
        f"--process_id={_PROCESS_ID.value}: expected 0 <= process_id < --num_processes={_NUM_PROCESSES.value}"
      )
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  elif _NUM_PROCESSES.value is not None or _PROCESS_ID.value is not None:
    raise ValueError(
      "--num_processes and --process_id need --coordinator_address (or drop them and use "
      "--distributed for the cluster's auto-detection)"
    )
  elif _DISTRIBUTED.value:
    jax.distributed.initialize()
  else:
    return
  logging.info(
    "process %d of %d: %d local of %d devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
