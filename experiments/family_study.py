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

from experiments import study
from mtm_jax.training import entry

_FLAGS = study.define_protocol_flags("mtm_jax/configs/family_study.py:small")


def main(argv):
  study.run_protocol("experiments.family_study", argv, _FLAGS)


if __name__ == "__main__":
  entry.run(main)
