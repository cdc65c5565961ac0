"""NEDS (config.family "neds"): spikes and behaviour as masked modalities of one model.

Sessions are TFDS `ibl_binned` data sets (or `bwb_binned`, whose traces are named `behaviour` columns:
datasets.behaviour_tokens); every batch holds trials of one session, batched as NDT1's multi-session runs are (spikes
zero-padded to the largest session, sessions interleaved). Each trial gives the model's modalities
(mtm_jax.modalities): spike counts [T, N], wheel speed and whisker motion energy [T] z-scored with the session's
training-split statistics, choice (+1 / -1 -> class 1 / 0) and block (p(left) 0.2 / 0.5 / 0.8 -> class 0 / 1 / 2). A
modality a data set lacks is absent (`present` False: never attended to, never a target), never filled in. A step draws
a masking scheme per example (or per batch: config.masking.per_example) and its masks with the keys it is given, and
minimises the weighted per-modality losses (modalities.losses). A step changes only its batch's session row of the
per-session tables (models.neds.SESSION_PARAMS), as NDT1's stitchers. A checkpoint records per session row its TFDS
name, session id, neuron regions, the modalities present and the traces' (mean, std).
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from mtm_jax import modalities
from mtm_jax.datasets import behaviour_tokens as tokens, pipeline
from mtm_jax.evaluation import neds as neds_eval, report
from mtm_jax.models import neds
from mtm_jax.parallel import mesh as mesh_lib, sharding
from mtm_jax.tasks import base, ndt1 as ndt1_task, neds_import
from mtm_jax.training import checkpoint, config_checks, optimizer, precision, step as step_lib

SPLITS = ("train", "val", "test")


def consts_of(records: list[dict], mods) -> dict:
  """{n_neurons: [S] int32, present: [S, M] bool} of the model's session rows."""
  return dict(
    n_neurons=np.array([len(r["region_names"]) for r in records], np.int32),
    present=np.array([[m in r["present"] for m in mods] for r in records], bool),
  )


# ---- Loss --------------------------------------------------------------------------------
def scheme_weights(config) -> np.ndarray:
  """[5] weights of modalities.SCHEMES (0 for a scheme config.masking.schemes leaves out)."""
  chosen = dict(zip(config.masking.schemes, config.masking.weights))
  return np.array([float(chosen.get(s, 0.0)) for s in modalities.SCHEMES], np.float32)


def masked_loss(graphdef, params, batch, consts, key, *, config, train: bool):
  """(weighted sum of the per-modality losses, metrics) of one batch.

  batch: spikes [B, T, N] counts (padded to the model's N), session [B] int32, each
  behaviour modality ([B, T] float or [B] int32), valid [B] bool (optional: rows that only
  pad a partial batch). consts: consts_of. The key draws the schemes, their masks and,
  when `train`, dropout."""
  mods = neds.Hparams.from_config(config.model).modalities
  k_scheme, k_mask, k_dropout = jax.random.split(key, 3)
  spikes = batch["spikes"].astype(jnp.float32)
  b, t, n = spikes.shape
  session = batch["session"]
  schemes = modalities.draw_schemes(k_scheme, b, scheme_weights(config))
  if not config.masking.per_example:  # NEDS's per-batch draw: row 0's scheme for every example
    schemes = jnp.broadcast_to(schemes[:1], (b,))
  masks = modalities.scheme_masks(k_mask, schemes, t, mods, config.masking.ratio, config.masking.per_example)
  inputs = {m: spikes if m == modalities.SPIKE else batch[m] for m in mods}
  present = {m: consts["present"][session, i] for i, m in enumerate(mods)}
  model = nnx.merge(graphdef, precision.compute_params(params, config.model.dtype))
  # one session per batch: its tables are read once (a [] row), not gathered per example
  preds = model(
    inputs, masks, session=ndt1_task.batch_session(batch), present=present, key=k_dropout if train else None
  )
  preds = jax.tree.map(lambda x: x.astype(jnp.float32), preds)
  valid = batch["valid"] if "valid" in batch else jnp.ones(b, bool)
  scored = {m: consts["present"][session, i] & valid for i, m in enumerate(mods)}
  valid_neurons = jnp.arange(n)[None] < consts["n_neurons"][session][:, None]
  _, per = modalities.losses(preds, inputs, masks, valid_neurons=valid_neurons, present=scored)
  total = sum(config.loss[m] * per[m] for m in mods)
  return total, {"loss": total, **{f"loss_{m}": per[m] for m in mods}}


def is_session_param(name: str) -> bool:
  """Whether the parameter "io/<modality>/<layer>/..." is a per-session table (rows first)."""
  parts = name.split("/")
  return parts[0] == "io" and len(parts) > 2 and parts[2] in neds.SESSION_PARAMS


def session_rows(params, row, rest: bool):
  """A training.rows mask: row `row` of every per-session table ([rows, 1, ...] bool), and every other leaf `rest`
  ([] bool). (training.rows.only_row names tables by their first path key; NEDS's sit under io/<modality>/.)"""

  def leaf(path, p):
    if not is_session_param(sharding.path_name(path)):
      return jnp.asarray(rest)
    return (jnp.arange(p.shape[0]) == row).reshape((-1,) + (1,) * (p.ndim - 1))

  return jax.tree_util.tree_map_with_path(leaf, params)


def session_row_mask(params, batch):
  """Only the batch's session row of the per-session tables changes (and the shared
  weights), as NDT1's stitchers (tasks.ndt1.session_row_mask)."""
  return session_rows(params, batch["session"][0], rest=True)


def new_rows_mask(params, batch):
  """Only the batch's session row of the per-session tables changes; the shared weights
  are frozen (fine-tuning mode "unit_id", and the warm-up of "full")."""
  return session_rows(params, batch["session"][0], rest=False)


def make_optimizer(config):
  """training.optimizer.row_adamw's AdamW with the one-cycle schedule, Adam's steps counted
  per row of the per-session tables (the counts row_adamw would keep for top-level tables)."""
  tx = optimizer.make_optimizer(config)
  adam = tx.init  # optax.chain: (row Adam, weight decay, learning rate)

  def init(params):
    adam_state, *rest = adam(params)
    counts = jax.tree.map(lambda m: jnp.zeros(jnp.shape(m), jnp.int32), session_rows(params, 0, rest=False))
    return (adam_state._replace(count=counts), *rest)

  return optax.GradientTransformationExtraArgs(init, tx.update)


def realigned(init_params, pretrained_params, rows_of: list):
  """`pretrained_params` with each per-session table rebuilt in the rows of the new run:
  row r = the pretrained model's row rows_of[r] (a session it trained on), or the fresh
  row of `init_params` (None: a new session); models.neds.load then takes them row by row."""
  init = {sharding.path_name(p): v for p, v in jax.tree_util.tree_flatten_with_path(init_params)[0]}

  def leaf(path, pre):
    name = sharding.path_name(path)
    if not is_session_param(name) or name not in init:
      return pre
    pre, out = np.asarray(pre), np.array(init[name])
    block = tuple(slice(0, min(a, b)) for a, b in zip(pre.shape[1:], out.shape[1:]))
    for r, src in enumerate(rows_of):
      if src is not None:
        out[(r, *block)] = pre[(src, *block)]
    return out

  return jax.tree_util.tree_map_with_path(leaf, pretrained_params)


# ---- The task ----------------------------------------------------------------------------
class NEDSTask(base.Task):
  family, name = "neds", "NEDS"

  def check(self, config):
    check_config(config)

  def finetune_config(self, config, pretrained, mode=None):
    """The pretrained architecture (config.model); its shared weights and the rows of the
    sessions it already has, fresh rows for new sessions. mode "full" (default): everything
    trains after finetune.warmup_steps of the new rows alone; "unit_id": only the rows."""
    config, mode = self.finetune_mode(config, mode)
    if not pretrained:
      return config
    pre = self.pretrained_config(pretrained)
    config.model = checkpoint.with_defaults(pre.model, config.model)
    config.init.pretrained = os.path.abspath(os.path.expanduser(pretrained))
    config.finetune.mode = mode
    return config

  def input(self, config, mesh, pretrained, sessions=None):
    if sessions is not None:
      raise ValueError("NEDS trains on built ibl_binned data sets (config.data.datasets), not in-memory sessions")
    mods = neds.Hparams.from_config(config.model).modalities
    names = config_checks.dataset_names(config)
    loaded = pipeline.load_sessions(names, config.data.data_dir, fields=None)
    loaded = [tokens.named_session(s, config.data.data_dir) for s in loaded]
    records = [tokens.session_record(s, mods) for s in loaded]
    n_neurons = max(s.info.n_neurons for s in loaded)
    for s in loaded:
      if s.splits["train"]["spikes"].shape[1] > config.model.max_bins:
        raise ValueError(
          f"config.model.max_bins: {config.model.max_bins}, but data set {s.name!r} has trials of "
          f"{s.splits['train']['spikes'].shape[1]} bins"
        )
    arrays = [
      {
        split: tokens.model_arrays(s.splits[split], r, mods, f"data set {s.name!r}, {split} split")
        for split in s.splits
      }
      for s, r in zip(loaded, records)
    ]
    batches = pipeline.multi_session_batches(
      [a["train"] for a in arrays],
      config.data.batch_size,
      config.data.shuffle_seed,
      n_neurons,
      rows=mesh_lib.process_rows(config.data.batch_size, mesh),
    )
    consts = jax.device_put(jax.tree.map(jnp.asarray, consts_of(records, mods)), mesh_lib.replicated(mesh))
    for s, r in zip(loaded, records):
      absent = [m for m in mods if m not in r["present"]]
      logging.info(
        "session %s (%s): %d neurons, %d train / %d val trials%s",
        s.name,
        s.info.session_id,
        s.info.n_neurons,
        len(s.splits["train"]["spikes"]),
        len(s.splits["val"]["spikes"]),
        f"; absent: {', '.join(absent)}" if absent else "",
      )
    return base.Input(records, batches, consts, dict(val=[a["val"] for a in arrays], n_neurons=n_neurons))

  def create(self, config, records, mesh, params=None):
    model = neds.from_config(config, [len(r["region_names"]) for r in records], rngs=nnx.Rngs(config.seed))
    graphdef, fresh = nnx.split(model, nnx.Param)
    tx = make_optimizer(config)
    state = sharding.place_state(step_lib.init_state(fresh if params is None else params, tx), mesh, model)
    return graphdef, tx, state

  def merge_pretrained(self, config, graphdef, tx, state, pretrained, records, mesh):
    rows_of = [pretrained.names.index(r["name"]) if r["name"] in pretrained.names else None for r in records]
    source = realigned(state.params, pretrained.params, rows_of)
    params = neds.load(state.params, source, where=f"pretrained model {config.init.pretrained}")
    logging.info(
      "NEDS weights from %s (step %d, sessions %s); session rows %s (None: fresh)",
      config.init.pretrained,
      pretrained.step,
      pretrained.names,
      rows_of,
    )
    return graphdef, tx, sharding.place_state(step_lib.init_state(params, tx), mesh)

  def describe(self, config, graphdef, state):
    hp, n_params = neds.Hparams.from_config(config.model), sum(x.size for x in jax.tree.leaves(state.params))
    return (
      f"NEDS {hp.width} wide x {hp.n_layers} layers ({', '.join(hp.modalities)}) on "
      f"{len(config.data.datasets.split(','))} session(s): {n_params} parameters"
    )

  def loss(self, config, graphdef):
    return functools.partial(masked_loss, graphdef, config=config, train=True)

  def phases(self, config, inputs, pretrained):
    """As NDT1's: from a pretrained model "unit_id" trains only the batch's session row of
    the per-session tables; "full" does so for finetune.warmup_steps, then everything."""
    ft = config.finetune
    warmup = 0 if pretrained is None else config.train.steps if ft.mode == "unit_id" else ft.warmup_steps
    if not warmup:
      return [base.Phase(base.FOREVER, session_row_mask)]
    return [base.Phase(warmup, new_rows_mask), base.Phase(base.FOREVER, session_row_mask)]

  def learning_rate(self, config):
    return optimizer.learning_rate_schedule(config)

  def validator(self, config, graphdef, inputs, mesh):
    val_loss = jax.jit(functools.partial(masked_loss, graphdef, config=config, train=False))
    mine = mesh_lib.process_rows(config.data.batch_size, mesh)

    def validate(params) -> dict:
      """{val_loss: the mean weighted loss of every validation batch of every session,
      fixed keys}, and each modality's ({} without validation trials)."""
      out = []
      for row, val in enumerate(inputs.data["val"]):
        for indices, valid in ndt1_task.padded_batches(len(val["spikes"]), config.data.batch_size):
          batch = dict(pipeline.Batches(val, row, inputs.data["n_neurons"], rows=mine)(indices), valid=valid[mine])
          key = jax.random.fold_in(jax.random.key(config.seed + 1), len(out))
          out.append(val_loss(params, mesh_lib.shard_batch(batch, mesh, config.data.batch_size), inputs.consts, key)[1])
      if not out:
        return {}
      means = {k: float(np.mean([float(m[k]) for m in jax.device_get(out)])) for k in out[0]}
      return {f"val_{k}": v for k, v in means.items()}

    return validate

  def summarise(self, window):
    keys = [k for k in window[0] if k.startswith("loss")] + ["grad_norm"]
    return {k: float(np.mean([m[k] for m in window])) for k in keys}

  def import_reference(self, ckpt, workdir, datasets, data_dir, options, base_config):
    """options: see tasks/neds_import.py (their eids, session rows, heads)."""
    config, records, params, summary = neds_import.imported(self, ckpt, datasets, data_dir, options, base_config)
    self.save_initial(workdir, config, records, params, make_optimizer(config))
    return summary

  # ---- Evaluation -------------------------------------------------------------------------
  def evaluate(self, trained, split, sessions=None, decode=True):
    """Encoding (the four activity metrics, behaviour given) and decoding (behaviour from
    spikes) of `split` of the model's sessions (default all); several: means at the top
    level, each session's under "sessions" (evaluation.report.session_means)."""
    config = trained.config
    mods = neds.Hparams.from_config(config.model).modalities
    names = sessions or trained.names
    per_session, arrays = {}, {}
    options = dict(mods=mods, n_model=trained.n_neurons, max_batch=config.eval.max_batch, decode=decode)
    options.update(max_masks=config.eval.max_masks)
    for name in names:
      row = trained.row(name)
      record = trained.records[row]
      data = pipeline.load_split(name, config.data.data_dir, split)
      data = tokens.named_traces(data, tokens.behaviour_columns(name, config.data.data_dir))
      if data["spikes"].shape[-1] != len(record["region_names"]):
        raise ValueError(
          f"data set {name!r}: {data['spikes'].shape[-1]} neurons, the model's row {row} has "
          f"{len(record['region_names'])}; was the data set rebuilt?"
        )
      model_units = tokens.model_arrays(data, record, mods, f"data set {name!r}, {split} split")
      behaviour = {m: model_units[m] for m in mods if m in record["present"] and tokens.FIELDS.get(m) in data}
      info = trained.sessions[row]
      session = neds_eval.SessionData(data["spikes"], behaviour, info.region_ids(), data.get("rates"))
      label = f"{name}: " if len(names) > 1 else ""
      results, per_neuron = neds_eval.evaluate_session(
        trained.graphdef, trained.params, session, session=row, label=label, **options
      )
      absent = [m for m in mods if m not in behaviour and m != modalities.SPIKE]
      n_trials = int(data["spikes"].shape[0])
      results.update(session=name, session_id=info.session_id, split=split, step=trained.step, absent=absent)
      results.update(masking_mode="neds", n_trials=n_trials, n_neurons=info.n_neurons)
      per_session[name] = results
      arrays.update({task if len(names) == 1 else f"{name}/{task}": bps for task, bps in per_neuron.items()})
    if len(names) == 1:
      return per_session[names[0]], arrays
    results = report.session_means(per_session)
    results.update(split=split, step=trained.step, masking_mode="neds", sessions=per_session)
    return results, arrays

  def arrays_file(self):
    return "per_neuron_bps.npz"

  def report(self, results, label=None, others=None):
    columns = {label or "neds": results, **(others or {})}
    oracle = report.oracle_column(results)
    lines = [
      report.heading(results),
      report.table({**columns, **({"oracle": oracle} if oracle else {})}, neds_eval.ENCODING_METRICS),
    ]
    lines.append(report.table(columns, [m for names in neds_eval.DECODING_METRICS.values() for m in names]))
    if results.get("absent"):
      lines.append(f"absent from the data: {', '.join(results['absent'])} (skipped)")
    hint = report.bps_hint(results)
    return "\n\n".join(line for line in lines + [hint] if line)


def check_config(c: ml_collections.ConfigDict) -> None:
  """A NEDS config (mtm_jax/configs/neds.py); ValueError naming the field."""
  if c.get("family") != "neds":
    raise ValueError(f"config.family: a NEDS config has family 'neds', got {c.get('family')!r}")
  precision.compute_dtype(c.model.dtype, "config.model.dtype")
  hp = neds.Hparams.from_config(c.model)
  m = c.masking
  schemes, weights = tuple(m.schemes), tuple(m.weights)
  if not schemes or any(s not in modalities.SCHEMES for s in schemes) or len(set(schemes)) != len(schemes):
    raise ValueError(f"config.masking.schemes: expected distinct schemes among {modalities.SCHEMES}, got {schemes}")
  if len(weights) != len(schemes) or any(not w >= 0 for w in weights) or not sum(weights) > 0:
    raise ValueError(
      f"config.masking.weights: expected one non-negative weight per scheme {schemes}, not all 0; got {weights}"
    )
  behaviour = [x for x in hp.modalities if x != modalities.SPIKE]
  if modalities.SPIKE not in hp.modalities:
    raise ValueError(f"config.model.modalities: NEDS models spikes; 'spike' is missing from {hp.modalities}")
  needs = {"encoding", "decoding", "self_behaviour"} & set(s for s, w in zip(schemes, weights) if w > 0)
  if needs and not behaviour:
    raise ValueError(f"config.model.modalities: schemes {sorted(needs)} need a behaviour modality; got {hp.modalities}")
  if not 0.0 < m.ratio < 1.0:
    raise ValueError(f"config.masking.ratio: must be in (0, 1), got {m.ratio}")
  if not isinstance(m.per_example, bool):
    raise ValueError(f"config.masking.per_example: expected True or False, got {m.per_example!r}")
  for mod in modalities.MODALITIES:
    w = c.loss.get(mod)
    if not isinstance(w, (int, float)) or w < 0:
      raise ValueError(f"config.loss.{mod}: expected a non-negative weight, got {w!r}")
  if c.data.batch_size < 1:
    raise ValueError(f"config.data.batch_size: must be positive, got {c.data.batch_size}")
  o = c.optimizer
  if not o.learning_rate > 0 or o.weight_decay < 0 or not 0.0 <= o.warmup_fraction < 1.0:
    raise ValueError(
      "config.optimizer: learning_rate > 0, weight_decay >= 0 and warmup_fraction in [0, 1) expected, got "
      f"{o.learning_rate}, {o.weight_decay}, {o.warmup_fraction}"
    )
  config_checks.train(c)
  config_checks.finetune(c)
  if c.eval.split not in SPLITS:
    raise ValueError(f"config.eval.split: expected one of {SPLITS}, got {c.eval.split!r}")
  if c.eval.max_batch < 1 or c.eval.max_masks < 0:
    raise ValueError(
      "config.eval.max_batch (> 0) and config.eval.max_masks (>= 0, 0: all): "
      f"got {c.eval.max_batch}, {c.eval.max_masks}"
    )
  config_checks.data_kind(c, config_checks.BINNED, "NEDS")
