"""The scaling study (MtM paper Fig. 4): pretrain on 1..n sessions with MtM and temporal
masking, fine-tune on held-out sessions, score, and plot.

  python -m experiments.scaling --flagfile=experiments/flags/scaling_small.flags
  python -m experiments.scaling --flagfile=experiments/flags/scaling_small.flags --only_analyse

Writes <workdir>/scaling.csv, scaling.png and scaling.md. Finished runs are reused, so
re-running resumes; --only_analyse trains nothing: it scores finished checkpoints that
have no metrics yet and re-plots. Compiled XLA programs are cached in <workdir>/jax_cache
(JAX's persistent compilation cache), so runs of the same shapes compile once.
"""

from experiments import study
from mtm_jax.evaluation import plots
from mtm_jax.studies import scaling
from mtm_jax.training import entry

_CONFIG, _WORKDIR, _ONLY_ANALYSE = study.define_flags("mtm_jax/configs/scaling.py:small")


def main(argv):
  study.start(argv, _WORKDIR.value)
  rows = scaling.run_study(_CONFIG.value, _WORKDIR.value, only_analyse=_ONLY_ANALYSE.value)
  print(plots.scaling_table(rows) if rows else "no finished runs")


if __name__ == "__main__":
  entry.run(main)
