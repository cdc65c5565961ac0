"""Fine-tunes a pretrained NDT1 on held-out sessions, or trains on them from scratch.

  python -m experiments.finetune --config=mtm_jax/configs/ndt1.py:demo,stitch \
      --pretrained=runs/pretrain --datasets=ibl_binned/synthetic_024 --workdir=runs/ft_024

With --pretrained, the shared weights come from that workdir's checkpoint (its config
and architecture travel with it) and the session's stitching layers and session token
are new; without it, the same model is trained on the session alone (the single-session
baseline). The masking (MtM or temporal) and training settings are those of --config.
NDT1's --mode=full (its default) trains every parameter, after config.finetune.warmup_steps
(default 0) of the new stitchers and session row alone; --mode=unit_id trains only those.
Re-running in the same workdir resumes.

POYO and spike-token MtM: --mode=unit_id adds unit and session embedding rows for
the new session and trains only them; --mode=full trains everything after a unit-id
warm-up of config.finetune.warmup_steps.

--dataset and --sessions are earlier names of --datasets, still accepted (deprecated).
"""

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import datasets_flag, multihost
from mtm_jax.tasks import registry
from mtm_jax.training import entry, trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Fine-tuning config file (get_config(arg)).")
_PRETRAINED = flags.DEFINE_string("pretrained", None, "Workdir of the pretrained model (none: from scratch).")
_DATASETS = flags.DEFINE_string("datasets", None, "Held-out session(s), comma-separated (default: the config's).")
datasets_flag.aliases("dataset", "sessions")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
_MODE = flags.DEFINE_enum(
  "mode", None, ["unit_id", "full"], "What fine-tuning trains (default: the family's: POYO unit_id, NDT1 full)."
)
_PRINT_CONFIG = entry.define_print_config()
flags.mark_flag_as_required("config")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  datasets_flag.warn_old_names("dataset", "sessions")
  multihost.initialize()
  config = _CONFIG.value
  task = registry.of(config)
  if _DATASETS.value:
    task.select_sessions(config, _DATASETS.value)
  config = task.finetune_config(config, _PRETRAINED.value, _MODE.value)
  if _PRINT_CONFIG.value:
    print(trainer.config_json(trainer.resolved_config(task, config)), end="")
    return
  logging.info("fine-tuning %s on %s", config.init.pretrained or "from scratch", config.data.datasets)
  trainer.train(task, config, _WORKDIR.value)


if __name__ == "__main__":
  entry.run(main)
