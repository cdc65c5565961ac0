"""BrainWideBench end to end (mtm_jax.bwb.benchmark): pretrain each family on BWB's pretrain
sessions, adapt it to each eval session with each seed, predict TS1, TS2 and TS3, write the
submission and score it locally.

  python -m experiments.bwb --sessions_dir=<BWB root> --workdir=runs/bwb                (small)
  python -m experiments.bwb --config=mtm_jax/configs/bwb.py:full --sessions_dir=... --workdir=...

get_config(arg): arg = "small" (compact models, a 2-core CPU; the test fixtures' size of
sessions) | "full" (NDT1 at the MtM paper's size against the "base" spike-token MtM; a GPU)
| "tiny" (tests). The stage configs are the family study's (configs/family_study.py) and,
for NEDS ("neds", run with --family=neds), configs/neds.py's ("demo" for small, "medium" for
full, "tiny"): spikes, wheel speed and whisker motion energy, the traces bwb_binned data sets
carry (as `behaviour` columns, with paw speeds and licking rate, which NEDS does not model;
1 s windows have no trial-level choice or block). NEDS is not in study.families by default: its
small run costs about 9 min on 2 cores for one eval and three pretrain fixture sessions,
NDT1-MtM's 95 s (measured; three modalities of 50 tokens each against NDT1's 50). The data sets, steps, seeds and learning
rate are set per run (studies.families.stage_config, adapt_config). Every family adapts with "warm-up then all": the new session's rows alone for
study.warmup_steps, then every parameter.
"""

import ml_collections

from mtm_jax.configs import family_study
from mtm_jax.configs import neds as neds_config

NEDS_PRESETS = {"small": "demo", "full": "medium", "tiny": "tiny"}  # configs/neds.py preset of each
NEDS_MODALITIES = ("spike", "wheel", "whisker")  # what bwb_binned gives NEDS (module docstring)
SEEDS = (43, 44, 45)  # BWB reports seeds 43-47 (at least 3 contiguous); 42 is for tuning only


def get_config(arg: str = "small") -> ml_collections.ConfigDict:
  if arg not in ("small", "full", "tiny"):
    raise ValueError(f"bwb config: unknown preset {arg!r}; expected small, full or tiny")
  base = family_study.get_config(arg)
  c = ml_collections.ConfigDict()
  c.study = s = ml_collections.ConfigDict()
  s.name = "bwb"
  s.families = ("ndt1", "spike")  # each a config.<family> (configs/family_study.family); "neds" also exists
  s.data_dir = "data/tfds"
  s.seeds = SEEDS
  s.pretrain_steps, s.adapt_steps, s.warmup_steps = 20_000, 5_000, 1_000
  s.learning_rate = 3e-4  # adaptation's (pretraining's: the stage config's)
  c.bwb = b = ml_collections.ConfigDict()
  b.sessions_dir = ""  # <build>/ibl_brain_wide_bench_2026/<eval|pretrain>/<eid>.h5 (--sessions_dir)
  b.suites = ("ts1", "ts2", "ts3")
  b.label = "mtm_jax_{family}"  # the submission label of each family
  c.ndt1 = family_study.family("NDT1-MtM", "bwb_binned")
  c.spike = family_study.family("spike-token MtM", "spike_events")
  c.neds = family_study.family("NEDS", "bwb_binned")
  for f in ("ndt1", "spike"):
    c[f].pretrain, c[f].finetune = base[f].pretrain, base[f].finetune
  c.neds.pretrain, c.neds.finetune = _neds(arg), _neds(arg)
  for f in ("ndt1", "spike", "neds"):
    for stage in (c[f].pretrain, c[f].finetune):
      if "max_bins" in stage.model:
        stage.model.max_bins = 50  # BWB's 1 s windows of 20 ms bins
      if "context" in stage.data:
        stage.data.context = stage.model.context = 1.0  # the spike-token model reads 1 s windows
  if arg == "small":
    s.pretrain_steps, s.adapt_steps, s.warmup_steps = 600, 200, 50
    s.learning_rate = 3e-3
  elif arg == "tiny":
    s.pretrain_steps, s.adapt_steps, s.warmup_steps = 4, 3, 1
    s.learning_rate = 1e-3
  return c


def _neds(arg: str) -> ml_collections.ConfigDict:
  """A NEDS stage config (configs/neds.py) of BWB's modalities, one checkpoint kept."""
  c = neds_config.get_config(NEDS_PRESETS[arg])
  c.model.modalities = NEDS_MODALITIES
  c.train.keep_checkpoints = 1
  c.train.log_every = 10 if arg == "tiny" else 100
  return c
