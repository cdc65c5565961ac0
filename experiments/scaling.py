"""The scaling study (MtM paper Fig. 4): pretrain on 1..n sessions with MtM and temporal
masking, fine-tune on held-out sessions, score, and plot.

  python -m experiments.scaling --flagfile=experiments/flags/scaling_small.flags
  python -m experiments.scaling --flagfile=experiments/flags/scaling_small.flags --only_analyse

Writes <workdir>/scaling.csv, scaling.png and scaling.md. Finished runs are reused, so
re-running resumes; --only_analyse trains nothing: it scores finished checkpoints that
have no metrics yet and re-plots. Compiled XLA programs are cached in <workdir>/jax_cache
(JAX's persistent compilation cache), so runs of the same shapes compile once.
"""

import os

from absl import app, flags
import jax
from ml_collections import config_flags

from mtm_jax.evaluation import plots, scaling

_CONFIG = config_flags.DEFINE_config_file("config", "mtm_jax/configs/scaling.py:small", "Study config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Study directory.")
_ONLY_ANALYSE = flags.DEFINE_bool("only_analyse", False, "Train nothing; score and plot what exists.")
flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.abspath(_WORKDIR.value), "jax_cache"))
  rows = scaling.run_study(_CONFIG.value, _WORKDIR.value, only_analyse=_ONLY_ANALYSE.value)
  print(plots.scaling_table(rows) if rows else "no finished runs")


if __name__ == "__main__":
  jax.config.config_with_absl()
  app.run(main)
