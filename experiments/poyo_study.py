"""POYO on a new session: single-session training vs the ridge baseline, and unit
identification vs full fine-tuning of a multi-session model.

  python -m experiments.poyo_study --flagfile=experiments/flags/poyo_small.flags
  python -m experiments.poyo_study --flagfile=experiments/flags/poyo_small.flags --only_analyse

Writes <workdir>/poyo_study.json and poyo_study.md. Finished runs are reused, so
re-running resumes; --only_analyse trains nothing. Compiled XLA programs are cached in
<workdir>/jax_cache.
"""

import os

from absl import app, flags
import jax
from ml_collections import config_flags

from mtm_jax.evaluation import poyo_study

_CONFIG = config_flags.DEFINE_config_file("config", "mtm_jax/configs/poyo_study.py:small", "Study config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Study directory.")
_ONLY_ANALYSE = flags.DEFINE_bool("only_analyse", False, "Train nothing; score and summarise what exists.")
flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.abspath(_WORKDIR.value), "jax_cache"))
  print(poyo_study.table(poyo_study.run_study(_CONFIG.value, _WORKDIR.value, only_analyse=_ONLY_ANALYSE.value)))


if __name__ == "__main__":
  jax.config.config_with_absl()
  app.run(main)
