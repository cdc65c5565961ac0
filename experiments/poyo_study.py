"""POYO on a new session: single-session training vs the ridge baseline, and unit
identification vs full fine-tuning of a multi-session model.

  python -m experiments.poyo_study --flagfile=experiments/flags/poyo_small.flags
  python -m experiments.poyo_study --flagfile=experiments/flags/poyo_small.flags --only_analyse

Writes <workdir>/poyo_study.json and poyo_study.md. Finished runs are reused, so
re-running resumes; --only_analyse trains nothing. Compiled XLA programs are cached in
<workdir>/jax_cache.
"""

from experiments import study
from mtm_jax.studies import poyo as poyo_study
from mtm_jax.training import entry

_CONFIG, _WORKDIR, _ONLY_ANALYSE = study.define_flags("mtm_jax/configs/poyo_study.py:small")


def main(argv):
  study.start(argv, _WORKDIR.value)
  print(poyo_study.table(poyo_study.run_study(_CONFIG.value, _WORKDIR.value, only_analyse=_ONLY_ANALYSE.value)))


if __name__ == "__main__":
  entry.run(main)
