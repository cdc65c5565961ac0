"""The scaling study (the MtM paper's Figure 4) on the fair protocol: NDT1-stitch
pretrained with MtM's masking and with temporal masking on 1, 4 and 12 animals of the
synthetic brain, adapted to held-out animals against scratch and compute-matched scratch,
learning rates chosen on the validation split, the test split scored once, 95% intervals
over seeds and held-out animals (mtm_jax/configs/scaling.py, mtm_jax.studies.families).

  python -m experiments.scaling --flagfile=experiments/flags/scaling_small.flags
  python -m experiments.scaling --flagfile=experiments/flags/scaling_small.flags --only_analyse

Writes <workdir>/scaling.csv, scaling.md and scaling.png. Finished runs are reused, so
re-running resumes; --only_analyse trains nothing: it scores finished checkpoints that
have no metrics yet and summarises. --parallel and --workers as experiments.family_study.
Compiled XLA programs are cached in <workdir>/jax_cache (JAX's persistent compilation
cache), so runs of the same shapes compile once.
"""

from experiments import study
from mtm_jax.training import entry

_FLAGS = study.define_protocol_flags("mtm_jax/configs/scaling.py:small")


def main(argv):
  study.run_protocol("experiments.scaling", argv, _FLAGS)


if __name__ == "__main__":
  entry.run(main)
