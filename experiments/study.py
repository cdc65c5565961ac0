"""What the study programs (scaling, poyo_study) share: their flags and the compilation cache."""

import os

from absl import app, flags
import jax
from ml_collections import config_flags


def define_flags(default_config: str):
  """--config (default `default_config`), --workdir (required) and --only_analyse; returns
  their holders (config, workdir, only_analyse)."""
  config = config_flags.DEFINE_config_file("config", default_config, "Study config.")
  workdir = flags.DEFINE_string("workdir", None, "Study directory.")
  only_analyse = flags.DEFINE_bool("only_analyse", False, "Train nothing; score and summarise what exists.")
  flags.mark_flag_as_required("workdir")
  return config, workdir, only_analyse


def start(argv, workdir: str) -> None:
  """Rejects stray arguments; caches compiled XLA programs in <workdir>/jax_cache (JAX's
  persistent compilation cache), so runs of the same shapes compile once. Every program
  is cached, however quick its compilation: a study builds the same models, steps and
  evaluation passes dozens of times, and the many small compilations (e.g. parameter
  initialisers) add up to about 6 s per run."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.abspath(workdir), "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
