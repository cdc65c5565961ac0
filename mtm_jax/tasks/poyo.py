"""POYO on spike-event sessions (the POYO paper's model family): behaviour decoding from
spike tokens, new sessions by unit identification.

Sessions are built `spike_events` data sets (or event sessions in memory); the loss is
the weighted MSE of the behaviour queries. A checkpoint holds the config (with the
behaviour scale resolved into config.data.scale) and one record per session row of the
vocabulary (name, session id, unit ids). Fine-tuning from a pretrained POYO appends the
new sessions' unit and session rows; "unit_id" trains only those rows (training.rows),
"full" trains only them for config.finetune.warmup_steps, then everything.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtm_jax import progress
from mtm_jax.datasets.events import batches as batches_lib
from mtm_jax.datasets.events import session as session_lib
from mtm_jax.datasets.events import tfds
from mtm_jax.datasets.events import vocabulary as vocabulary_lib
from mtm_jax.datasets.events import windows as windows_lib
from mtm_jax.evaluation import behaviour_plots, poyo as poyo_eval
from mtm_jax.interop import poyo as poyo_interop
from mtm_jax.models import poyo
from mtm_jax.parallel import mesh as mesh_lib
from mtm_jax.tasks import base, spike_tokens
from mtm_jax.training import config_checks, optimizer, precision, rows, step as step_lib


def weighted_mse(outputs: dict, batch, tasks) -> tuple[jax.Array, dict]:
  """Per task: sum_q w_q * mean_d (pred - target)^2 / sum_q w_q over its real queries
  (output_mask & output_task == task id); the loss is the sum over tasks.

  outputs {task: [B, Q, d_t]}; batch output_values [B, Q, D >= d_t], output_weights [B, Q],
  output_mask [B, Q], output_task [B, Q]; tasks {name: dim}. Returns (loss, aux) with
  aux[f"loss/{task}"] and aux[f"weight/{task}"] (the weight sum)."""
  total, aux = jnp.zeros((), jnp.float32), {}
  for name, i in poyo.task_ids(tasks).items():
    pred = outputs[name].astype(jnp.float32)  # [B, Q, d]
    target = batch["output_values"][..., : pred.shape[-1]].astype(jnp.float32)
    mine = batch["output_mask"] & (batch["output_task"] == i)  # [B, Q]
    w = jnp.where(mine, batch["output_weights"].astype(jnp.float32), 0.0)
    err = jnp.mean(jnp.square(pred - target), axis=-1)  # [B, Q]
    w_sum = jnp.sum(w)
    loss = jnp.where(w_sum > 0, jnp.sum(w * err) / jnp.where(w_sum > 0, w_sum, 1.0), 0.0)
    total = total + loss
    aux[f"loss/{name}"], aux[f"weight/{name}"] = loss, w_sum
  return total, aux


def loss_fn(graphdef, params, batch, key, *, tasks, dtype="float32") -> tuple[jax.Array, dict]:
  """Weighted MSE of the model `graphdef`/`params` on `batch`; key: dropout (None = off);
  dtype: compute dtype of the model (float32 params and loss; see training.precision)."""
  model = nnx.merge(graphdef, precision.compute_params(params, dtype))
  return weighted_mse(model(batch, key=key), batch, tasks)


def loss(graphdef, tasks, dtype="float32") -> step_lib.Loss:
  """The training loss (step_lib.Loss; no consts)."""
  return lambda params, batch, consts, key: loss_fn(graphdef, params, batch, key, tasks=tasks, dtype=dtype)


def make_train_step(graphdef, tx, *, tasks, row_mask=None, dtype="float32"):
  """(state, batch, None, key) -> (state, metrics): step_lib.make_train_step of the POYO loss."""
  return step_lib.make_train_step(loss(graphdef, tasks, dtype), tx, row_mask=row_mask)


def behaviour_task(config) -> str:
  """The task the event batches' behaviour is read out by (output_task 0: first sorted name)."""
  return sorted(dict(config.model.tasks))[0]


def window_config(config, train: bool) -> windows_lib.WindowConfig:
  """How windows are cut: unit dropout only when `train` (windows_lib.prepare grows the
  buckets to the split's longest window, up to config.data.max_tokens when > 0)."""
  d = config.data
  dropout = (d.unit_dropout_min, d.unit_dropout_mode, d.unit_dropout_max) if (train and d.unit_dropout) else None
  return windows_lib.WindowConfig(
    window_length=d.window_length,
    bucket_lengths=tuple(d.token_buckets),
    max_tokens=d.get("max_tokens", 0),
    unit_dropout=dropout,
    max_outputs=d.max_queries,
    eval_step=config.eval.window_step,
  )


def _eval_windows(trained, sessions, split: str):
  """The evaluation windows of `sessions`' `split` for a trained POYO (its vocabulary and scale)."""
  config = window_config(trained.config, train=False)
  return windows_lib.prepare(sessions, split, config, vocab=trained.vocab, scale=trained.scale)


def _predict(trained, data, stage=None):
  """poyo_eval.evaluate_data of a trained POYO on `data`: (scores, per-session predictions);
  stage: a progress.Stage told the batches done, for its time-left lines."""
  config = trained.config
  return poyo_eval.evaluate_data(
    trained.graphdef,
    trained.params,
    data,
    task=behaviour_task(config),
    batch_size=config.eval.batch_size,
    mesh=trained.mesh,
    stage=stage,
  )


class POYOTask(base.Task):
  family, name = "poyo", "POYO"

  # ---- Configs -----------------------------------------------------------------------------
  def check(self, config):
    check_config(config)

  def finetune_config(self, config, pretrained, mode=None):
    """The architecture (config.model) and the behaviour scale are the pretrained ones;
    new unit and session rows are appended. mode "unit_id" (default) trains only those
    rows; "full" trains only them for config.finetune.warmup_steps, then everything."""
    config, pre = spike_tokens.unit_id_config(self, config, pretrained, mode)
    if pre is not None:
      config.data.window_length = pre.data.window_length
      config.data.scale = list(pre.data.scale)
    return config

  # ---- Training ---------------------------------------------------------------------------
  def check_mesh(self, config, mesh):
    mesh_lib.check_batch_size(config.data.batch_size, mesh)
    mesh_lib.check_batch_size(config.eval.batch_size, mesh)

  def input(self, config, mesh, pretrained, sessions=None):
    sessions, names = spike_tokens.input_sessions(config, sessions)
    records = spike_tokens.vocabulary_records(sessions, names, pretrained)
    if pretrained is not None:
      scale = np.asarray(pretrained.config.data.scale, np.float32)
    else:
      scale = np.asarray(config.data.scale, np.float32) if config.data.scale else session_lib.behaviour_scale(sessions)
    vocab = vocabulary_lib.Vocabulary.from_records(records)
    config.data.scale = [float(x) for x in scale]
    train = windows_lib.prepare(sessions, "train", window_config(config, train=True), vocab=vocab, scale=scale)
    val = windows_lib.prepare(sessions, "val", window_config(config, train=False), vocab=vocab, scale=scale)
    return spike_tokens.training_input(
      config, mesh, records, sessions, "intervals", train, val, batches_lib.training_batches
    )

  def create(self, config, records, mesh, params=None):
    vocab = vocabulary_lib.Vocabulary.from_records(records)
    model = poyo.from_config(config, len(vocab.unit_ids), len(vocab.session_ids), rngs=nnx.Rngs(config.seed))
    return spike_tokens.placed(model, lambda state: make_optimizer(config, state), params, mesh)

  def merge_pretrained(self, config, graphdef, tx, state, pretrained, records, mesh):
    """poyo.load: the pretrained rows in front of new units' and sessions' rows drawn
    N(0, config.model.emb_init_scale) from seed + 7, every other parameter pretrained."""
    merged = poyo.load(
      nnx.to_pure_dict(jax.device_get(state.params)),
      nnx.to_pure_dict(jax.device_get(pretrained.params)),
      where=f"pretrained model {config.init.pretrained}",
      key=jax.random.key(config.seed + 7),
      init_scale=config.model.emb_init_scale,
    )
    spike_tokens.log_new_rows(config, pretrained, records)
    return self.create(config, records, mesh, merged)

  def describe(self, config, graphdef, state):
    return (
      f"POYO {config.model.size}: {sum(x.size for x in jax.tree.leaves(state.params))} parameters "
      f"({poyo.count_params(nnx.merge(graphdef, state.params), embeddings=False)} outside the unit/session tables)"
    )

  def loss(self, config, graphdef):
    return loss(graphdef, dict(config.model.tasks), config.model.get("dtype", "float32"))

  def phases(self, config, inputs, pretrained):
    return spike_tokens.unit_id_phases(config, pretrained)

  def learning_rate(self, config):
    return optimizer.poyo_learning_rate_schedule(config)

  def validator(self, config, graphdef, inputs, mesh):
    predictor = poyo_eval.make_predictor(graphdef, behaviour_task(config))

    def validate(params) -> dict:
      val, _ = poyo_eval.evaluate_data(
        graphdef,
        params,
        inputs.data["val"],
        task=behaviour_task(config),
        batch_size=config.eval.batch_size,
        mesh=mesh,
        predictor=predictor,
      )
      return dict(val_r2=val["behaviour_r2"])

    return validate

  def summarise(self, window):
    return dict(
      loss=np.mean([m["loss"] for m in window]),
      grad_norm=np.mean([m["grad_norm"] for m in window]),
      param_norm=float(window[-1]["param_norm"]),
    )

  def import_reference(self, ckpt, workdir, datasets, data_dir, options, base_config):
    """Sessions: the checkpoint's own, or our `datasets`. options: task (the readout's
    name), scale (behaviour divisor per output dimension; default ones)."""
    arch = poyo_interop.architecture(ckpt)
    scale = [float(s) for s in options.get("scale") or ()] or None
    config = poyo_interop.model_config(arch, options.get("task", "hand_velocity"), scale, base_config)
    if datasets:
      config.data.datasets, config.data.data_dir = ",".join(datasets), os.path.abspath(data_dir)
      sessions = [tfds.load_event_session(n, config.data.data_dir, ("train",)) for n in datasets]
      records = vocabulary_lib.build_vocabulary(sessions).records(datasets)
    else:
      records = poyo_interop.default_sessions(ckpt)
      config.data.datasets = ",".join(r["name"] for r in records)
    model, unused = poyo_interop.convert(ckpt, config, records)
    params = nnx.state(model, nnx.Param)
    self.save_initial(workdir, config, records, params, make_optimizer(config, params))
    return dict(kind="poyo", architecture=arch, sessions=[r["session_id"] for r in records], unused=unused)

  # ---- Evaluation -------------------------------------------------------------------------
  def evaluate(self, trained, split, sessions=None, decode=True):
    """Behaviour R^2 on `split` of the model's sessions (config.data.datasets, read from
    TFDS; or the given event `sessions`, which must be in the model's vocabulary) and,
    with `decode`, the ridge baseline on the same timestamps:
      behaviour_r2, behaviour_r2_<output>  means over sessions (outputs: session_lib.output_names,
                                           e.g. wheel_speed; dim0, dim1, ... when unnamed);
      baseline_r2, baseline_r2_<output>    the ridge baseline;
      sessions {id: {behaviour_r2, behaviour_r2_<output>, baseline_r2, ...}}, split, step."""
    config = trained.config
    if sessions is None:
      sessions = spike_tokens.load_sessions(config, (split, "train"))
    data = _eval_windows(trained, sessions, split)
    if data.vocab != trained.vocab:
      unknown = [s.session_id for s in sessions if s.session_id not in trained.vocab.session_ids]
      raise ValueError(
        f"{trained.workdir}: sessions {unknown} are not in the model's vocabulary; fine-tune on them first"
      )
    with progress.Stage(f"behaviour R^2 of the model ({behaviour_task(config)})") as stage:
      results, stitched = _predict(trained, data, stage)
      stage.note = f"{results['behaviour_r2']:.4f}" if "behaviour_r2" in results else "skipped"
    if decode:
      base_scores = poyo_eval.baseline_scores(
        data, stitched, bin_size=config.eval.baseline_bin, lags=config.eval.baseline_lags
      )
      per_session = {sid: merged(r, base_scores["sessions"][sid]) for sid, r in results["sessions"].items()}
      results = merged(results, base_scores)
      results["sessions"] = per_session
    return {**results, "skipped": results.get("skipped", {}), "split": split, "step": trained.step}, {}

  def plot_file(self):
    return "behaviour.png"

  def plot(self, models, path, split=None, region=None, sessions=None):
    """Predicted vs true behaviour of each model (behaviour_plots.behaviour_figure) on the
    first session's `split` (read from TFDS, or the first of the given `sessions`)."""
    first = next(iter(models.values()))
    split = split or first.config.eval.split
    session = (sessions or spike_tokens.load_sessions(first.config, (split,)))[0]
    stitched = {}
    for label, trained in models.items():
      _, (stitched[label],) = _predict(trained, _eval_windows(trained, [session], split))
    title = f"{session.session_id}, {split} split, step {first.step}"
    behaviour_plots.behaviour_figure(path, stitched, session_lib.output_names([session]), title=title)
    return f"behaviour of {session.session_id}"

  def report(self, results, label=None, others=None):
    lines = [f"POYO, {results['split']} split, step {results['step']}"]
    for name, r in {label or "": results, **(others or {})}.items():
      lines += [f"{name + ' ' if name else ''}{k}: {v:.4f}" for k, v in r.items() if isinstance(v, float)]
      lines += [f"{name + ' ' if name else ''}{k}: skipped" for k in r.get("skipped", {})]
    return "\n".join(lines)


def merged(a: dict, b: dict) -> dict:
  """The keys of results a and b together, their "skipped" mappings joined (no "skipped"
  when neither has one)."""
  skipped = {**a.get("skipped", {}), **b.get("skipped", {})}
  return {**a, **b, **({"skipped": skipped} if skipped else {})}


def check_config(c: ml_collections.ConfigDict) -> None:
  """A POYO config (mtm_jax/configs/poyo.py)."""
  precision.compute_dtype(c.model.dtype, "config.model.dtype")
  poyo.Hparams.from_config(c.model)
  m, d = c.model, c.data
  if d.window_length != m.window_length:
    raise ValueError(
      f"config.data.window_length ({d.window_length}) must equal config.model.window_length ({m.window_length})"
    )
  config_checks.buckets(d.token_buckets, d.get("max_tokens", 0))
  if not 0 < d.unit_dropout_min <= d.unit_dropout_mode <= d.unit_dropout_max:
    raise ValueError(
      "config.data.unit_dropout_min/mode/max: expected 0 < min <= mode <= max, got "
      f"{d.unit_dropout_min}, {d.unit_dropout_mode}, {d.unit_dropout_max}"
    )
  if not 0.0 <= c.optimizer.constant_fraction <= 1.0:
    raise ValueError(f"config.optimizer.constant_fraction: must be in [0, 1], got {c.optimizer.constant_fraction}")
  if c.optimizer.name != "lamb":
    raise ValueError(f"config.optimizer.name: expected 'lamb', got {c.optimizer.name!r}")
  if d.batch_size < 1 or c.train.steps < 1 or d.max_queries < 1:
    raise ValueError("config.data.batch_size, config.data.max_queries and config.train.steps must be positive")
  config_checks.train(c)
  if c.eval.window_step <= 0 or c.eval.window_step > d.window_length:
    raise ValueError(f"config.eval.window_step: must be in (0, window_length], got {c.eval.window_step}")
  config_checks.finetune(c)
  if c.data.scale and len(c.data.scale) != sum(int(v) for v in dict(m.tasks).values()):
    raise ValueError(
      f"config.data.scale: expected one entry per output dimension of config.model.tasks, got {len(c.data.scale)}"
    )
  config_checks.data_kind(c, config_checks.EVENTS, "POYO")


def make_optimizer(config: ml_collections.ConfigDict, params):
  """The reference's LAMB for POYO parameters `params` (an nnx.State or pure dict):
  training.optimizer.sparse_lamb with POYO's learning-rate and beta1 schedules; the unit and
  session tables (poyo.embedding_paths) are row-sparse when config.optimizer.sparse_embeddings."""
  o = config.optimizer
  if o.name != "lamb":
    raise ValueError(f"config.optimizer.name: expected 'lamb', got {o.name!r}")
  tables = {p[0] for p in poyo.embedding_paths().values()}
  sparse = jax.tree_util.tree_map_with_path(
    lambda path, _: bool(o.sparse_embeddings) and rows.path_head(path) in tables, params
  )
  return optimizer.sparse_lamb(
    optimizer.poyo_learning_rate_schedule(config),
    optimizer.poyo_momentum_schedule(config),
    o.b2,
    o.eps,
    o.weight_decay,
    o.trust_clip,
    sparse,
  )
