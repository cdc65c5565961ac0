"""NDT1-MtM against spike-token MtM (mtm_jax.studies.families): pretrain both on 1..n
sessions of the synthetic brain, adapt to held-out sessions (NDT1: new stitchers; spike-
token MtM: unit identification, and full fine-tuning), score the four MtM metrics.

  python -m experiments.family_study --flagfile=experiments/flags/family_small.flags
  python -m experiments.family_study --flagfile=experiments/flags/family_small.flags --only_analyse

Writes <workdir>/families.csv, families.png and families.md. Finished runs are reused, so
re-running resumes; --only_analyse trains nothing.
"""

from experiments import study
from mtm_jax.evaluation import plots
from mtm_jax.studies import families
from mtm_jax.training import entry

_CONFIG, _WORKDIR, _ONLY_ANALYSE = study.define_flags("mtm_jax/configs/family_study.py:small")


def main(argv):
  study.start(argv, _WORKDIR.value)
  rows = families.run_study(_CONFIG.value, _WORKDIR.value, only_analyse=_ONLY_ANALYSE.value)
  print(plots.scaling_table(rows) if rows else "no finished runs")


if __name__ == "__main__":
  entry.run(main)
