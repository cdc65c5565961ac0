"""Spike-token MtM: MtM's self-supervised masking on POYO's spike tokens (a third family).
`get_config(arg)`: arg = "small" | "base" | "tiny", optionally followed by ",temporal"
for the temporal-masking baseline.

  python -m experiments.pretrain --config=mtm_jax/configs/poyo_mtm.py:small \
      --config.data.datasets=spike_events/synthetic_000 --workdir=runs/poyo_mtm

  python -m experiments.finetune --config=mtm_jax/configs/poyo_mtm.py:small --mode=unit_id \
      --pretrained=runs/poyo_mtm --datasets=spike_events/synthetic_024 --workdir=runs/new

Each trial (2 s, MtM's context) is read whole as spike tokens; a batch draws one masking
scheme (MtM's sampler), drops the tokens it hides and predicts the log-rate of up to
data.max_queries masked (unit, bin) targets per trial (Poisson NLL of the counts at
data.bin_size). The optimiser is MtM's (AdamW, one-cycle). Evaluation: the four MtM
metrics at every width of eval.bin_sizes (tasks.poyo_mtm).

Data only: the checks are mtm_jax.tasks.poyo_mtm.check_config, the model's fields
mtm_jax.models.poyo_mtm.Hparams (`Hparams.from_config(config.model)`).
"""

import ml_collections


def get_config(arg: str = "small") -> ml_collections.ConfigDict:
  preset, *options = arg.split(",")
  if preset not in ("small", "base", "tiny"):
    raise ValueError(f"poyo_mtm config: unknown preset {preset!r}; expected small, base or tiny")
  if set(options) - {"temporal"}:
    raise ValueError(f"poyo_mtm config: unknown options {sorted(set(options) - {'temporal'})}; expected 'temporal'")
  context = ml_collections.FieldReference(2.0)  # shared by data.context and model.context
  c = ml_collections.ConfigDict()
  c.family = "poyo_mtm"  # model family (mtm_jax.tasks.registry)
  c.seed = 0  # parameter init, masking, query sampling and dropout keys

  c.data = ml_collections.ConfigDict()
  c.data.datasets = "spike_events/synthetic_000"  # comma-separated TFDS names of the sessions (spike_events)
  c.data.data_dir = "data/tfds"  # TFDS data_dir (made absolute at run time)
  c.data.batch_size = 16  # global batch, whole trials of any session
  c.data.shuffle_seed = 0
  c.data.context = context  # seconds per trial: every split interval must last this long
  c.data.bin_size = 0.02  # seconds per bin of the training targets (MtM's 20 ms)
  # Padded token lengths (multiples of 8), one compile per bucket a batch uses: 2 tokens per unit + its spikes.
  # Grown from the data: past its largest, the ladder continues (x1.5, x4/3: ..., 4096, 6144, 8192, ...) up to
  # the rung holding the built sessions' longest trial, so any preset fits any session (datasets.events.trials).
  c.data.token_buckets = (1024, 2048, 3072, 4096, 6144, 8192, 12288, 16384)
  c.data.max_tokens = 0  # > 0: a cap on a trial's tokens (a longer trial is an error naming it); 0: none
  c.data.max_queries = 1024  # masked (unit, bin) targets drawn per trial and step
  c.data.query_jitter = True  # training queries at uniform times within their bins (False: at the centres)

  c.model = ml_collections.ConfigDict()
  c.model.size = preset  # a row of mtm_jax.models.poyo_mtm.PRESETS
  c.model.context = context  # seconds covered by the latents
  c.model.latent_step = 0.125  # seconds between latent groups (latents at step centres)
  c.model.ffn_dropout = 0.1
  c.model.lin_dropout = 0.1
  c.model.attn_dropout = 0.0
  c.model.emb_init_scale = 0.02
  c.model.t_min = 1e-3  # shortest rotary period (s)
  c.model.t_max = 4.0  # longest rotary period (s)
  c.model.layer_norm_eps = 1e-5
  c.model.unit_readout = True  # also a readout vector per unit (from its embedding), as NDT1's per-neuron weights
  c.model.dtype = "float32"  # compute dtype: "float32" or "bfloat16" (params, optimiser and loss stay float32)

  c.masking = ml_collections.ConfigDict()
  c.masking.mode = "mtm"  # one of mtm_jax.masking.MODES
  c.masking.ratio = 0.3
  c.masking.causal_ratio = 0.6  # causal: the cut is drawn in the last causal_ratio of the trial

  c.optimizer = ml_collections.ConfigDict()  # AdamW with MtM's one-cycle schedule
  c.optimizer.learning_rate = 2e-3
  c.optimizer.weight_decay = 0.01
  c.optimizer.warmup_fraction = 0.15
  c.optimizer.div_factor = 10.0
  c.optimizer.final_div_factor = 1e4

  c.train = ml_collections.ConfigDict()
  c.train.steps = 2000
  c.train.log_every = 100
  c.train.eval_every = 500
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 3
  c.train.max_nonfinite_steps = 10
  c.train.prng_impl = "threefry2x32"

  c.init = ml_collections.ConfigDict()
  c.init.pretrained = ""  # workdir of a pretrained spike-token MtM ("" = from scratch)
  c.init.step = -1

  c.finetune = ml_collections.ConfigDict()
  c.finetune.mode = "unit_id"  # with init.pretrained: "unit_id" (new unit/session rows only) or "full"
  c.finetune.warmup_steps = 500  # "full": unit-identification steps before everything trains

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.model = 1

  c.eval = ml_collections.ConfigDict()
  c.eval.split = "test"
  c.eval.bin_sizes = (0.02, 0.01, 0.005)  # widths the four metrics are scored at (each divides data.bin_size)
  c.eval.fine_tasks = ()  # the metrics scored at the widths other than data.bin_size (empty: all four)
  c.eval.batch_size = 64  # masked trial copies per encoder pass
  c.eval.max_rows = 4096  # (copy, unit) rows per decoder pass
  c.eval.max_masks = 0  # > 0: the four tasks score the same fixed random sample of at most this many neurons (0: all)
  c.eval.decoding_prompt = "neuron"  # prompt of the unmasked pass whose 20 ms log-rates the decoders read
  c.eval.decoding_folds = 5  # cross-validation folds of the behaviour decoders (evaluation.decoding)
  c.eval.decoding_seed = 0
  c.eval.head_steps = 300  # > 0: also fine-tune POYO's readout with the model per behaviour (evaluation.poyo_mtm_heads)

  if preset == "base":
    c.data.batch_size = 32
    c.optimizer.learning_rate = 1e-3
    c.train.steps = 20_000
    c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 100, 1000, 1000
  elif preset == "tiny":  # for tests: small buckets, grown to the sessions' trials (3-5k tokens on synthetic_000/024)
    c.data.batch_size, c.data.token_buckets, c.data.max_queries = 4, (256, 512, 1024, 2048), 64
    c.train.steps, c.train.log_every, c.train.prng_impl = 12, 4, "rbg"
    c.train.eval_every = c.train.checkpoint_every = 6
    c.finetune.warmup_steps = 4
    c.eval.batch_size, c.eval.max_rows, c.eval.head_steps = 8, 256, 3
  if "temporal" in options:
    c.masking.mode = "temporal"
  return c
