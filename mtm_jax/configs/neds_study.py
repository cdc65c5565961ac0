"""NEDS against NDT1-MtM on held-out animals of the synthetic brain, on the fair protocol
(mtm_jax.studies.families, mtm_jax.studies.protocol): encoding (the four MtM activity
metrics; NEDS is given the behaviour) and decoding (choice accuracy, wheel and whisker R²:
NEDS decodes with its own behaviour tokens, NDT1-MtM with the paper's linear decoders on its
log-rates), after pretraining on 1, 4 and 12 animals.

  python -m experiments.family_study --flagfile=experiments/flags/neds_small.flags   (2-core CPU)
  python -m experiments.family_study --config=mtm_jax/configs/neds_study.py:full --workdir=runs/neds_study

get_config(arg): arg = "small" (compact models; scratch and "warm-up then all" after 1, 4
and 12 animals; 3 seeds x 2 held-out animals) | "full" (NEDS's single-session size against
NDT1 at the paper's size, every arm, 5 seeds x 3 held-out animals; a GPU) | "tiny" (tests).
Stage configs: mtm_jax/configs/neds.py and family_study's NDT1 stages; steps, data sets,
seeds, learning rates and init are set per run (studies.families.adapt_config). Both
families read the same ibl_binned sessions (the same trials, splits and counts)."""

import ml_collections

from mtm_jax.configs import family_study
from mtm_jax.configs import neds as neds_config
from mtm_jax.studies import protocol


def neds_stage(preset: str, log_every: int) -> ml_collections.ConfigDict:
  """NEDS at `preset`, as a study stage (one checkpoint kept)."""
  return family_study.study_stage(neds_config.get_config(preset), log_every)


def small_neds() -> ml_collections.ConfigDict:
  """The small study's NEDS: 64 wide x 2 layers (4 heads, MLP 128) at batch 8, dropout 0.1;
  five modalities of 100 bins make 500 tokens a trial, so it costs about NDT1 "demo"'s
  step; the four metrics on 24 neurons per session, as NDT1's."""
  c = neds_stage("demo", 200)
  c.model.width, c.model.n_layers, c.model.n_heads, c.model.mlp_width = 64, 2, 4, 128
  c.data.batch_size = 8
  c.eval.max_masks = 24
  return c


def get_config(arg: str = "small") -> ml_collections.ConfigDict:
  if arg not in ("small", "full", "tiny"):
    raise ValueError(f"neds_study config: unknown preset {arg!r}; expected small, full or tiny")
  c = family_study.get_config(arg)  # the study's animals, grid and NDT1-MtM stages
  del c["spike"]
  s = c.study
  s.name = "neds"
  s.families = ("ndt1", "neds")  # NDT1-MtM first: the report gives NEDS minus NDT1-MtM
  c.neds = family_study.family("NEDS", "ibl_binned")
  if arg == "full":
    c.neds.pretrain, c.neds.finetune = neds_stage("single", 1000), neds_stage("single", 1000)
  elif arg == "small":
    s.sizes, s.control_steps = (1, 4, 12), 0
    s.arms = (protocol.SCRATCH, protocol.WARMUP)
    s.learning_rates = (1e-3, 3e-3)
    c.neds.pretrain, c.neds.finetune = small_neds(), small_neds()
  else:
    s.arms = (protocol.SCRATCH, protocol.WARMUP)
    c.neds.pretrain, c.neds.finetune = neds_stage("tiny", 4), neds_stage("tiny", 3)
    for st in (c.neds.pretrain, c.neds.finetune):
      st.eval.max_masks = 4
  return c
