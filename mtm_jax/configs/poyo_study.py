"""POYO on new sessions: single-session training vs the ridge baseline, and adaptation of
a multi-session model by unit identification vs full fine-tuning (POYO paper, Sec. 4).

  python -m experiments.poyo_study --flagfile=experiments/flags/poyo_small.flags

Runs (each a normal POYO workdir, loadable by path alone):
  scratch/   POYO trained on the held-out session alone
  pretrain/  POYO trained on the sessions of study.pool (pretrain_<n>/: the stage on the
             first n pool sessions when study.pool_stages has several stages)
  unit_id/   pretrain/ adapted to the held-out session: new unit and session rows only
  full/      the same after a unit-id warm-up, then every parameter
Each is scored on the held-out session's study.split with the sliding-window R^2 and the
ridge (Wiener filter) baseline on lagged binned counts, fitted on its training split.

get_config(arg): arg = "small" (a compact POYO pretrained on 4, then 16, then 32 synthetic
reaching sessions) | "tiny" (tests).
"""

import ml_collections

from mtm_jax.configs import poyo as poyo_config


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
  c.study.pool = ",".join(f"spike_events/reaching_{i:03d}" for i in range(1, 33))  # pretraining sessions
  # Pretraining grows the pool: the first pool_stages[0] sessions from scratch (config.pretrain),
  # then each larger prefix of the pool continues from the previous model (config.grow: the
  # new sessions' unit and session rows alone for grow.finetune.warmup_steps, then everything).
  # () = one stage on the whole pool.
  c.study.pool_stages = (4, 16, 32)
  c.study.stage_steps = ()  # training steps of each stage; () = pretrain.train.steps, then grow.train.steps
  c.study.heldout = "spike_events/reaching_000"  # the new session (168 units, 129 trials)
  c.study.data_dir = "data/tfds"  # TFDS data_dir; missing sessions are built there
  c.study.split = "test"
  if arg == "small":
    # 2000 steps on 4 sessions, 1500 more on 16, 4500 more on 32 (the last stage is longest:
    # the adapted model's unit-id / full R^2 ratio went from 87% after 1500 steps on 32 to
    # 91% after 4500; README, POYO).
    c.scratch, c.pretrain, c.grow, c.finetune = _stage(2000), _stage(2000), _stage(1500), _stage(1200)
    c.study.stage_steps = (2000, 1500, 4500)
    c.pretrain.model.size = c.grow.model.size = "compact"
  else:
    c.study.pool = "spike_events/reaching_001,spike_events/reaching_002"
    c.study.pool_stages = (1, 2)
    c.scratch, c.pretrain, c.grow, c.finetune = _stage(4), _stage(4), _stage(4), _stage(4)
    for stage in (c.scratch, c.pretrain, c.grow, c.finetune):
      stage.data.token_buckets = (256, 512, 1024, 2048)
      stage.data.unit_dropout_min, stage.data.unit_dropout_mode, stage.data.unit_dropout_max = 2, 4, 8
  c.grow.finetune.warmup_steps = c.grow.train.steps // 5  # the new sessions' rows first, in every grow stage
  c.finetune.finetune.warmup_steps = c.finetune.train.steps // 4  # "full": unit-id steps first
  return c
