"""POYO on new sessions: single-session training vs the ridge baseline, and adaptation of
a multi-session model by unit identification vs full fine-tuning (POYO paper, Sec. 4).

  python -m experiments.poyo_study --flagfile=experiments/flags/poyo_small.flags

Runs (each a normal POYO workdir, loadable by path alone):
  scratch/   POYO trained on the held-out session alone
  pretrain/  POYO trained on the sessions of study.pool
  unit_id/   pretrain/ adapted to the held-out session: new unit and session rows only
  full/      the same after a unit-id warm-up, then every parameter
Each is scored on the held-out session's study.split with the sliding-window R^2 and the
ridge (Wiener filter) baseline on lagged binned counts, fitted on its training split.

get_config(arg): arg = "small" (a compact POYO on synthetic reaching sessions; about half
an hour on 2 CPU cores) | "tiny" (tests).
"""

import ml_collections

from mtm_jax.configs import poyo as poyo_config
from mtm_jax.datasets import schema


def _stage(steps: int) -> ml_collections.ConfigDict:
  """A POYO training config with the study's data and optimiser settings."""
  c = poyo_config.get_config("tiny")
  c.data.batch_size, c.eval.batch_size = 16, 32
  c.data.token_buckets = (1024, 2048)  # ~100-170 units at ~8 Hz: 1-2k tokens per 1 s window
  c.data.unit_dropout_min, c.data.unit_dropout_mode, c.data.unit_dropout_max = 30, 100, 300
  c.optimizer.base_learning_rate = 2.5e-4  # peak lr 4e-3 at batch 16
  c.train.steps = steps
  c.train.log_every = min(100, steps)
  c.train.eval_every = c.train.checkpoint_every = max(steps // 4, 1)
  c.train.keep_checkpoints = 1
  return c


def get_config(arg: str = "small") -> ml_collections.ConfigDict:
  if arg not in ("small", "tiny"):
    raise ValueError(f"poyo_study config: unknown preset {arg!r}; expected small or tiny")
  c = ml_collections.ConfigDict()
  c.study = ml_collections.ConfigDict()
  c.study.pool = ",".join(f"spike_events/reaching_{i:03d}" for i in (1, 2, 3, 4))  # pretraining sessions
  c.study.heldout = "spike_events/reaching_000"  # the new session (168 units, 129 trials)
  c.study.data_dir = "data/tfds"  # TFDS data_dir; missing sessions are built there
  c.study.split = "test"
  if arg == "small":
    c.scratch, c.pretrain, c.finetune = _stage(2000), _stage(2000), _stage(600)
  else:
    c.study.pool = "spike_events/reaching_001"
    c.scratch, c.pretrain, c.finetune = _stage(4), _stage(4), _stage(4)
    for stage in (c.scratch, c.pretrain, c.finetune):
      stage.data.token_buckets = (256, 512, 1024, 2048)
      stage.data.unit_dropout_min, stage.data.unit_dropout_mode, stage.data.unit_dropout_max = 2, 4, 8
  c.finetune.finetune.warmup_steps = c.finetune.train.steps // 4  # "full": unit-id steps first
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the field when the study is inconsistent."""
  pool = schema.parse_datasets(c.study.pool, "config.study.pool")
  heldout = schema.parse_datasets(c.study.heldout, "config.study.heldout")
  if len(heldout) != 1:
    raise ValueError(f"config.study.heldout: expected one session, got {heldout}")
  if heldout[0] in pool:
    raise ValueError(f"config.study.heldout: {heldout[0]} is also in config.study.pool")
  for stage in ("scratch", "pretrain", "finetune"):
    poyo_config.validate(c[stage])
