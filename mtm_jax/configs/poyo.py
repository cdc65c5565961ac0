"""POYO behaviour decoding from spike tokens. `get_config(arg)`: arg = "small" | "large" | "tiny".

"small" is the 1.3M single-session model (D=64, 6 latent layers, 2/8 heads, 16 latents
per 125 ms step), trained like the reference's NLB MC_Maze example (batch 128, 1000
epochs); "large" is the 11.8M POYO-MP / POYO-1 model (D=128, 24 layers, 4/8 heads, 32
latents per step, batch 1024); "tiny" is for tests. "small" and "large" are sized for
GPUs ("small": about a day of training on a 2-core CPU; README: what each preset costs).
Sizes: mtm_jax.models.poyo.PRESETS.

Optimiser (reference): LAMB without bias correction, trust-ratio clamp 10, weight decay
1e-4 on every parameter; peak lr = base_learning_rate x data.batch_size, held for the
first half of the steps, then cosine down to peak / 1e4 (beta1 cycled 0.95 -> 0.85 -> 0.95
as PyTorch's OneCycleLR does by default). Rows of the unit and session tables without
gradient in a batch are left alone (the reference's SparseLamb).

Training: python -m experiments.pretrain --config=mtm_jax/configs/poyo.py:small ... (the task
mtm_jax.tasks.poyo through mtm_jax.training.trainer); new sessions: experiments.finetune
--mode=unit_id | full (tasks.poyo.POYOTask.finetune_config); evaluation:
experiments.evaluate (tasks.registry.evaluate_workdir).

Data only: the checks are mtm_jax.tasks.poyo.check_config, the model's fields
mtm_jax.models.poyo.Hparams (`Hparams.from_config(config.model)`).
"""

import ml_collections


def get_config(arg: str = "small") -> ml_collections.ConfigDict:
  preset = arg
  if preset not in ("small", "large", "tiny"):
    raise ValueError(f"poyo config: unknown preset {preset!r}; expected small, large or tiny")
  window = ml_collections.FieldReference(1.0)  # shared by data.window_length and model.window_length
  c = ml_collections.ConfigDict()
  c.family = "poyo"  # model family: the experiment programs dispatch on it (NDT1 configs: "ndt1")
  c.seed = 0  # parameter init, window sampling and dropout keys

  c.data = ml_collections.ConfigDict()
  c.data.datasets = "spike_events/nlb_mc_maze"  # comma-separated TFDS names/configs of the sessions (spike_events)
  c.data.data_dir = "data/tfds"  # TFDS data_dir (made absolute at run time)
  c.data.batch_size = 128  # global batch, 1 s windows
  c.data.shuffle_seed = 0
  c.data.window_length = window  # seconds per window (random offsets each epoch)
  # Padded token lengths (multiples of 8), one compile each a batch uses; steps of 1.5x and 1.33x keep the
  # padding under a third of a window (2,200 tokens: 3072, not 4096). Grown from the data: past its largest,
  # the ladder continues (..., 8192, 12288, 16384, ...) up to the rung holding the longest window of the split.
  c.data.token_buckets = (1024, 1536, 2048, 3072, 4096, 6144, 8192)
  c.data.max_tokens = 0  # > 0: a cap on a window's tokens (a split with a longer window is an error naming it); 0: none
  c.data.max_queries = 128  # padded output queries per window
  c.data.unit_dropout = True  # keep a triangular-distributed number of units per window
  c.data.unit_dropout_min = 60  # fewest units kept
  c.data.unit_dropout_mode = 300  # most likely number of units kept
  c.data.unit_dropout_max = 1000  # most units kept
  c.data.scale = ()  # per-dimension divisor of the behaviour; () = training-split std, resolved (and saved) at run time

  c.model = ml_collections.ConfigDict()
  c.model.size = preset  # a row of mtm_jax.models.poyo.PRESETS
  c.model.tasks = {"hand_velocity": 2}  # task name -> output dim; output_task ids follow sorted names
  c.model.head_dim = 64  # attention head width (the first half is rotated)
  c.model.window_length = window  # seconds covered by the latents
  c.model.latent_step = 0.125  # seconds between latent groups (latents at step centres)
  c.model.ffn_dropout = 0.2  # dropout inside the GEGLU feed-forward
  c.model.lin_dropout = 0.4  # residual dropout of the latent self-attention layers
  c.model.attn_dropout = 0.2  # dropout on attention probabilities
  c.model.emb_init_scale = 0.02  # std of the embedding initialisation
  c.model.t_min = 1e-4  # shortest rotary period (s), mtm_jax.models.rotary.T_MIN
  c.model.t_max = 2.0627  # longest rotary period (s), mtm_jax.models.rotary.T_MAX
  c.model.layer_norm_eps = 1e-5
  c.model.dtype = "float32"  # compute dtype: "float32" or "bfloat16" (params, optimiser and loss stay float32)
  c.model.remat = False  # recompute transformer-layer activations in the backward pass (large models)
  c.model.rotary_frequencies = ()  # explicit rotary frequencies (rad/s), e.g. of an imported checkpoint; () = from t_min, t_max

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "lamb"
  c.optimizer.base_learning_rate = 3.125e-5  # per window: peak lr = this x data.batch_size
  c.optimizer.weight_decay = 1e-4  # on all parameters
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-6
  c.optimizer.trust_clip = 10.0  # clamp of the weight norm in the LAMB trust ratio
  c.optimizer.constant_fraction = 0.5  # share of steps at peak lr before the cosine decay
  c.optimizer.final_div_factor = 1e4  # end lr = peak / final_div_factor
  c.optimizer.sparse_embeddings = (
    True  # reference SparseLamb: table rows with zero gradient are not updated (moments reset)
  )
  c.optimizer.cycle_momentum = True  # reference (OneCycleLR default): beta1 0.95 -> 0.85 over the constant phase, back
  c.optimizer.base_momentum = 0.85  # lowest beta1 of the cycle
  c.optimizer.max_momentum = 0.95  # highest beta1 of the cycle (b1 is used when cycle_momentum is False)

  c.train = ml_collections.ConfigDict()
  c.train.steps = 16_000  # ~1000 epochs of ~2000 s of training windows at batch 128
  c.train.log_every = 100
  c.train.eval_every = 1000
  c.train.checkpoint_every = 1000
  c.train.keep_checkpoints = 3
  c.train.max_nonfinite_steps = 10  # non-finite steps in a row (each skipped) that stop the run
  c.train.prng_impl = "threefry2x32"  # PRNG of the dropout keys ("rbg" compiles faster on CPU)

  c.init = ml_collections.ConfigDict()
  c.init.pretrained = (
    ""  # workdir of a pretrained POYO to start from ("" = from scratch); see tasks.poyo.POYOTask.finetune_config
  )
  c.init.step = -1  # its checkpoint step (-1 = latest)

  c.finetune = ml_collections.ConfigDict()
  c.finetune.mode = "unit_id"  # with init.pretrained: "unit_id" (new unit/session rows only) or "full"
  c.finetune.warmup_steps = 1000  # "full": unit-identification steps before everything trains

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # devices on the data axis (-1 = all the devices not on the model axis)
  c.mesh.model = 1  # devices on the model axis: tensor parallel over attention heads and MLP width

  c.eval = ml_collections.ConfigDict()
  c.eval.split = "test"
  c.eval.window_step = 0.5  # seconds between evaluation windows; overlapping predictions are averaged
  c.eval.batch_size = 256  # windows per forward pass
  c.eval.baseline_bin = 0.02  # ridge (Wiener filter) baseline: seconds per spike-count bin
  c.eval.baseline_lags = 10  # bins per unit, the latest one centred on the behaviour sample

  if preset == "large":
    c.data.batch_size = 1024
    c.data.unit_dropout_min, c.data.unit_dropout_mode, c.data.unit_dropout_max = 30, 100, 300
    c.train.steps = 100_000  # set from the data: epochs x windows per epoch / batch
  elif preset == "tiny":
    c.data.batch_size = 8
    # Sized for the tests' unit-dropout training windows (at most 8 units). Windows with every unit (validation,
    # evaluation) of a built reaching session (168 units, up to 2,281 tokens) grow the buckets (768, 1024, 1536,
    # 2048, 3072): no window loses spikes.
    c.data.token_buckets = (256, 512)
    c.data.max_queries = 104  # 100 Hz behaviour: up to 101 samples per 1 s window
    c.data.unit_dropout_min, c.data.unit_dropout_mode, c.data.unit_dropout_max = 2, 4, 8
    c.model.ffn_dropout = c.model.lin_dropout = c.model.attn_dropout = 0.1
    c.train.steps = 20
    c.train.log_every = 5
    c.train.eval_every = c.train.checkpoint_every = 10
    c.train.prng_impl = "rbg"
    c.finetune.warmup_steps = 5
    c.eval.batch_size = 16
  return c
