"""NEDS (neural encoding and decoding at scale): spikes, wheel speed, whisker motion energy,
choice and block as masked modalities of one transformer. `get_config(arg)`: arg =
"single" | "medium" | "large" | "demo" | "tiny".

  python -m experiments.pretrain --config=mtm_jax/configs/neds.py:demo \
      --config.data.datasets=ibl_binned/synthetic_000,ibl_binned/synthetic_007 --workdir=runs/neds
  python -m experiments.finetune --config=mtm_jax/configs/neds.py:demo --pretrained=runs/neds \
      --datasets=ibl_binned/synthetic_024 --workdir=runs/neds_024
  python -m experiments.evaluate --workdir=runs/neds

"single", "medium" and "large" are the paper's models (yzhang511/NEDS
src/configs/multi_modal/mm_single_session.yaml, mm_medium_size.yaml, mm_large_size.yaml:
5, 16 and 22 layers of width 256, 8 heads, MLP 512, dropout 0.4, embedding dropout 0.2,
T-Fixup) with their trainer's optimiser (trainer_mm.yaml, trainer_multi_session.yaml:
AdamW, lr 2e-4, weight decay 0.01, one-cycle with 15% warm-up, cosine, div_factor 10;
batch 16 for one session, 64 for many), sized for a GPU; "demo" trains in minutes on a
2-core CPU; "tiny" is for tests (README: what each preset costs).

Data only: the checks are mtm_jax.tasks.neds.check_config, the model's fields
mtm_jax.models.neds.Hparams.
"""

import ml_collections

PRESETS = ("single", "medium", "large", "demo", "tiny")


def get_config(arg: str = "single") -> ml_collections.ConfigDict:
  preset = arg
  if preset not in PRESETS:
    raise ValueError(f"neds config: unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
  c = ml_collections.ConfigDict()
  c.family = "neds"  # model family: the programs dispatch on it (tasks/registry.py)
  c.seed = 0  # parameter init, scheme, mask and dropout keys

  c.data = ml_collections.ConfigDict()
  # TFDS names of ibl_binned data sets, comma-separated; a session's position is its row in
  # the per-session tables. Each batch holds trials of one session; sessions interleave.
  c.data.datasets = "ibl_binned/synthetic_000"
  c.data.data_dir = "data/tfds"  # TFDS data_dir (made absolute at run time)
  c.data.batch_size = 16  # global batch, trials of one session (trainer_mm.yaml)
  c.data.shuffle_seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.size = preset  # a row of mtm_jax.models.neds.PRESETS (its fields given here replace the row's)
  c.model.max_bins = 100  # time bins per trial (T): one token per bin per modality
  c.model.embed_mult = 2  # spike stitcher Linear(N, mult * N) -> softsign -> Linear(mult * N, width)
  c.model.dropout = 0.4  # transformer dropout
  c.model.attention_dropout = 0.4
  c.model.embed_dropout = 0.2
  c.model.fixup_init = True  # T-Fixup initialisation of the blocks (the paper's)
  c.model.rope_base = 10000.0  # rotary embedding over the bin index (modalities share positions)
  # The modalities of the model, of mtm_jax.modalities.MODALITIES; a data set lacking one of
  # them (e.g. no whisker camera) has it absent (present False: never a target, never attended).
  c.model.modalities = ("spike", "choice", "block", "wheel", "whisker")
  c.model.dtype = "float32"  # compute dtype: "float32" or "bfloat16" (params, optimiser and loss stay float32)

  c.masking = ml_collections.ConfigDict()
  # The five schemes (mtm_jax.modalities.SCHEMES): encoding (behaviour -> spikes), decoding
  # (spikes -> behaviour), self_spike, self_behaviour, cross_modal; each drawn with its weight.
  c.masking.schemes = ("encoding", "decoding", "self_spike", "self_behaviour", "cross_modal")
  c.masking.weights = (1.0, 1.0, 1.0, 1.0, 1.0)
  # Temporal mask ratio of the self and cross-modal schemes: 0.3 in mm*.yaml (their train.py's
  # --mask_ratio, default 0.1, is what a run actually uses unless given; BWB's NEDS: 0.1).
  c.masking.ratio = 0.3
  # True (BWB's choice, the default): each example draws its own scheme and its own temporal
  # mask, so every batch trains all five objectives at once and no two examples share a
  # mask. False: NEDS's original per-batch draw (one scheme, row 0's mask for every example),
  # kept for parity with their code.
  c.masking.per_example = True

  c.loss = ml_collections.ConfigDict()
  # Weight of each modality's loss in the sum (Poisson NLL for spikes, MSE for wheel and
  # whisker, cross-entropy for choice and block; NEDS: all 1).
  c.loss.spike = c.loss.choice = c.loss.block = c.loss.wheel = c.loss.whisker = 1.0

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.learning_rate = 2e-4  # peak of the one-cycle schedule
  c.optimizer.weight_decay = 0.01
  c.optimizer.warmup_fraction = 0.15
  c.optimizer.div_factor = 10.0  # start lr = peak / div_factor
  c.optimizer.final_div_factor = 1e4  # end lr = start lr / final_div_factor (PyTorch's OneCycleLR default)

  c.train = ml_collections.ConfigDict()
  c.train.steps = 37_500  # 2000 epochs (trainer_mm.yaml) of a ~300-trial training split at batch 16
  c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 100, 1000, 1000  # logs, val loss, checkpoints
  c.train.keep_checkpoints = 3
  c.train.max_nonfinite_steps = 10  # non-finite steps in a row (each skipped) that stop the run

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # devices on the data axis (-1 = all the devices not on the model axis)
  c.mesh.model = 1  # devices on the model axis (tensor parallel over heads and MLP width)

  c.init = ml_collections.ConfigDict()
  c.init.pretrained = ""  # workdir of a pretrained NEDS: start from its weights
  c.init.step = -1  # its checkpoint step (-1 = latest)

  c.finetune = ml_collections.ConfigDict()
  c.finetune.mode = "full"  # with init.pretrained: "full" (everything trains) or "unit_id" (new sessions' rows only)
  c.finetune.warmup_steps = 0  # "full": steps that train only the new sessions' rows before everything trains

  c.eval = ml_collections.ConfigDict()
  c.eval.split = "test"
  c.eval.max_batch = 1024  # sequences per forward pass in evaluation
  c.eval.max_masks = 0  # > 0: the four activity tasks score the same random sample of at most this many neurons

  if preset in ("medium", "large"):
    c.data.batch_size = 64  # trainer_multi_session.yaml
    c.train.steps = 375_000  # 2000 epochs of 40 sessions of ~300 training trials at batch 64
    c.train.eval_every = c.train.checkpoint_every = 5000
  elif preset == "demo":
    c.model.size = "single"  # with a CPU's width and depth:
    c.model.width, c.model.n_layers, c.model.n_heads, c.model.mlp_width = 128, 2, 4, 256
    c.model.dropout = c.model.attention_dropout = 0.1
    c.model.embed_dropout = 0.1
    c.optimizer.learning_rate = 1e-3
    c.train.steps = 1500
    c.train.eval_every = c.train.checkpoint_every = 500
    c.eval.max_masks = 32
  elif preset == "tiny":
    c.model.dropout = c.model.attention_dropout = c.model.embed_dropout = 0.1
    c.data.batch_size, c.optimizer.learning_rate = 8, 1e-3
    c.train.steps, c.train.log_every = 20, 5
    c.train.eval_every = c.train.checkpoint_every = 10
    c.eval.max_batch, c.eval.max_masks = 256, 6
  return c
