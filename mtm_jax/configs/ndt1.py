"""NDT1 + MtM pretraining on one or many sessions. `get_config(arg)`: arg = "paper" |
"demo" | "tiny", optionally followed by ",temporal" for the temporal-masking baseline (no
prompt token) and ",stitch" for the multi-session model (per-session stitching layers).

  python -m experiments.pretrain --config=mtm_jax/configs/ndt1.py:paper,stitch \
      --config.data.datasets=ibl_binned/synthetic_000,ibl_binned/synthetic_001 --workdir=runs/two

  python -m experiments.pretrain --config=mtm_jax/configs/ndt1.py:demo --workdir=runs/mtm
  python -m experiments.pretrain --flagfile=experiments/flags/demo_mtm.flags

"paper" is the published setting (5 x 512, 8 heads, MLP 1024, lr 1e-4, batch 16), sized
for a GPU (about 4.6 h of training on a 2-core CPU); "demo" trains in a few minutes on a
2-core CPU; "tiny" is for tests (README: what each preset costs).

Data only: the checks are mtm_jax.tasks.ndt1.check_config, the model's fields
mtm_jax.models.ndt1.Hparams (`Hparams.from_config(config.model)`).
"""

import ml_collections

# The synthetic study's sessions (data_builders/ibl_binned): 24 to pretrain on, 4 held out.
SYNTHETIC_PRETRAIN = tuple(f"ibl_binned/synthetic_{i:03d}" for i in range(24))
SYNTHETIC_HELDOUT = tuple(f"ibl_binned/synthetic_{i:03d}" for i in range(24, 28))


def get_config(arg: str = "paper") -> ml_collections.ConfigDict:
  preset, *options = arg.split(",")
  if preset not in ("paper", "demo", "tiny"):
    raise ValueError(f"ndt1 config: unknown preset {preset!r}; expected paper, demo or tiny")
  unknown = set(options) - {"temporal", "stitch"}
  if unknown:
    raise ValueError(f"ndt1 config: unknown options {sorted(unknown)}; expected 'temporal' or 'stitch'")
  c = ml_collections.ConfigDict()
  c.family = "ndt1"  # model family: the experiment programs dispatch on it (POYO configs: "poyo"; "mtm" before)
  c.seed = 0  # parameter init, masking and dropout keys

  c.data = ml_collections.ConfigDict()
  # TFDS name/config of each session, comma-separated; a session's position is its row
  # in the session tables. Each batch holds trials of one session; sessions interleave.
  c.data.datasets = "ibl_binned/synthetic_000"
  c.data.n_sessions = 0  # > 0: train on the first n of data.datasets only
  c.data.data_dir = "data/tfds"  # TFDS data_dir (made absolute at run time)
  c.data.batch_size = 16  # global batch, trials of one session
  c.data.shuffle_seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.size = preset  # a row of mtm_jax.models.ndt1.PRESETS, or "<width>x<layers>x<heads>x<mlp width>"
  c.model.stitch_dim = 0  # > 0: per-session Linear(N_s, stitch_dim) in and Linear(D, N_s) out
  c.model.max_bins = 100
  c.model.embed_mult = 2  # input embedding Linear(N, mult * N)
  c.model.dropout = 0.4  # transformer (MLP, attention output) dropout
  c.model.attention_dropout = 0.4  # dropout on attention probabilities
  c.model.embed_dropout = 0.2
  c.model.use_prompt = True  # prepend the prompt token of the masking scheme
  c.model.use_session = True  # prepend the session token
  c.model.special_tokens_see_future = False  # True = the reference's causal-mode leak
  c.model.layer_norm_eps = 1e-5
  c.model.dtype = "float32"  # compute dtype: "float32" or "bfloat16" (params, optimiser and loss stay float32)
  c.model.remat = False  # recompute transformer-layer activations in the backward pass (large models)
  c.model.fixup_init = False  # T-Fixup initialisation of the blocks (the reference's setting: True)

  c.masking = ml_collections.ConfigDict()
  c.masking.mode = "mtm"  # one of mtm_jax.masking.MODES
  c.masking.ratio = 0.3
  c.masking.causal_ratio = 0.6
  c.masking.causal_suffix = (
    False  # causal masking hides random bins (the reference); True: a suffix (spike-token MtM's)
  )

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.learning_rate = 1e-4  # peak of the one-cycle schedule
  c.optimizer.weight_decay = 0.01
  c.optimizer.warmup_fraction = 0.15
  c.optimizer.div_factor = 10.0  # start lr = peak / div_factor
  c.optimizer.final_div_factor = 1e4  # end lr = start lr / final_div_factor

  c.train = ml_collections.ConfigDict()
  c.train.steps = 20_000  # ~1000 epochs of a 300-trial training split at batch 16
  c.train.log_every = 100
  c.train.eval_every = 1000  # validation loss
  c.train.checkpoint_every = 1000
  c.train.keep_checkpoints = 3
  c.train.max_nonfinite_steps = 10  # non-finite steps in a row (each skipped) that stop the run

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # devices on the data axis (-1 = all the devices not on the model axis)
  c.mesh.model = 1  # devices on the model axis: tensor parallel over attention heads and MLP width

  c.init = ml_collections.ConfigDict()
  c.init.pretrained = ""  # workdir of a pretrained model: start from its shared weights
  c.init.step = -1  # its checkpoint step (-1 = latest)

  c.finetune = ml_collections.ConfigDict()
  c.finetune.mode = (
    "full"  # with init.pretrained: "full" (everything trains) or "unit_id" (new stitchers and session row only)
  )
  c.finetune.warmup_steps = 0  # "full": steps that train only the new per-session layers before everything trains

  c.eval = ml_collections.ConfigDict()
  c.eval.split = "test"
  c.eval.max_batch = 2048  # sequences per forward pass in evaluation
  c.eval.max_masks = 0  # > 0: the four tasks score the same fixed random sample of at most this many neurons (0: all)
  c.eval.decoding_prompt = "neuron"  # prompt given to the frozen model for behaviour decoding
  c.eval.decoding_folds = 5  # cross-validation folds of the behaviour decoders
  c.eval.decoding_seed = 0
  c.eval.head_steps = 300  # > 0: also fine-tune a supervised decoding head per behaviour

  if preset == "demo":
    c.model.dropout = 0.2
    c.model.attention_dropout = 0.0  # no dropout mask over [B, H, L, L] probabilities: faster on CPU
    c.optimizer.learning_rate = 2e-3
    c.train.steps = 2000
    c.train.log_every = 100
    c.train.eval_every = c.train.checkpoint_every = 500
  elif preset == "tiny":
    c.model.dropout = c.model.attention_dropout = c.model.embed_dropout = 0.1
    c.data.batch_size = 8
    c.optimizer.learning_rate = 1e-3
    c.train.steps = 20
    c.train.log_every = 5
    c.train.eval_every = c.train.checkpoint_every = 10
    c.eval.max_batch = 512
    c.eval.head_steps = 3

  if "stitch" in options:
    c.model.stitch_dim = {"paper": 668, "demo": 256, "tiny": 16}[preset]
    c.data.datasets = ",".join(SYNTHETIC_PRETRAIN)
  if "temporal" in options:
    c.masking.mode = "temporal"
    c.model.use_prompt = False
  return c
