"""What the study programs (family_study, scaling, poyo_study) share: their flags, the
compilation cache, and the main of a study on the fair protocol (run_protocol)."""

import os
import subprocess
import sys
from typing import Any, NamedTuple

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from mtm_jax.studies import families, protocol, report


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


class ProtocolFlags(NamedTuple):
  """The flag holders of a program on the fair protocol (define_protocol_flags)."""

  config: Any
  workdir: Any
  only_analyse: Any
  parallel: Any
  workers: Any
  family: Any


def define_protocol_flags(default_config: str) -> ProtocolFlags:
  """define_flags, and --parallel, --workers and --family: the flags of a study on the fair
  protocol (studies.families: experiments.family_study, experiments.scaling)."""
  config, workdir, only_analyse = define_flags(default_config)
  parallel = flags.DEFINE_bool("parallel", False, "Train each family in processes of its own, at the same time.")
  workers = flags.DEFINE_integer("workers", 1, "With --parallel: processes per family.", lower_bound=1)
  family = flags.DEFINE_string("family", None, "Train this family of config.study.families alone.")
  return ProtocolFlags(config, workdir, only_analyse, parallel, workers, family)


def _train_in_parallel(program: str, config, workers: int) -> None:
  """Runs `program` (python -m) `workers` times per family of config.study.families, all
  at once (this process's flags, with --family and without --parallel); raises
  RuntimeError naming a family whose process failed."""
  argv = [a for a in sys.argv[1:] if a not in ("--parallel", "--noparallel")]
  procs = [
    (f, subprocess.Popen([sys.executable, "-m", program, *argv, f"--family={f}"]))
    for f in config.study.families
    for _ in range(workers)
  ]
  failed = sorted({f for f, p in procs if p.wait() != 0})
  if failed:
    raise RuntimeError(f"{program}: the process of {failed} failed (its log is above); re-run to resume")


def run_protocol(program: str, argv, f: ProtocolFlags) -> None:
  """The main of a study on the fair protocol (`program`: its module, which --parallel runs
  again per family): trains, scores and summarises (studies.families.run_study), and prints
  the tables."""
  start(argv, f.workdir.value)
  config = f.config.value
  if f.family.value:
    if f.family.value not in config.study.families:
      raise flags.ValidationError(f"--family={f.family.value}: not in config.study.families {config.study.families}")
    config.study.families = (f.family.value,)
  only_analyse = f.only_analyse.value
  if f.parallel.value and not only_analyse and not f.family.value and len(config.study.families) > 1:
    _train_in_parallel(program, config, f.workers.value)
    logging.info("%s: every family trained; summarising", program)
    only_analyse = True
  rows = families.run_study(config, f.workdir.value, only_analyse=only_analyse, write_report=not f.family.value)
  if f.family.value:
    return
  print(report.tables(rows, protocol.summarise(rows), families.MEAN_METRIC) if rows else "no scored runs")
