"""The scaling study (the MtM paper's Figure 4) on the fair protocol: NDT1-stitch pretrained
with MtM's masking against NDT1-stitch pretrained with temporal masking, on 1, 4 and 12
animals of the many-animal synthetic brain, adapted to held-out animals (scratch; the same
for the steps of pretraining and adaptation together; every parameter from a pretrained
model), each arm's learning rate chosen on the validation split, the test split scored
once, 95% intervals over seeds and held-out animals (mtm_jax.studies.families, protocol).

  python -m experiments.scaling --flagfile=experiments/flags/scaling_small.flags   (2-core CPU)
  python -m experiments.scaling --flagfile=experiments/flags/scaling_paper.flags   (a GPU)

get_config(arg): arg = "small" | "paper" | "tiny": the NDT1 stage configs, data, steps,
seeds and learning-rate grid of the family study's "small" | "full" | "tiny" presets
(configs/family_study.py), with MtM's masking (family "mtm") and temporal masking (family
"temporal", no prompt tokens) in both stages; small adds 4 pretraining animals.
"""

import ml_collections

from mtm_jax.configs import family_study
from mtm_jax.studies import protocol


def _temporal(stage: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  out = ml_collections.ConfigDict(stage.to_dict())
  out.masking.mode, out.model.use_prompt = "temporal", False
  return out


def get_config(arg: str = "small") -> ml_collections.ConfigDict:
  presets = {"small": "small", "paper": "full", "tiny": "tiny"}
  if arg not in presets:
    raise ValueError(f"scaling config: unknown preset {arg!r}; expected small, paper or tiny")
  base = family_study.get_config(presets[arg])
  c = ml_collections.ConfigDict()
  c.study = base.study
  c.study.name = "scaling"
  c.study.families = ("mtm", "temporal")
  c.study.arms = (protocol.SCRATCH, protocol.MATCHED, protocol.ALL)
  if arg == "small":
    c.study.sizes = (1, 4, 12)
  c.mtm = family_study.family("NDT1, MtM masking", "ibl_binned")
  c.temporal = family_study.family("NDT1, temporal masking", "ibl_binned")
  c.mtm.pretrain, c.mtm.finetune = base.ndt1.pretrain, base.ndt1.finetune
  c.temporal.pretrain, c.temporal.finetune = _temporal(base.ndt1.pretrain), _temporal(base.ndt1.finetune)
  return c
