"""Spike-token MtM (config.family "poyo_mtm"): MtM's self-supervised masking on POYO's
spike tokens, one PerceiverIO for any number of sessions, with no stitching.

Sessions are built `spike_events` data sets whose split intervals are whole trials of
config.data.context seconds (datasets.events.trials). A step draws one masking scheme
for the batch (masking.sample_scheme: MtM's sampler), the scheme's mask per trial
(token_masking.sample_mask), drops the hidden tokens (a key mask), samples up to
data.max_queries masked (unit, bin) targets per trial and takes the Poisson NLL of their
counts at data.bin_size. A checkpoint records one vocabulary record per session row (as
POYO's). Fine-tuning from a pretrained model appends the new sessions' unit and session
rows: "unit_id" trains only those rows, "full" trains only them for
finetune.warmup_steps, then everything.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtm_jax import masking, token_masking
from mtm_jax.datasets.events import trials as trials_lib
from mtm_jax.datasets.events import vocabulary as vocabulary_lib
from mtm_jax.evaluation import decoding, poyo_mtm as poyo_mtm_eval, poyo_mtm_heads, report
from mtm_jax.models import poyo_mtm
from mtm_jax.parallel import mesh as mesh_lib
from mtm_jax.tasks import base, spike_tokens
from mtm_jax.training import config_checks, optimizer, precision, step as step_lib


def trial_config(config) -> trials_lib.TrialConfig:
  d = config.data
  return trials_lib.TrialConfig(
    context=d.context, bin_size=d.bin_size, bucket_lengths=tuple(d.token_buckets), max_tokens=d.get("max_tokens", 0)
  )


def mask_config(config) -> masking.MaskConfig:
  return masking.MaskConfig(ratio=config.masking.ratio, causal_ratio=config.masking.causal_ratio)


def query_times(key, bins: jax.Array, bin_size: float, jitter: bool) -> jax.Array:
  """[B, Q] float32 seconds of the queries of bins [B, Q]: the bins' centres or, with
  `jitter`, uniform times within them (drawn from key)."""
  offset = jax.random.uniform(key, bins.shape) if jitter else 0.5
  return (bins.astype(jnp.float32) + offset) * bin_size


def masked_nll(
  graphdef,
  params,
  batch,
  key,
  *,
  mode: str,
  mask_config: masking.MaskConfig,
  bin_size: float,
  n_queries: int,
  train: bool,
  dtype="float32",
  jitter: bool = False,
):
  """Summed Poisson NLL of up to n_queries masked targets per trial of `batch`
  (trials.BATCH_KEYS). The key draws the scheme (for "mtm"), the masks, the queries and,
  when `train`, dropout. A target's query time is its bin's centre or, with `jitter`, a
  uniform time within the bin (its rate there times the width is the expected count, so
  the rate is learnt between the centres too, as finer scoring widths query it). Returns
  (sum, dict(n_targets, scheme))."""
  k_scheme, k_mask, k_query, k_dropout = jax.random.split(key, 4)
  scheme = masking.sample_scheme(k_scheme, mode)
  counts = batch["counts"].astype(jnp.float32)  # [B, T, N]
  mask = token_masking.sample_mask(k_mask, scheme, batch["unit_regions"], counts.shape[1], mask_config)
  inputs = dict(batch, input_mask=token_masking.keep_tokens(mask, batch, bin_size))
  targets = mask.targets() & batch["valid"][:, None, None]
  bins, units, valid = token_masking.sample_queries(k_query, targets, n_queries)  # [B, Q]
  prompt = jnp.broadcast_to(scheme, batch["valid"].shape)
  model = nnx.merge(graphdef, precision.compute_params(params, dtype))
  log_rate = model(
    inputs,
    jnp.take_along_axis(batch["unit_rows"], units, axis=1),
    query_times(jax.random.fold_in(k_query, 1), bins, bin_size, jitter),
    prompt,
    key=k_dropout if train else None,
  )
  log_count = log_rate + jnp.log(bin_size)
  y = counts[jnp.arange(counts.shape[0])[:, None], bins, units]
  nll = jnp.where(valid, jnp.exp(log_count) - y * log_count, 0.0)
  return jnp.sum(nll), dict(n_targets=jnp.sum(valid), scheme=scheme)


def nll(graphdef, config, train: bool):
  """masked_nll of config's masking, bins and queries: (params, batch, key) -> (sum, aux);
  the compute dtype is config.model.dtype and the query times jittered
  (config.data.query_jitter) when `train` (float32 and bin centres otherwise)."""
  return functools.partial(
    masked_nll,
    graphdef,
    mode=config.masking.mode,
    mask_config=mask_config(config),
    bin_size=config.data.bin_size,
    n_queries=config.data.max_queries,
    train=train,
    dtype=config.model.get("dtype", "float32") if train else "float32",
    jitter=bool(config.data.get("query_jitter", False)) and train,
  )


def loss(graphdef, config) -> step_lib.Loss:
  """The training loss: the mean NLL over the batch's sampled targets (no consts)."""
  fn = nll(graphdef, config, train=True)

  def value(params, batch, consts, key):
    total, aux = fn(params, batch, key)
    mean = total / jnp.maximum(aux["n_targets"], 1)
    return mean, dict(loss=mean, nll_sum=total, **aux)

  return value


def decoding_options(config) -> dict:
  """poyo_mtm_eval.decode_session's options from config.eval (older configs: NDT1's defaults)."""
  e = config.eval
  return dict(
    prompt=e.get("decoding_prompt", "neuron"), folds=e.get("decoding_folds", 5), seed=e.get("decoding_seed", 0)
  )


def heads(trained, sessions, data: trials_lib.TrialData, steps: int):
  """heads(position) of poyo_mtm_eval.evaluate_data: POYO's readout fine-tuned with the
  model for `steps` steps on the session's training trials, scored on `data`'s."""
  config = trained.config
  missing = [s.session_id for s in sessions if "train" not in s.splits]
  if missing:
    reason = f"sessions {missing} were given without their train split"
    return lambda position: decoding.Decoded({}, {}, dict.fromkeys(report.HEAD_METRICS, reason))
  train = trials_lib.prepare(sessions, "train", trial_config(config), vocab=trained.vocab)
  options = dict(
    prompt=config.eval.decoding_prompt,
    steps=steps,
    seed=config.eval.decoding_seed,
  )

  def of(position: int) -> decoding.Decoded:
    targets = (poyo_mtm_eval.session_behaviour(train, position), poyo_mtm_eval.session_behaviour(data, position))
    return poyo_mtm_heads.head_metrics(trained.graphdef, trained.params, train, data, position, targets, **options)

  return of


class PoyoMtMTask(base.Task):
  family, name = "poyo_mtm", "spike-token MtM"
  legacy_model = poyo_mtm.LEGACY_FIELDS

  def check(self, config):
    check_config(config)

  def finetune_config(self, config, pretrained, mode=None):
    """The architecture (config.model), the context and the training bin are the
    pretrained ones; new unit and session rows are appended. mode "unit_id" (default)
    trains only those rows; "full" trains only them for finetune.warmup_steps, then all."""
    config, pre = spike_tokens.unit_id_config(self, config, pretrained, mode)
    if pre is not None:
      config.data.context, config.data.bin_size = pre.data.context, pre.data.bin_size
    return config

  def check_mesh(self, config, mesh):
    mesh_lib.check_batch_size(config.data.batch_size, mesh)

  def input(self, config, mesh, pretrained, sessions=None):
    sessions, names = spike_tokens.input_sessions(config, sessions)
    records = spike_tokens.vocabulary_records(sessions, names, pretrained)
    vocab = vocabulary_lib.Vocabulary.from_records(records)
    n_units = max(len(s.unit_ids) for s in sessions)
    train = trials_lib.prepare(sessions, "train", trial_config(config), vocab=vocab, n_units=n_units)
    val = trials_lib.prepare(sessions, "val", trial_config(config), vocab=vocab, n_units=n_units)
    trials_lib.check_buckets(val)
    return spike_tokens.training_input(
      config, mesh, records, sessions, "trials", train, val, trials_lib.training_batches
    )

  def create(self, config, records, mesh, params=None):
    vocab = vocabulary_lib.Vocabulary.from_records(records)
    model = poyo_mtm.from_config(config, len(vocab.unit_ids), len(vocab.session_ids), rngs=nnx.Rngs(config.seed))
    return spike_tokens.placed(model, lambda state: make_optimizer(config), params, mesh)

  def merge_pretrained(self, config, graphdef, tx, state, pretrained, records, mesh):
    """poyo_mtm.load: the pretrained rows in front of the fresh rows of the new units and
    sessions, every other parameter pretrained."""
    merged = poyo_mtm.load(
      nnx.to_pure_dict(jax.device_get(state.params)),
      nnx.to_pure_dict(jax.device_get(pretrained.params)),
      where=f"pretrained model {config.init.pretrained}",
    )
    spike_tokens.log_new_rows(config, pretrained, records)
    return self.create(config, records, mesh, merged)

  def describe(self, config, graphdef, state):
    model = nnx.merge(graphdef, state.params)
    return (
      f"spike-token MtM {config.model.size}: {poyo_mtm.count_params(model)} parameters "
      f"({poyo_mtm.count_params(model, embeddings=False)} outside the unit/session tables)"
    )

  def loss(self, config, graphdef):
    return loss(graphdef, config)

  def phases(self, config, inputs, pretrained):
    return spike_tokens.unit_id_phases(config, pretrained)

  def learning_rate(self, config):
    return optimizer.learning_rate_schedule(config)

  def validator(self, config, graphdef, inputs, mesh):
    val_nll = jax.jit(nll(graphdef, config, train=False))
    mine = mesh_lib.process_rows(config.data.batch_size, mesh)
    batches = trials_lib.evaluation_batches(inputs.data["val"], config.data.batch_size, rows=mine)

    def validate(params) -> dict:
      """{val_loss: masked NLL per sampled target over the validation trials (fixed keys)}."""
      sums = [
        val_nll(
          params,
          mesh_lib.shard_batch(b, mesh, config.data.batch_size),
          jax.random.fold_in(jax.random.key(config.seed + 1), i),
        )
        for i, b in enumerate(batches)
      ]
      total, count = 0.0, 0
      for out, aux in jax.device_get(sums):
        total, count = total + float(out), count + int(aux["n_targets"])
      return dict(val_loss=total / count) if count else {}

    return validate

  def summarise(self, window):
    n_targets = max(np.sum([m["n_targets"] for m in window]), 1)
    return dict(
      loss=np.sum([m["nll_sum"] for m in window]) / n_targets,
      grad_norm=np.mean([m["grad_norm"] for m in window]),
    )

  # ---- Evaluation -------------------------------------------------------------------------
  def evaluate(self, trained, split, sessions=None, decode=True):
    """The four MtM metrics (bits per spike per neuron, averaged over neurons) on `split`
    of the model's sessions (config.data.datasets; or the given event `sessions`, which
    must be in its vocabulary), at every width of config.eval.bin_sizes; oracle values
    where the sessions keep their true rates (the synthetic brain's); with `decode`, the
    frozen-model behaviour decoders (NDT1's, on the unmasked 20 ms log-rates)."""
    config = trained.config
    head_steps = config.eval.get("head_steps", 0) if decode else 0
    if sessions is None:
      sessions = spike_tokens.load_sessions(config, (split, "train") if head_steps and split != "train" else (split,))
    unknown = [s.session_id for s in sessions if s.session_id not in trained.vocab.session_ids]
    if unknown:
      raise ValueError(
        f"{trained.workdir}: sessions {unknown} are not in the model's vocabulary; fine-tune on them first"
      )
    data = trials_lib.prepare(sessions, split, trial_config(config), vocab=trained.vocab)
    results, arrays = poyo_mtm_eval.evaluate_data(
      trained.graphdef,
      trained.params,
      data,
      tuple(config.eval.bin_sizes),
      batch_size=config.eval.batch_size,
      max_rows=config.eval.max_rows,
      mesh=trained.mesh,
      oracle=poyo_mtm_eval.true_rates_oracle(data),
      decode=decoding_options(config) if decode else None,
      heads=heads(trained, sessions, data, head_steps) if head_steps else None,
      fine_metrics=config.eval.get("fine_tasks") or None,
      max_masks=config.eval.get("max_masks", 0),
    )
    return {**results, "split": split, "step": trained.step, "masking_mode": config.masking.mode}, arrays

  def arrays_file(self):
    return "per_neuron_bps.npz"

  def report(self, results, label=None, others=None):
    widths = [w for w in results if w.startswith("co_smoothing_bps")]
    lines = [report.heading(results) if "session_id" in results or "sessions" in results else ""]
    for key in widths:
      suffix = key.removeprefix("co_smoothing_bps")
      metrics = [m + suffix for m in report.METRICS]
      columns = {(label or results["masking_mode"]) + suffix: results, **(others or {})}
      oracle = {m: results[f"oracle_{m}"] for m in metrics if f"oracle_{m}" in results}
      if oracle:
        columns["oracle"] = oracle
      lines.append(report.table(columns, metrics))
    behaviour = [
      m for m in decoding.BEHAVIOUR_METRICS + report.HEAD_METRICS if m in results or m in results.get("skipped", {})
    ]
    if behaviour:
      lines.append(report.table({label or results["masking_mode"]: results, **(others or {})}, behaviour))
    lines.append(report.bps_hint(results))
    return "\n\n".join(line for line in lines if line)


def check_config(c) -> None:
  """A spike-token MtM config (mtm_jax/configs/poyo_mtm.py)."""
  precision.compute_dtype(c.model.dtype, "config.model.dtype")
  poyo_mtm.Hparams.from_config(c.model)
  m, d = c.model, c.data
  if d.context != m.context:
    raise ValueError(f"config.data.context ({d.context}) must equal config.model.context ({m.context})")
  config_checks.masks(c)
  config_checks.buckets(d.token_buckets, d.get("max_tokens", 0))
  n_bins = round(d.context / d.bin_size) if d.bin_size > 0 else 0
  if n_bins < 1 or abs(n_bins * d.bin_size - d.context) > 1e-9:
    raise ValueError(f"config.data.bin_size: {d.bin_size} s must divide config.data.context ({d.context} s)")
  if d.batch_size < 1 or d.max_queries < 1:
    raise ValueError("config.data.batch_size and config.data.max_queries must be positive")
  config_checks.train(c)
  widths = tuple(c.eval.bin_sizes)
  for w in widths:
    f = round(d.bin_size / w) if w > 0 else 0
    if f < 1 or abs(f * w - d.bin_size) > 1e-9:
      raise ValueError(f"config.eval.bin_sizes: {w} s does not divide config.data.bin_size ({d.bin_size} s)")
  if d.bin_size not in widths:
    raise ValueError(
      f"config.eval.bin_sizes: must hold the training bin config.data.bin_size ({d.bin_size}), got {widths}"
    )
  if c.eval.batch_size < 1 or c.eval.max_rows < 1:
    raise ValueError("config.eval.batch_size and config.eval.max_rows must be positive")
  names = ("co_smoothing", "forward_prediction", "inter_region", "intra_region")  # evaluation.report.METRICS
  unknown = [t for t in c.eval.get("fine_tasks", ()) if t not in names]
  if unknown:
    raise ValueError(f"config.eval.fine_tasks: unknown {unknown}; expected some of {list(names)}")
  config_checks.decoding(c)
  config_checks.finetune(c)
  config_checks.data_kind(c, config_checks.EVENTS, "spike-token MtM")


def make_optimizer(config):
  """AdamW with the one-cycle schedule (training.optimizer.make_optimizer), counting Adam's
  steps per row of the unit and session tables (poyo_mtm.embedding_paths), whose new rows
  unit identification changes alone."""
  return optimizer.make_optimizer(config, tuple(p[0] for p in poyo_mtm.embedding_paths().values()))
