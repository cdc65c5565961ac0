"""The demo: synthetic session -> MtM and temporal-masking NDT1 -> four metrics vs oracle.

  python -m experiments.demo --flagfile=experiments/flags/demo.flags   (= make demo)

Builds the data set if missing, trains both models (resuming finished or partial runs),
evaluates them on the test trials and writes <workdir>/report.md and report.json.
"""

import json
import os
import time

from absl import app, flags, logging
import jax

from data_builders import prepare
from mtm_jax import files
from mtm_jax.configs import ndt1 as ndt1_config
from mtm_jax.evaluation import report as report_lib
from mtm_jax.tasks import registry
from mtm_jax.training import entry, trainer

_DATASET = flags.DEFINE_string("dataset", "ibl_binned/synthetic_000", "Session to train and score on.")
_DATA_DIR = flags.DEFINE_string("data_dir", "data/tfds", "TFDS data directory.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Output directory (one sub-directory per model).")
_PRESET = flags.DEFINE_string("preset", "demo", "Config preset of mtm_jax/configs/ndt1.py.")
_STEPS = flags.DEFINE_integer("steps", None, "Training steps (default: the preset's).")


def run_demo(dataset: str, data_dir: str, workdir: str, preset: str, steps: int | None = None) -> dict:
  """Trains and scores both models; returns the report dict."""
  start = time.time()
  prepare.build([dataset], data_dir)
  results = {}
  for name, arg in (("mtm", preset), ("temporal", f"{preset},temporal")):
    config = ndt1_config.get_config(arg)
    config.data.datasets, config.data.data_dir = dataset, data_dir
    if steps is not None:
      config.train.steps = steps
    model_dir = os.path.join(workdir, name)
    logging.info("training %s in %s", name, model_dir)
    trainer.train(registry.of(config), config, model_dir)
    results[name] = registry.evaluate_workdir(model_dir)
  oracle = report_lib.oracle_column(results["mtm"])
  fraction = {m: results["mtm"][m] / oracle[m] for m in oracle}
  columns = {"MtM": results["mtm"], "temporal": results["temporal"], "oracle": oracle, "MtM / oracle": fraction}
  report = dict(
    dataset=dataset,
    preset=preset,
    steps=results["mtm"]["step"],
    seconds=round(time.time() - start, 1),
    n_neurons=results["mtm"]["n_neurons"],
    n_test_trials=results["mtm"]["n_trials"],
    mtm=results["mtm"],
    temporal=results["temporal"],
    oracle=oracle,
    mtm_fraction_of_oracle=fraction,
    devices=[str(d) for d in jax.devices()],
  )
  text = (
    f"# mtm_jax demo\n\nSession `{dataset}` ({report['n_neurons']} neurons, {report['n_test_trials']} test "
    f"trials), NDT1 `{preset}`, {report['steps']} training steps per model, "
    f"{report['seconds']:.0f} s in all.\n\n{report_lib.table(columns)}\n"
  )
  os.makedirs(workdir, exist_ok=True)
  with files.atomic_write(os.path.join(workdir, "report.md"), encoding="utf-8") as f:
    f.write(text)
  with files.atomic_write(os.path.join(workdir, "report.json"), encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  print(text)
  return report


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  run_demo(_DATASET.value, _DATA_DIR.value, os.path.abspath(_WORKDIR.value), _PRESET.value, _STEPS.value)


if __name__ == "__main__":
  entry.run(main)
