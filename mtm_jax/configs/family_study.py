"""NDT1-MtM against spike-token MtM on the synthetic brain (mtm_jax.studies.families).

  python -m experiments.family_study --flagfile=experiments/flags/family_small.flags   (2-core CPU)
  python -m experiments.family_study --config=mtm_jax/configs/family_study.py:full --workdir=runs/families

get_config(arg): arg = "small" (compact models of similar size, 1/4/12 of the 12 smallest
synthetic pretraining sessions, one held-out session) | "full" (NDT1 at the
paper's size against the "base" spike-token MtM, 1/4/12 sessions, 4 held out; a GPU) |
"tiny" (tests). Stage configs: mtm_jax/configs/ndt1.py (",stitch") and poyo_mtm.py;
data.datasets and init are set per run.
"""

import ml_collections

from mtm_jax.configs import ndt1 as ndt1_config
from mtm_jax.configs import poyo_mtm as poyo_mtm_config

# The 12 smallest of the 24 synthetic pretraining sessions (103-314 neurons), smallest first.
SMALL_POOL = tuple(f"synthetic_{i:03d}" for i in (20, 0, 18, 7, 2, 6, 13, 15, 10, 19, 8, 16))


def _steps(c, steps: int, eval_every: int):
  c.train.steps = steps
  c.train.log_every = min(c.train.log_every, steps)
  c.train.eval_every = c.train.checkpoint_every = eval_every
  c.train.keep_checkpoints = 1
  return c


def _ndt1(preset: str, steps: int, eval_every: int, learning_rate: float):
  c = _steps(ndt1_config.get_config(f"{preset},stitch"), steps, eval_every)
  c.optimizer.learning_rate = learning_rate
  return c


def _spike(preset: str, steps: int, eval_every: int):
  return _steps(poyo_mtm_config.get_config(preset), steps, eval_every)


def get_config(arg: str = "small") -> ml_collections.ConfigDict:
  if arg not in ("small", "full", "tiny"):
    raise ValueError(f"family_study config: unknown preset {arg!r}; expected small, full or tiny")
  c = ml_collections.ConfigDict()
  c.study = ml_collections.ConfigDict()
  c.study.sizes = (1, 4, 12)  # numbers of pretraining sessions (first n of study.pool)
  c.study.pretrain_steps = ()  # pretraining steps per entry of study.sizes (empty: each family's pretrain.train.steps)
  c.study.pool = ",".join(name.split("/")[1] for name in ndt1_config.SYNTHETIC_PRETRAIN)  # config names
  c.study.heldout = ",".join(name.split("/")[1] for name in ndt1_config.SYNTHETIC_HELDOUT)
  c.study.arms = ("NDT1-MtM", "spike-token MtM unit-id", "spike-token MtM full")  # studies.families.ARMS
  c.study.scratch = True  # also train each family on each held-out session alone (n = 0)
  c.study.data_dir = "data/tfds"
  c.study.split = "test"
  c.ndt1, c.spike = ml_collections.ConfigDict(), ml_collections.ConfigDict()
  if arg == "full":
    c.ndt1.pretrain, c.ndt1.finetune = _ndt1("paper", 20_000, 1000, 1e-4), _ndt1("paper", 5_000, 1000, 1e-4)
    c.spike.pretrain, c.spike.finetune = _spike("base", 20_000, 1000), _spike("base", 5_000, 1000)
  elif arg == "small":
    # One held-out session, and both families at batch 8 for the same number of steps, so
    # the 17 runs fit in 40 min on a 2-core CPU; NDT1 "demo" with 64-wide stitchers and
    # spike-token "small" hold about 300k parameters each on one session.
    c.study.pool = ",".join(SMALL_POOL)
    c.study.heldout = "synthetic_023"  # 171 neurons
    # More sessions, more steps (each session's units get as many updates at every size):
    # at 1000 steps, 12 sessions scored below one (0.2500 against 0.3064 bits per spike).
    c.study.pretrain_steps = (1000, 2000, 3000)
    c.ndt1.pretrain, c.ndt1.finetune = _ndt1("demo", 1000, 1000, 2e-3), _ndt1("demo", 500, 500, 2e-3)
    for stage in (c.ndt1.pretrain, c.ndt1.finetune):
      stage.model.stitch_dim = 64
      stage.data.batch_size = 8
      stage.eval.head_steps = 0
    c.spike.pretrain, c.spike.finetune = _spike("small", 1000, 1000), _spike("small", 500, 500)
    c.spike.finetune.finetune.warmup_steps = 150
    for stage in (c.spike.pretrain, c.spike.finetune):
      stage.data.batch_size = 8
      stage.data.max_queries = 512
      stage.eval.bin_sizes = (0.02, 0.005)  # the 10 ms scores equal the 20 ms ones (README)
      stage.eval.fine_tasks = ("co_smoothing",)  # 5 ms decoding of the other three took half the evaluation
      stage.eval.head_steps = 0
  else:
    c.study.sizes = (1,)
    c.study.pool = "synthetic_000"  # 114 neurons
    c.study.heldout = "synthetic_027"  # 138 neurons
    c.ndt1.pretrain, c.ndt1.finetune = _ndt1("tiny", 4, 4, 1e-3), _ndt1("tiny", 3, 3, 1e-3)
    for stage in (c.ndt1.pretrain, c.ndt1.finetune):
      stage.eval.decoding_folds, stage.eval.head_steps = 3, 0
    c.spike.pretrain, c.spike.finetune = _spike("tiny", 4, 4), _spike("tiny", 3, 3)
    c.spike.finetune.finetune.warmup_steps = 1
    for stage in (c.spike.pretrain, c.spike.finetune):
      stage.data.token_buckets = (4096, 6144)
      stage.eval.bin_sizes = (0.02, 0.005)
      stage.eval.batch_size, stage.eval.max_rows, stage.eval.head_steps = 64, 4096, 0
  return c
