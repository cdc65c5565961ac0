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
from mtm_jax.training import checkpoint, mesh as mesh_lib, optimizer, step as step_lib


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
  params: nnx.State  # replicated on `mesh`
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
  """Model graphdef and an initial train state, replicated over the mesh."""
  model = ndt1.from_config(config, [i.n_neurons for i in infos], rngs=nnx.Rngs(config.seed))
  graphdef, params = nnx.split(model, nnx.Param)
  tx = optimizer.make_optimizer(config)
  state = jax.device_put(step_lib.init_state(params, tx), mesh_lib.replicated(mesh))
  return graphdef, tx, state


def _path_name(path) -> str:
  """'layers/0/attn/query/kernel' for a parameter's pytree path."""
  names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
  return "/".join(names[:-1] if names and names[-1] == "value" else names)


def graft_shared(params, pretrained_params, where: str = "pretrained model"):
  """`params` with every shared parameter (all but ndt1.SESSION_PARAMS) taken from
  `pretrained_params`; the per-session layers of `params` stay as they are (fresh).
  Raises ValueError naming the parameter when the pretrained one is missing or has
  another shape (a different architecture)."""
  source = {_path_name(p): v for p, v in jax.tree_util.tree_flatten_with_path(pretrained_params)[0]}

  def take(path, fresh):
    name = _path_name(path)
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
  mesh = mesh_lib.make_mesh(config.mesh.data)
  mesh_lib.check_batch_size(config.data.batch_size, mesh)

  # ---- Input ----------------------------------------------------------------------------
  sessions = pipeline.load_sessions(names, config.data.data_dir)
  infos = [s.info for s in sessions]
  n_neurons = max(i.n_neurons for i in infos)
  batches = pipeline.multi_session_batches([s.splits["train"] for s in sessions], config.data.batch_size,
                                           config.data.shuffle_seed, n_neurons)
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
  if mngr.latest_step() is not None:
    _, saved = checkpoint.load_metadata(workdir)
    if [r["name"] for r in saved] != names:
      raise ValueError(f"{workdir}: holds a run on sessions {[r['name'] for r in saved]}, not {names}; "
                       "use another workdir")
    state = checkpoint.restore(mngr, state)
    logging.info("resumed from step %d", int(state.step))
  elif config.init.pretrained:
    pre = load_trained(config.init.pretrained, None if config.init.step < 0 else config.init.step, mesh)
    params = graft_shared(state.params, pre.params, where=f"pretrained model {config.init.pretrained}")
    state = jax.device_put(step_lib.init_state(params, tx), mesh_lib.replicated(mesh))
    logging.info("shared weights from %s (step %d, sessions %s); fresh %s for %s", config.init.pretrained,
                 pre.step, pre.names, ", ".join(ndt1.SESSION_PARAMS), names)

  # ---- Update and validation steps ------------------------------------------------------
  mask_config = _mask_config(config)
  train_step = jax.jit(step_lib.make_train_step(graphdef, tx, config.masking.mode, mask_config,
                                                dtype=config.model.get("dtype", "float32")), donate_argnums=0)
  val_nll = jax.jit(functools.partial(step_lib.masked_nll, graphdef, mode=config.masking.mode,
                                      mask_config=mask_config, train=False))
  key = jax.random.key(config.seed)
  shard = lambda batch: mesh_lib.shard_global_batch(batch, mesh)

  def validate(params) -> float:
    """Masked NLL per target entry over every session's validation trials."""
    total, count, i = 0.0, 0, 0
    b = config.data.batch_size
    for row, s in enumerate(sessions):
      val = s.splits["val"]
      for start in range(0, len(val["spikes"]) // b * b, b):
        rows = pipeline.Batches(val, row, n_neurons)(np.arange(start, start + b))
        out, c = val_nll(params, shard(rows), regions,
                         jax.random.fold_in(jax.random.key(config.seed + 1), i))
        total, count, i = total + float(out), count + int(c["n_targets"]), i + 1
    return total / max(count, 1)

  # ---- Loop -----------------------------------------------------------------------------
  schedule = optimizer.learning_rate_schedule(config)

  def summarise(window) -> dict:
    n_targets = max(np.sum([m["n_targets"] for m in window]), 1)
    return dict(loss=np.sum([m["nll_sum"] for m in window]) / n_targets,
                grad_norm=np.mean([m["grad_norm"] for m in window]))

  writer = MetricWriter(workdir)
  try:
    with jax.set_mesh(mesh):
      return run_steps(
          state, config.train, batches,
          update=lambda step, state, batch: train_step(state, shard(batch), regions, key),
          summarise=summarise, learning_rate=schedule,
          evaluate=lambda state: dict(val_loss=validate(state.params)),
          save=lambda step, state: checkpoint.save(mngr, step, state, config, records), writer=writer)
  finally:
    mngr.wait_until_finished()
    mngr.close()
    writer.close()


def run_steps(state, train_config, batches, *, update, summarise, learning_rate, evaluate, save,
              writer: MetricWriter) -> dict:
  """The training loop every model family shares: from state.step to train_config.steps,
  batch i = batches[i] (so a resumed run reads what an uninterrupted one would).

  update(step, state, host batch) -> (state, metrics); every log_every steps the
  window's metrics are fetched, summarise(window) -> scalars is logged with steps/s and
  the learning rate (a non-finite loss stops the run); every eval_every steps
  evaluate(state) -> scalars; every checkpoint_every steps (and at the end)
  save(step, state). Returns the last logged scalars."""
  first = int(state.step)
  last = {}
  data = pipeline.iterate_from(batches, first)
  t0, window, window_start = time.time(), [], first
  for step in range(first, train_config.steps):
    state, metrics = update(step, state, next(data))
    window.append(metrics)
    done = step + 1
    if done % train_config.log_every == 0 or done == train_config.steps:
      rate = (done - window_start) / max(time.time() - t0, 1e-9)
      last = {k: float(v) for k, v in summarise(jax.device_get(window)).items()}
      last.update(steps_per_second=rate, learning_rate=float(learning_rate(done)))
      if not np.isfinite(last["loss"]):
        raise FloatingPointError(f"step {done}: the training loss is {last['loss']}")
      logging.info("step %d/%d  loss %.4f  %.2f steps/s  ETA %.0fs", done, train_config.steps, last["loss"], rate,
                   (train_config.steps - done) / max(rate, 1e-9))
      writer.write(done, last)
      t0, window, window_start = time.time(), [], done
    if done % train_config.eval_every == 0 or done == train_config.steps:
      scores = {k: float(v) for k, v in evaluate(state).items()}
      logging.info("step %d  %s", done, "  ".join(f"{k} {v:.4f}" for k, v in scores.items()))
      writer.write(done, scores)
      last.update(scores)
    if done % train_config.checkpoint_every == 0 or done == train_config.steps:
      save(done, state)
  return last


def load_trained(workdir: str, step: int | None = None, mesh=None) -> Trained:
  """Config, sessions and parameters of the model trained in `workdir` (its checkpoint
  alone: no data set is read)."""
  config, records = checkpoint.load_metadata(workdir, step)
  names, infos = _from_records(records)
  mesh = mesh_lib.make_mesh(config.mesh.data) if mesh is None else mesh
  graphdef, _, state = _create(config, infos, mesh)
  mngr = checkpoint.manager(workdir, create=False)
  state = checkpoint.restore(mngr, state, step)
  mngr.close()
  return Trained(config, infos, names, graphdef, state.params, int(state.step), mesh)


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
  config.model = pre.model
  config.init.pretrained = os.path.abspath(os.path.expanduser(pretrained))
  if config.masking.mode == masking.TEMPORAL:
    config.model.use_prompt = False
  return config
