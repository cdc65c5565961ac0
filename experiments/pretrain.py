"""Pretrains NDT1 with MtM (or a single masking scheme) on a session.

  python -m experiments.pretrain --flagfile=experiments/flags/demo_mtm.flags
  python -m experiments.pretrain --config=mtm_jax/configs/ndt1.py:paper --workdir=runs/paper \
      --config.masking.mode=temporal --config.model.use_prompt=False

Re-running in the same workdir resumes from its latest checkpoint.
"""

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from mtm_jax.training import loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (get_config(arg)).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.info("JAX devices: %s", jax.devices())
  loop.train(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  jax.config.config_with_absl()
  app.run(main)
