"""Scores a trained model on its session's test trials with the four MtM metrics.

  python -m experiments.evaluate --workdir=runs/demo/mtm

Writes <workdir>/metrics.json (co_smoothing_bps, forward_prediction_bps, inter_region_bps,
intra_region_bps, and oracle_* from the true rates of synthetic data) and prints a table.
"""

from absl import app, flags
import jax

from mtm_jax.evaluation import run

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a trained model.")
_SPLIT = flags.DEFINE_string("split", None, "Split to score (default: the config's eval.split).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  results = run.evaluate_workdir(_WORKDIR.value, _SPLIT.value, _STEP.value)
  columns = {results["masking_mode"]: results}
  oracle = run.oracle_column(results)
  if oracle:
    columns["oracle"] = oracle
  print(f"session {results['session_id']}, {results['split']} split, step {results['step']}")
  print(run.table(columns))


if __name__ == "__main__":
  jax.config.config_with_absl()
  app.run(main)
