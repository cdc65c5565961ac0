"""The multi-session scaling study (the MtM paper's Figure 4) on the synthetic sessions.

  python -m experiments.scaling --flagfile=experiments/flags/scaling_small.flags   (2-core CPU)
  python -m experiments.scaling --flagfile=experiments/flags/scaling_paper.flags   (a GPU)

For each masking mode and each number n of pretraining sessions, NDT1-stitch is
pretrained on the first n sessions of study.pool, then fine-tuned on every held-out
session (fresh stitchers and session token, shared weights from pretraining); the same
model trained on each held-out session alone, with the same fine-tuning recipe and steps,
is the n = 0 ("scratch") baseline. Every
fine-tuned model is scored with the four activity metrics and behaviour decoding.

get_config(arg): arg = "small" (mini NDT1 pretrained on 1 or 12 of the 12 smallest
synthetic pretraining sessions, 2 small held-out sessions, no decoding heads; under 30 min
on 2 CPU cores) | "paper" (paper-size NDT1, 1/4/12/24 sessions, 4 held out) | "tiny" (tests).
"""

import ml_collections

from mtm_jax.configs import ndt1 as ndt1_config


def _stage(preset: str, steps: int, learning_rate: float, eval_every: int) -> ml_collections.ConfigDict:
  c = ndt1_config.get_config(f"{preset},stitch")
  c.train.steps = steps
  c.optimizer.learning_rate = learning_rate
  c.train.log_every = min(c.train.log_every, steps)
  c.train.eval_every = c.train.checkpoint_every = eval_every
  c.train.keep_checkpoints = 1
  return c


def get_config(arg: str = "small") -> ml_collections.ConfigDict:
  if arg not in ("small", "paper", "tiny"):
    raise ValueError(f"scaling config: unknown preset {arg!r}; expected small, paper or tiny")
  c = ml_collections.ConfigDict()
  c.study = ml_collections.ConfigDict()
  c.study.sizes = (1, 4, 12, 24)  # numbers of pretraining sessions (first n of study.pool)
  c.study.modes = ("mtm", "temporal")  # masking of pretraining and fine-tuning (mtm_jax.masking.MODES)
  c.study.pool = ",".join(ndt1_config.SYNTHETIC_PRETRAIN)  # pretraining sessions, in order
  c.study.heldout = ",".join(ndt1_config.SYNTHETIC_HELDOUT)  # fine-tuned and scored
  c.study.scratch = True  # also train each held-out session alone (n = 0)
  c.study.data_dir = "data/tfds"  # TFDS data_dir; missing sessions are built there
  c.study.split = "test"  # split scored on each held-out session

  # Stage configs (mtm_jax/configs/ndt1.py); data.datasets, masking and init are set per run.
  if arg == "paper":
    c.pretrain = _stage("paper", steps=20_000, learning_rate=1e-4, eval_every=1000)
    c.finetune = _stage("paper", steps=5_000, learning_rate=1e-4, eval_every=1000)
  elif arg == "small":
    # Evaluation costs (neurons x test trials) forward passes per session and building a
    # session costs its neurons x trials, so the small study uses small sessions: it
    # pretrains on the 12 smallest of the 24 (103-314 neurons, smallest first) and holds
    # out two small ones outside them.
    c.study.sizes = (1, 12)  # with 4 as well the study takes 33 min on the 2-core CPU
    c.study.pool = ",".join(f"ibl_binned/synthetic_{i:03d}" for i in (20, 0, 18, 7, 2, 6, 13, 15, 10, 19, 8, 16))
    c.study.heldout = "ibl_binned/synthetic_023,ibl_binned/synthetic_027"  # 171 and 138 neurons
    c.pretrain = _stage("demo", steps=1000, learning_rate=2e-3, eval_every=1000)
    c.finetune = _stage("demo", steps=1000, learning_rate=2e-3, eval_every=1000)
    for stage in (c.pretrain, c.finetune):
      stage.model.size, stage.model.stitch_dim = "mini", 64
    c.finetune.eval.head_steps = 0  # the frozen-model decoders only
  else:
    c.study.sizes = (1, 2)
    c.study.pool = "ibl_binned/synthetic_000,ibl_binned/synthetic_007"  # 114 and 134 neurons
    c.study.heldout = ndt1_config.SYNTHETIC_HELDOUT[3]  # 138 neurons
    c.pretrain = _stage("tiny", steps=6, learning_rate=1e-3, eval_every=6)
    c.finetune = _stage("tiny", steps=4, learning_rate=1e-3, eval_every=4)
    for stage in (c.pretrain, c.finetune):
      stage.eval.decoding_folds = 3
    c.finetune.eval.head_steps = 0
  return c
