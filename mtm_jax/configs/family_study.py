"""NDT1-MtM against spike-token MtM on held-out animals of the synthetic brain, on the fair
protocol (mtm_jax.studies.families, mtm_jax.studies.protocol).

  python -m experiments.family_study --flagfile=experiments/flags/family_small.flags   (2-core CPU)
  python -m experiments.family_study --config=mtm_jax/configs/family_study.py:full --workdir=runs/families

get_config(arg): arg = "small" (compact models of similar size; scratch, 1 and 12 animals
and the 1-animal control; 3 seeds x 2 held-out animals) | "full" (NDT1 at the paper's size
against the "base" spike-token MtM; 1, 4 and 12 animals; 5 seeds x 3 held-out animals; a
GPU) | "tiny" (tests; sessions of the one-animal brain). Stage configs:
mtm_jax/configs/ndt1.py (",stitch") and poyo_mtm.py; steps, data sets, seeds, learning
rates and init are set per run (studies.families.adapt_config)."""

import ml_collections

from mtm_jax.configs import ndt1 as ndt1_config
from mtm_jax.configs import poyo_mtm as poyo_mtm_config
from mtm_jax.studies import protocol

# The many-animal synthetic brain (docs/synthetic_data.md, "Many animals"): 12 animals to
# pretrain on, 4 held out; each session's config name is "<animal>_s<k>".
POOL = tuple(f"animal{i:02d}" for i in range(12))
HELDOUT = tuple(f"animal{i:02d}" for i in range(12, 16))


def study_stage(c, log_every: int):
  """A stage config of the study: steps, evaluation and checkpoints are set per run
  (studies.families.stage_config); one checkpoint kept."""
  c.train.log_every = log_every
  c.train.keep_checkpoints = 1
  return c


def ndt1_stage(preset: str, log_every: int, learning_rate: float):
  """NDT1-MtM with stitching; learning_rate is pretraining's (adaptation's comes from study.learning_rates)."""
  c = study_stage(ndt1_config.get_config(f"{preset},stitch"), log_every)
  c.optimizer.learning_rate = learning_rate
  c.masking.causal_suffix = True  # the causal scheme hides a suffix of bins, as spike-token MtM's does
  return c


def spike_stage(preset: str, log_every: int):
  return study_stage(poyo_mtm_config.get_config(preset), log_every)


def small_ndt1() -> ml_collections.ConfigDict:
  """The small study's NDT1-MtM stage: "demo" with 64-wide stitchers at batch 8 (about 300k
  parameters), no fine-tuned heads, the four metrics scored on 24 neurons per session."""
  c = ndt1_stage("demo", 200, 2e-3)
  c.model.stitch_dim = 64
  c.data.batch_size = 8
  c.eval.head_steps, c.eval.max_masks = 0, 24
  return c


def family(label: str, builder: str) -> ml_collections.ConfigDict:
  """config.<family> of a study (studies.families): its label in the tables and the TFDS
  builder of its sessions; the preset sets its stage configs (pretrain, finetune)."""
  return ml_collections.ConfigDict(dict(label=label, builder=builder))


def get_config(arg: str = "small") -> ml_collections.ConfigDict:
  if arg not in ("small", "full", "tiny"):
    raise ValueError(f"family_study config: unknown preset {arg!r}; expected small, full or tiny")
  c = ml_collections.ConfigDict()
  c.study = s = ml_collections.ConfigDict()
  s.name = "families"  # the outputs: <workdir>/<name>.csv, .md, .png
  s.families = ("ndt1", "spike")  # each a config.<family> (family)
  s.pool, s.heldout = ",".join(POOL), ",".join(HELDOUT[:3])  # animals
  s.session_name = "{animal}_s{session}"  # an animal's session k as a TFDS config name
  s.sessions_per_animal = 2  # sessions of each pool animal that pretraining reads
  s.heldout_session = 0  # the session of each held-out animal that every arm adapts to
  s.sizes = (1, 4, 12)  # pretraining animals (the first n of study.pool), each at study.pretrain_steps
  s.pretrain_steps = 20_000
  s.control_steps = 60_000  # the 1-animal control's pretraining steps (0: none)
  s.adapt_steps = 5_000  # every arm, both families
  s.warmup_steps = 1_000  # "warm-up then all": the new rows alone for this many steps
  s.seeds = (0, 1, 2, 3, 4)  # the first also tunes the learning rate (validation split)
  s.learning_rates = (1e-4, 3e-4, 1e-3)  # the grid every arm chooses from
  s.arms = protocol.ARMS
  s.data_dir = "data/tfds"
  s.split = "test"  # scored once, with the chosen learning rate
  c.ndt1, c.spike = family("NDT1-MtM", "ibl_binned"), family("spike-token MtM", "spike_events")
  if arg == "full":
    c.ndt1.pretrain, c.ndt1.finetune = ndt1_stage("paper", 1000, 1e-4), ndt1_stage("paper", 1000, 1e-4)
    c.spike.pretrain, c.spike.finetune = spike_stage("base", 1000), spike_stage("base", 1000)
  elif arg == "small":
    # 3 seeds x 2 held-out animals, scratch and 1 and 12 animals, every arm of both
    # families, the 1-animal control; both families at batch 8 with about 300k parameters
    # (NDT1 "demo" with 64-wide stitchers, spike-token "small"), sized for a 2-core CPU:
    # short runs, and the four metrics scored on 24 neurons per session (the
    # same for every arm; docs/protocol.md).
    s.heldout, s.sizes, s.seeds = ",".join(HELDOUT[:2]), (1, 12), (0, 1, 2)
    s.pretrain_steps, s.control_steps, s.adapt_steps, s.warmup_steps = 600, 1800, 200, 50
    s.learning_rates = (3e-3, 1e-2)
    c.ndt1.pretrain, c.ndt1.finetune = small_ndt1(), small_ndt1()
    c.spike.pretrain, c.spike.finetune = spike_stage("small", 200), spike_stage("small", 200)
    for stage in (c.spike.pretrain, c.spike.finetune):
      stage.data.batch_size = 8
      stage.data.max_queries = 256
      stage.eval.bin_sizes = (0.02,)
      stage.eval.fine_tasks = ()
      stage.eval.head_steps, stage.eval.max_masks = 0, 24
  else:
    s.pool, s.heldout, s.sizes, s.seeds = "synthetic_000", "synthetic_027", (1,), (0, 1)
    s.session_name, s.sessions_per_animal = "{animal}", 1  # the one-animal brain's sessions
    s.pretrain_steps, s.control_steps, s.adapt_steps, s.warmup_steps = 4, 0, 3, 1
    s.learning_rates = (1e-3, 2e-3)
    c.ndt1.pretrain, c.ndt1.finetune = ndt1_stage("tiny", 4, 1e-3), ndt1_stage("tiny", 3, 1e-3)
    for stage in (c.ndt1.pretrain, c.ndt1.finetune):
      stage.eval.decoding_folds, stage.eval.head_steps = 3, 0
    c.spike.pretrain, c.spike.finetune = spike_stage("tiny", 4), spike_stage("tiny", 3)
    for stage in (c.spike.pretrain, c.spike.finetune):
      stage.data.batch_size = 8  # a multiple of the test suite's 8 devices
      stage.data.token_buckets = (4096, 6144)
      stage.eval.bin_sizes = (0.02,)
      stage.eval.fine_tasks = ()
      stage.eval.batch_size, stage.eval.max_rows, stage.eval.head_steps = 64, 4096, 0
  return c
