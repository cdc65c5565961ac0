"""NDT1-MtM against spike-token MtM on the fair protocol (mtm_jax.studies.families,
mtm_jax.studies.protocol): pretrain both on 1..n animals of the synthetic brain, adapt
every arm (scratch; frozen backbone; warm-up then all; all) to held-out animals with a
learning rate chosen on the validation split, score the test split once, and summarise
over seeds and held-out animals with 95% intervals.

  python -m experiments.family_study --flagfile=experiments/flags/family_small.flags
  python -m experiments.family_study --flagfile=experiments/flags/family_small.flags --only_analyse

Writes <workdir>/families.csv, families.md and families.png. Finished runs are reused, so
re-running resumes; --only_analyse trains nothing. --parallel runs each family's runs in
--workers processes of its own (this program with --family), then summarises both: on a
CPU they share the cores better than one process does alone. The processes of a family
share its runs out (studies.families.shared): each takes the next run no other holds.
"""

import subprocess
import sys

from absl import flags, logging

from experiments import study
from mtm_jax.studies import families, protocol, report
from mtm_jax.training import entry

_CONFIG, _WORKDIR, _ONLY_ANALYSE = study.define_flags("mtm_jax/configs/family_study.py:small")
_PARALLEL = flags.DEFINE_bool("parallel", False, "Train each family in a process of its own, at the same time.")
_WORKERS = flags.DEFINE_integer("workers", 1, "With --parallel: processes per family.", lower_bound=1)
_FAMILY = flags.DEFINE_enum(
  "family", None, sorted(families.BUILDERS), "Train this family of config.study.families alone."
)


def _train_in_parallel(config) -> None:
  """Runs this program --workers times per family of config.study.families, all at once
  (the same flags, with --family and without --parallel); raises RuntimeError naming a
  family whose process failed."""
  argv = [a for a in sys.argv[1:] if a not in ("--parallel", "--noparallel")]
  procs = [
    (f, subprocess.Popen([sys.executable, "-m", "experiments.family_study", *argv, f"--family={f}"]))
    for f in config.study.families
    for _ in range(_WORKERS.value)
  ]
  failed = sorted({f for f, p in procs if p.wait() != 0})
  if failed:
    raise RuntimeError(f"family study: the process of {failed} failed (its log is above); re-run to resume")


def main(argv):
  study.start(argv, _WORKDIR.value)
  config = _CONFIG.value
  if _FAMILY.value:
    if _FAMILY.value not in config.study.families:
      raise flags.ValidationError(f"--family={_FAMILY.value}: not in config.study.families {config.study.families}")
    config.study.families = (_FAMILY.value,)
  only_analyse = _ONLY_ANALYSE.value
  if _PARALLEL.value and not only_analyse and not _FAMILY.value and len(config.study.families) > 1:
    _train_in_parallel(config)
    logging.info("family study: every family trained; summarising")
    only_analyse = True
  rows = families.run_study(config, _WORKDIR.value, only_analyse=only_analyse, write_report=not _FAMILY.value)
  if _FAMILY.value:
    return
  print(report.tables(rows, protocol.summarise(rows), families.MEAN_METRIC) if rows else "no scored runs")


if __name__ == "__main__":
  entry.run(main)
