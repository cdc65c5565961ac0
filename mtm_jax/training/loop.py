"""train(config, workdir): NDT1 with a masking mode on one or many sessions, from scratch
or from the shared weights of a pretrained model (fine-tuning on new sessions)."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from mtm_jax import masking
from mtm_jax.configs import ndt1 as ndt1_config
from mtm_jax.datasets import pipeline, schema
from mtm_jax.models import ndt1
from mtm_jax.parallel import mesh as mesh_lib, sharding
from mtm_jax.training import checkpoint, optimizer, step as step_lib
from mtm_jax.training.stopping import PREEMPTED_EXIT_CODE, Preempted, sigterm_flag, stop_signals  # noqa: F401


class MetricWriter:
  """Scalars to <workdir>/metrics.jsonl and TensorBoard event files (process 0 only)."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    for k, v in scalars.items():
      self._tb.add_scalar(k, v, step)
    self._jsonl.write(json.dumps(dict(step=step, **scalars)) + "\n")
    self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()


@dataclasses.dataclass
class Trained:
  """A model restored from a workdir: one row of its session tables per session."""

  config: ml_collections.ConfigDict
  sessions: list[schema.SessionInfo]
  names: list[str]  # TFDS name/config of each session row
  graphdef: nnx.GraphDef
  params: nnx.State  # on `mesh`, laid out by sharding.RULES
  step: int
  mesh: jax.sharding.Mesh

  @property
  def info(self) -> schema.SessionInfo:
    """The first session (the only one of a single-session model)."""
    return self.sessions[0]

  @property
  def n_neurons(self) -> int:
    """The model's input width: the largest session's neuron count."""
    return max(i.n_neurons for i in self.sessions)

  def row(self, name: str) -> int:
    if name not in self.names:
      raise ValueError(f"session {name!r} is not one of the model's sessions {self.names}")
    return self.names.index(name)


def session_records(names, infos) -> list[dict]:
  """What a checkpoint keeps of each session row (JSON)."""
  return [dict(name=n, session_id=i.session_id, region_names=list(i.region_names)) for n, i in zip(names, infos)]


def _from_records(records) -> tuple[list[str], list[schema.SessionInfo]]:
  return ([r["name"] for r in records],
          [schema.SessionInfo(session_id=r["session_id"], region_names=tuple(r["region_names"])) for r in records])


def _create(config, infos, mesh):
  """Model graphdef and an initial train state, laid out on the mesh (sharding.RULES)."""
  model = ndt1.from_config(config, [i.n_neurons for i in infos], rngs=nnx.Rngs(config.seed))
  graphdef, params = nnx.split(model, nnx.Param)
  tx = optimizer.make_optimizer(config)
  state = sharding.place_state(step_lib.init_state(params, tx), mesh, model)
  return graphdef, tx, state


def graft_shared(params, pretrained_params, where: str = "pretrained model"):
  """`params` with every shared parameter (all but ndt1.SESSION_PARAMS) taken from
  `pretrained_params`; the per-session layers of `params` stay as they are (fresh).
  Raises ValueError naming the parameter when the pretrained one is missing or has
  another shape (a different architecture)."""
  source = {sharding.path_name(p): v for p, v in jax.tree_util.tree_flatten_with_path(pretrained_params)[0]}

  def take(path, fresh):
    name = sharding.path_name(path)
    if name.split("/")[0] in ndt1.SESSION_PARAMS:
      return fresh
    if name not in source:
      raise ValueError(f"{where}: has no parameter {name!r}; its architecture differs (compare config.model)")
    if source[name].shape != fresh.shape:
      raise ValueError(f"{where}: parameter {name!r} has shape {source[name].shape}, this model needs "
                       f"{fresh.shape}; its architecture differs (compare config.model)")
    return source[name]

  return jax.tree_util.tree_map_with_path(take, params)


def _mask_config(config) -> masking.MaskConfig:
  return masking.MaskConfig(ratio=config.masking.ratio, causal_ratio=config.masking.causal_ratio)



def padded_batches(n: int, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
  """Batches of trial indices 0..n-1 in order: (indices [batch_size] int, valid
  [batch_size] bool). The last one is filled up with trials of its own (their rows
  invalid), so every trial counts once and every batch has the compiled shape."""
  out = []
  for start in range(0, n, batch_size):
    indices = np.arange(start, min(start + batch_size, n))
    out.append((np.resize(indices, batch_size), np.arange(batch_size) < len(indices)))
  return out


def prepare_run(config: ml_collections.ConfigDict, workdir: str) -> tuple[ml_collections.ConfigDict, str]:
  """The run's own copy of the config (saved with its checkpoints) with absolute data
  and pretrained paths, and the absolute workdir, created."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.data.data_dir = os.path.abspath(os.path.expanduser(config.data.data_dir))
  if config.init.pretrained:
    config.init.pretrained = os.path.abspath(os.path.expanduser(config.init.pretrained))
  workdir = os.path.abspath(os.path.expanduser(workdir))
  os.makedirs(workdir, exist_ok=True)
  return config, workdir


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) in `workdir`; returns the last logged metrics."""
  ndt1_config.validate(config)
  config, workdir = prepare_run(config, workdir)
  names = ndt1_config.dataset_names(config)
  config.data.datasets, config.data.n_sessions = ",".join(names), 0  # resolved, as saved

  # ---- Mesh -----------------------------------------------------------------------------
  mesh = mesh_lib.from_config(config)
  mesh_lib.check_batch_size(config.data.batch_size, mesh)

  # ---- Input ----------------------------------------------------------------------------
  sessions = pipeline.load_sessions(names, config.data.data_dir)
  infos = [s.info for s in sessions]
  n_neurons = max(i.n_neurons for i in infos)
  batches = pipeline.multi_session_batches([s.splits["train"] for s in sessions], config.data.batch_size,
                                           config.data.shuffle_seed, n_neurons,
                                           rows=mesh_lib.process_rows(config.data.batch_size, mesh))
  regions = jax.device_put(jnp.asarray(pipeline.region_table(infos, n_neurons)), mesh_lib.replicated(mesh))
  for s in sessions:
    logging.info("session %s (%s): %d neurons in %s, %d train / %d val trials", s.name, s.info.session_id,
                 s.info.n_neurons, s.info.regions, len(s.splits["train"]["spikes"]), len(s.splits["val"]["spikes"]))
  records = session_records(names, infos)

  # ---- Model, optimiser, checkpoint -----------------------------------------------------
  graphdef, tx, state = _create(config, infos, mesh)
  logging.info("NDT1 %s on %d session(s): %d parameters", config.model.size, len(names),
               sum(x.size for x in jax.tree.leaves(state.params)))
  mngr = checkpoint.manager(workdir, keep=config.train.keep_checkpoints)
  key = jax.random.key(config.seed)
  state, key, data_state, nonfinite = resume(mngr, workdir, state, config, records, key)
  if int(state.step) == 0 and config.init.pretrained:  # not resumed (no checkpoint has step 0)
    pre = load_trained(config.init.pretrained, None if config.init.step < 0 else config.init.step, mesh)
    params = graft_shared(state.params, pre.params, where=f"pretrained model {config.init.pretrained}")
    state = sharding.place_state(step_lib.init_state(params, tx), mesh)
    logging.info("shared weights from %s (step %d, sessions %s); fresh %s for %s", config.init.pretrained,
                 pre.step, pre.names, ", ".join(ndt1.SESSION_PARAMS), names)

  # ---- Update and validation steps ------------------------------------------------------
  mask_config = _mask_config(config)
  dtype = config.model.get("dtype", "float32")
  train_step = sharding.jit_train_step(
      step_lib.make_train_step(graphdef, tx, config.masking.mode, mask_config, dtype=dtype), state, mesh, dtype)
  val_nll = jax.jit(functools.partial(step_lib.masked_nll, graphdef, mode=config.masking.mode,
                                      mask_config=mask_config, train=False))
  shard = lambda batch: mesh_lib.shard_global_batch(batch, mesh)

  def validate(params) -> dict:
    """{val_loss: masked NLL per target entry over every validation trial of every
    session} ({} without validation trials)."""
    sums = []  # (nll sum, target count) per batch, on device; fetched once at the end
    for row, s in enumerate(sessions):
      val = s.splits["val"]
      for indices, valid in padded_batches(len(val["spikes"]), config.data.batch_size):
        rows = dict(pipeline.Batches(val, row, n_neurons)(indices), valid=valid)
        out, c = val_nll(params, shard(rows), regions,
                         jax.random.fold_in(jax.random.key(config.seed + 1), len(sums)))
        sums.append((out, c["n_targets"]))
    total, count = 0.0, 0
    for out, n in jax.device_get(sums):
      total, count = total + float(out), count + int(n)
    return dict(val_loss=total / count) if count else {}

  # ---- Loop -----------------------------------------------------------------------------
  schedule = optimizer.learning_rate_schedule(config)

  def summarise(window) -> dict:
    n_targets = max(np.sum([m["n_targets"] for m in window]), 1)
    return dict(loss=np.sum([m["nll_sum"] for m in window]) / n_targets,
                grad_norm=np.mean([m["grad_norm"] for m in window]))

  writer = MetricWriter(workdir)
  try:
    with checkpoint.saving(mngr, config, records, key) as saver, jax.set_mesh(mesh):
      return run_steps(
          state, config.train, batches,
          update=lambda step, state, batch: train_step(
              state, mesh_lib.shard_batch(batch, mesh, config.data.batch_size), regions, key),
          summarise=summarise, learning_rate=schedule,
          evaluate=lambda state: validate(state.params), save=saver.save, check_saves=saver.failure,
          writer=writer, data_state=data_state, nonfinite_in_a_row=nonfinite)
  finally:
    writer.close()


def run_steps(state, train_config, batches, *, update, summarise, learning_rate, evaluate, save,
              writer: MetricWriter, data_state: dict | None = None, nonfinite_in_a_row: int = 0,
              check_saves=lambda step, wait: None) -> dict:
  """The training loop every model family shares: from state.step to train_config.steps,
  batch i = batches[i] (so a resumed run reads what an uninterrupted one would).

  update(step, state, host batch) -> (state, metrics with a [] bool "finite"); every
  log_every steps the window's metrics are fetched and summarise(finite steps' metrics)
  -> scalars is logged with steps/s, the learning rate and the skipped steps; every
  eval_every steps evaluate(state) -> scalars; every checkpoint_every steps (and at the
  end) save(step, state, progress) with progress = dict(data_state=the grain iterator
  state, nonfinite_in_a_row=...). One line per log step (with the evaluation's scores
  when it evaluates too).

  Faults: a step whose update was skipped as non-finite is logged with its number; after
  train_config.max_nonfinite_steps of them in a row the state (whose parameters are
  those of the last finite update) is saved and FloatingPointError raised. SIGTERM
  saves the current step and raises Preempted. check_saves(step, wait) -> the
  exception of a background save that failed, or None (checkpoint.Saver.failure; without
  `wait` it must not block): it is raised at the first step boundary after the failure.
  data_state (a restored iterator state) must be at state.step. Returns the last logged
  scalars."""
  first, total = int(state.step), train_config.steps
  limit = train_config.max_nonfinite_steps
  if data_state is not None and data_state.get("next_index") != first:
    raise ValueError(f"checkpoint of step {first}: its data iterator state {data_state} is not at batch {first}; "
                     "the checkpoint is inconsistent")
  if first >= total:
    logging.warning("the run is at step %d and config.train.steps is %d: nothing to train (raise "
                    "--config.train.steps to train on)", first, total)
  data = pipeline.iterate_from(batches, first, data_state)
  bad, last = nonfinite_in_a_row, {}
  t0, window, window_start, checked = time.time(), [], first, 0
  progress = lambda: dict(data_state=data.get_state(), nonfinite_in_a_row=bad)
  with sigterm_flag() as sigterm:
    for step in range(first, total):
      state, metrics = update(step, state, next(data))
      window.append(metrics)
      done = step + 1
      log_now = done % train_config.log_every == 0 or done == total
      save_now = done % train_config.checkpoint_every == 0 or done == total
      eval_now = done % train_config.eval_every == 0 or done == total
      sync = log_now or save_now or done % limit == 0  # steps where the host waits for the device anyway
      stop, failed = stop_signals(sigterm, check_saves, done, sync)
      if failed is not None:
        raise failed
      if sync or stop:  # count the non-finite steps so far
        for i, finite in enumerate(jax.device_get([m["finite"] for m in window[checked:]])):
          bad = 0 if finite else bad + 1
          if not finite:
            logging.warning("step %d: non-finite loss or gradient; update skipped (%d in a row)",
                            window_start + checked + i + 1, bad)
        checked = len(window)
        if bad >= limit:
          save(done, state, progress())
          raise FloatingPointError(
              f"step {done}: {bad} steps in a row had a non-finite loss or gradient (config.train."
              f"max_nonfinite_steps = {limit}); their updates were skipped, and the state of the last finite update "
              f"(step {done - bad}) is saved as the checkpoint of step {done}. Lower the learning rate or check the data.")
      line = []
      if log_now:
        fetched = jax.device_get(window)
        good = [m for m in fetched if m["finite"]]
        rate = (done - window_start) / max(time.time() - t0, 1e-9)
        last = {k: float(v) for k, v in summarise(good).items()} if good else dict(loss=float("nan"))
        last.update(steps_per_second=rate, learning_rate=float(learning_rate(done)),
                    skipped_steps=float(len(fetched) - len(good)))
        line.append(f"step {done}/{total}  loss {last['loss']:.4f}  {rate:.2f} steps/s  "
                    f"ETA {(total - done) / max(rate, 1e-9):.0f}s")
        writer.write(done, last)
      if eval_now:
        scores = {k: float(v) for k, v in evaluate(state).items()}
        if scores:
          line.append(("" if log_now else f"step {done}") + "".join(f"  {k} {v:.4f}" for k, v in scores.items()))
          writer.write(done, scores)
          last.update(scores)
      if line:
        logging.info("%s", "".join(line))
      if log_now:
        t0, window, window_start, checked = time.time(), [], done, 0
      if save_now or stop:
        save(done, state, progress())
      if stop:
        failed = check_saves(done, True)
        if failed is not None:
          raise failed
        logging.warning("SIGTERM: saved the checkpoint of step %d and stopping; re-run to resume", done)
        raise Preempted(done)
  return last


def resume(mngr, workdir: str, state, config: ml_collections.ConfigDict, records: list[dict], key: jax.Array):
  """Continues the run in `workdir` if it has a checkpoint: (state, key, data_state,
  nonfinite_in_a_row) of its newest readable checkpoint, checked against this run's
  model config and sessions first (a clear error otherwise); damaged checkpoints are
  reported and moved aside. Without a checkpoint: (state, key, None, 0) as given."""
  if not mngr.all_steps():
    checkpoint.report_half_written(mngr, quarantine=True)
    return state, key, None, 0
  saved_config, saved_records = checkpoint.load_metadata(workdir)
  checkpoint.check_compatible(saved_config, saved_records, config, records, workdir)
  restored = checkpoint.restore(mngr, state, quarantine=True)
  progress = restored.progress or {}
  if "rng" in progress:
    saved_key = checkpoint.key_from_record(progress["rng"])
    if not np.array_equal(jax.random.key_data(saved_key), jax.random.key_data(key)):
      logging.warning("the checkpoint's PRNG key differs from config.seed's; continuing with the checkpoint's")
    key = saved_key
  logging.info("resumed from step %d", restored.step)
  return restored.state, key, restored.data_state, int(progress.get("nonfinite_in_a_row", 0))


def load_trained(workdir: str, step: int | None = None, mesh=None) -> Trained:
  """Config, sessions and parameters of the model trained in `workdir` (its checkpoint
  alone: no data set is read)."""
  config, records = checkpoint.load_metadata(workdir, step)
  names, infos = _from_records(records)
  mesh = mesh_lib.from_config(config, fit=True) if mesh is None else mesh
  graphdef, _, state = _create(config, infos, mesh)
  mngr = checkpoint.manager(workdir, create=False)
  restored = checkpoint.restore(mngr, state, step)
  mngr.close()
  return Trained(config, infos, names, graphdef, restored.state.params, restored.step, mesh)


def finetune_config(config: ml_collections.ConfigDict, pretrained: str | None) -> ml_collections.ConfigDict:
  """`config` set up to fine-tune the model in workdir `pretrained` (its checkpoint alone
  is read): the architecture (config.model) is the pretrained one, and training starts
  from its shared weights with fresh per-session layers for config.data.datasets.
  pretrained=None (or "") leaves `config` as it is: training from scratch."""
  config = ml_collections.ConfigDict(config.to_dict())
  if not pretrained:
    return config
  pre, _ = checkpoint.load_metadata(pretrained)
  if pre.model.stitch_dim <= 0:
    raise ValueError(f"{pretrained}: the pretrained model has no per-session stitching layers "
                     "(config.model.stitch_dim = 0), so its input layer fits only its own session")
  config.model = checkpoint.with_defaults(pre.model, config.model)
  config.init.pretrained = os.path.abspath(os.path.expanduser(pretrained))
  if config.masking.mode == masking.TEMPORAL:
    config.model.use_prompt = False
  return config
