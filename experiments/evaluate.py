"""Scores a trained model on its session's test trials with the four MtM metrics.

  python -m experiments.evaluate --workdir=runs/demo/mtm
  python -m experiments.evaluate --workdir=runs/demo/mtm --plots --compare=temporal=runs/demo/temporal
  python -m experiments.evaluate --workdir=runs/demo/mtm --nodecoding   # activity metrics only

Writes <workdir>/metrics.json (co_smoothing_bps, forward_prediction_bps, inter_region_bps,
intra_region_bps, oracle_* from the true rates of synthetic data, and the behaviour
decoding scores choice_accuracy, whisker_motion_energy_r2, wheel_speed_r2, with the outer
folds each used under decoding_folds) and prints a table. A decoder the split cannot run
(e.g. a choice class with too few trials even for 2 folds, a single class, a constant
trace) is left out, its reason under "skipped" in metrics.json, one warning line each,
and "skipped" in the table; --nodecoding skips every decoder and head. --plots also writes
<workdir>/rasters.png (the MtM paper's Figure 2): trial-averaged rasters of one region's
neurons, ground truth vs this model (labelled by its folder's name) and the --compare
models under inter-region and intra-region masking; POYO: <workdir>/behaviour.png,
predicted vs true behaviour. --plots and --compare are checked before any scoring. Each
stage (metric, decoder, head, plots) prints one line with its time (mtm_jax.progress); the
first line, as soon as the flags are checked, says what is being loaded (loading,
restoring and compiling take seconds).

A POYO workdir (config.family = "poyo") is scored by behaviour R^2 on sliding 1 s windows
(behaviour_r2, per output dimension, and the ridge baseline's baseline_r2); a session too
small for a score is left out of its mean, the reason under "skipped".

--sessions is the earlier name of --datasets, still accepted (deprecated).
"""

import os

from absl import app, flags, logging

from experiments import datasets_flag, multihost
from mtm_jax import progress
from mtm_jax.tasks import registry
from mtm_jax.training import checkpoint, entry

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a trained model.")
_SPLIT = flags.DEFINE_string("split", None, "Split to score (default: the config's eval.split).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_DATASETS = flags.DEFINE_list("datasets", None, "Sessions of the model to score, comma-separated (default: all).")
datasets_flag.aliases("sessions")
_DECODING = flags.DEFINE_bool("decoding", True, "Also decode behaviour (frozen-model decoders and heads).")
_PLOTS = flags.DEFINE_bool("plots", False, "Also write the family's figure (NDT1: rasters.png; POYO: behaviour.png).")
_COMPARE = flags.DEFINE_list("compare", [], "label=workdir of other models of the family for --plots' figure.")
_PLOT_REGION = flags.DEFINE_string("plot_region", None, "Region of the rasters (default: the largest).")
_DATA_DIR = flags.DEFINE_string(
  "data_dir", None, "TFDS data_dir of the sessions, when they moved (default: the one the model was trained from)."
)
flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  datasets_flag.warn_old_names("sessions")
  multihost.initialize()
  # The flags are checked before any scoring (checkpoint metadata alone is read).
  workdirs = registry.check_evaluation(_WORKDIR.value, _STEP.value, _PLOTS.value, _COMPARE.value)
  config, _ = checkpoint.load_metadata(_WORKDIR.value, _STEP.value)
  task = registry.of(config)
  step = _STEP.value if _STEP.value is not None else checkpoint.latest_step(_WORKDIR.value)
  datasets = ",".join(_DATASETS.value or []) or config.data.datasets
  logging.info("loading %s (step %s) and %s...", _WORKDIR.value, step, datasets)  # data, restore, compile: seconds
  with progress.Stage("evaluation"):
    results = registry.evaluate_workdir(
      _WORKDIR.value, _SPLIT.value, _STEP.value, _DATASETS.value, decode=_DECODING.value, data_dir=_DATA_DIR.value
    )
  this, *compared = workdirs  # labels: this run's folder name, then --compare's
  others = registry.compared_scores({label: workdirs[label] for label in compared}, results["split"])
  print(task.report(results, label=this if compared else None, others=others))
  if _PLOTS.value:
    with progress.Stage("plots") as stage:
      models = {label: registry.load_trained(w) for label, w in workdirs.items()}
      for model in models.values():
        checkpoint.relocate_data(model.config, _DATA_DIR.value)
      path = os.path.join(_WORKDIR.value, task.plot_file())
      stage.note = f"{task.plot(models, path, split=_SPLIT.value, region=_PLOT_REGION.value)}: {path}"


if __name__ == "__main__":
  entry.run(main)
