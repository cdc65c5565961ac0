"""NDT1-MtM against spike-token MtM on the fair protocol (mtm_jax.studies.families,
mtm_jax.studies.protocol): pretrain both on 1..n animals of the synthetic brain, adapt
every arm (scratch; frozen backbone; warm-up then all; all) to held-out animals with a
learning rate chosen on the validation split, score the test split once, and summarise
over seeds and held-out animals with 95% intervals.

  python -m experiments.family_study --flagfile=experiments/flags/family_small.flags
  python -m experiments.family_study --flagfile=experiments/flags/family_small.flags --only_analyse

Writes <workdir>/families.csv, families.md and families.png. Finished runs are reused, so
re-running resumes; --only_analyse trains nothing.
"""

from experiments import study
from mtm_jax.studies import families, protocol, report
from mtm_jax.training import entry

_CONFIG, _WORKDIR, _ONLY_ANALYSE = study.define_flags("mtm_jax/configs/family_study.py:small")


def main(argv):
  study.start(argv, _WORKDIR.value)
  rows = families.run_study(_CONFIG.value, _WORKDIR.value, only_analyse=_ONLY_ANALYSE.value)
  print(report.tables(rows, protocol.summarise(rows), families.MEAN_METRIC) if rows else "no scored runs")


if __name__ == "__main__":
  entry.run(main)
