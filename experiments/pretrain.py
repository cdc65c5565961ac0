"""Pretrains NDT1 with MtM (or a single masking scheme) on one or many sessions.

  python -m experiments.pretrain --flagfile=experiments/flags/demo_mtm.flags
  python -m experiments.pretrain --config=mtm_jax/configs/ndt1.py:demo,stitch --workdir=runs/two \
      --datasets=ibl_binned/synthetic_001,ibl_binned/synthetic_002
  python -m experiments.pretrain --config=mtm_jax/configs/ndt1.py:demo,stitch --datasets=12 \
      --workdir=runs/twelve    (the first 12 of the config's 24 synthetic pretraining sessions)
  python -m experiments.pretrain --config=mtm_jax/configs/ndt1.py:paper --workdir=runs/paper \
      --config.masking.mode=temporal --config.model.use_prompt=False

POYO configs (config.family = "poyo", mtm_jax/configs/poyo.py) train POYO on event data:
  python -m experiments.pretrain --config=mtm_jax/configs/poyo.py:small \
      --datasets=spike_events/reaching_000,spike_events/reaching_001 --workdir=runs/poyo

--sessions is the earlier name of --datasets, still accepted (deprecated).

Re-running in the same workdir resumes from its latest checkpoint. Several devices: the
mesh is --config.mesh.data x --config.mesh.model; several hosts: --coordinator_address,
--num_processes and --process_id (or --distributed), see docs/scaling.md.
"""

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from experiments import datasets_flag, multihost
from mtm_jax.tasks import registry
from mtm_jax.training import entry, trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (get_config(arg)).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
_DATASETS = flags.DEFINE_string(
  "datasets",
  None,
  "Sessions to train on: a count N (the first N of config.data.datasets) or "
  "comma-separated TFDS names (replacing config.data.datasets).",
)
datasets_flag.aliases("sessions")
_PRINT_CONFIG = entry.define_print_config()
flags.mark_flag_as_required("config")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  datasets_flag.warn_old_names("sessions")
  multihost.initialize()
  logging.info("JAX devices: %s", jax.devices())
  config = _CONFIG.value
  task = registry.of(config)
  if _DATASETS.value:
    task.select_sessions(config, _DATASETS.value)
  if _PRINT_CONFIG.value:
    print(trainer.config_json(trainer.resolved_config(task, config)), end="")
    return
  trainer.train(task, config, _WORKDIR.value)


if __name__ == "__main__":
  entry.run(main)
