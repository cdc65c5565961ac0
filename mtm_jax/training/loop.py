"""train(config, workdir): pretraining of NDT1 with a masking mode, on one session."""

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
  """A model restored from a workdir."""

  config: ml_collections.ConfigDict
  info: schema.SessionInfo
  graphdef: nnx.GraphDef
  params: nnx.State  # replicated on `mesh`
  step: int
  mesh: jax.sharding.Mesh


def _create(config, info: schema.SessionInfo, mesh):
  """Model graphdef and an initial train state, replicated over the mesh."""
  model = ndt1.from_config(config, info.n_neurons, rngs=nnx.Rngs(config.seed))
  graphdef, params = nnx.split(model, nnx.Param)
  tx = optimizer.make_optimizer(config)
  state = jax.device_put(step_lib.init_state(params, tx), mesh_lib.replicated(mesh))
  return graphdef, tx, state


def _mask_config(config) -> masking.MaskConfig:
  return masking.MaskConfig(ratio=config.masking.ratio, causal_ratio=config.masking.causal_ratio)


def _local_rows(batch: dict, n_processes: int, index: int) -> dict:
  """This process's contiguous share of a global host batch."""
  size = len(next(iter(batch.values()))) // n_processes
  return {k: v[index * size : (index + 1) * size] for k, v in batch.items()}


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) in `workdir`; returns the last logged metrics."""
  ndt1_config.validate(config)
  config = ml_collections.ConfigDict(config.to_dict())  # own copy, saved with checkpoints
  config.data.data_dir = os.path.abspath(os.path.expanduser(config.data.data_dir))
  workdir = os.path.abspath(os.path.expanduser(workdir))
  os.makedirs(workdir, exist_ok=True)

  # ---- Mesh -----------------------------------------------------------------------------
  mesh = mesh_lib.make_mesh(config.mesh.data)
  mesh_lib.check_batch_size(config.data.batch_size, mesh)
  n_proc, proc = jax.process_count(), jax.process_index()

  # ---- Input ----------------------------------------------------------------------------
  info = pipeline.session_info(config.data.dataset, config.data.data_dir)
  train_arrays = pipeline.load_split(config.data.dataset, config.data.data_dir, "train", pipeline.MODEL_FIELDS)
  val_arrays = pipeline.load_split(config.data.dataset, config.data.data_dir, "val", pipeline.MODEL_FIELDS)
  batches = pipeline.training_batches(train_arrays, config.data.batch_size, config.data.shuffle_seed)
  regions = jax.device_put(jnp.asarray(info.region_ids()), mesh_lib.replicated(mesh))
  logging.info("session %s: %d neurons in %s, %d train / %d val trials", info.session_id, info.n_neurons,
               info.regions, len(train_arrays["spikes"]), len(val_arrays["spikes"]))

  # ---- Model, optimiser, checkpoint -----------------------------------------------------
  graphdef, tx, state = _create(config, info, mesh)
  logging.info("NDT1 %s: %d parameters", config.model.size,
               sum(x.size for x in jax.tree.leaves(state.params)))
  mngr = checkpoint.manager(workdir, keep=config.train.keep_checkpoints)
  if mngr.latest_step() is not None:
    state = checkpoint.restore(mngr, state)
    logging.info("resumed from step %d", int(state.step))

  # ---- Update and validation steps ------------------------------------------------------
  mask_config = _mask_config(config)
  train_step = jax.jit(step_lib.make_train_step(graphdef, tx, config.masking.mode, mask_config), donate_argnums=0)
  val_nll = jax.jit(functools.partial(step_lib.masked_nll, graphdef, mode=config.masking.mode,
                                      mask_config=mask_config, train=False))
  key = jax.random.key(config.seed)

  def validate(params) -> float:
    total, count = 0.0, 0
    n = len(val_arrays["spikes"]) // config.data.batch_size * config.data.batch_size
    for i, start in enumerate(range(0, n, config.data.batch_size)):
      rows = {k: v[start : start + config.data.batch_size] for k, v in val_arrays.items()}
      s, c = val_nll(params, mesh_lib.shard_batch(_local_rows(rows, n_proc, proc), mesh), regions,
                     jax.random.fold_in(jax.random.key(config.seed + 1), i), 0)
      total, count = total + float(s), count + int(c["n_targets"])
    return total / max(count, 1)

  # ---- Loop -----------------------------------------------------------------------------
  writer = MetricWriter(workdir)
  first = int(state.step)
  last = {}
  data = pipeline.iterate_from(batches, first)
  t0, window, window_start = time.time(), [], first
  try:
    with jax.set_mesh(mesh):
      for step in range(first, config.train.steps):
        batch = mesh_lib.shard_batch(_local_rows(next(data), n_proc, proc), mesh)
        state, metrics = train_step(state, batch, regions, key, 0)
        window.append(metrics)
        done = step + 1
        if done % config.train.log_every == 0 or done == config.train.steps:
          window = jax.device_get(window)
          elapsed = time.time() - t0
          rate = (done - window_start) / max(elapsed, 1e-9)
          n_targets = max(np.sum([m["n_targets"] for m in window]), 1)
          last = dict(loss=np.sum([m["nll_sum"] for m in window]) / n_targets,
                      grad_norm=np.mean([m["grad_norm"] for m in window]), steps_per_second=rate,
                      learning_rate=optimizer.learning_rate_schedule(config)(done))
          eta = (config.train.steps - done) / max(rate, 1e-9)
          logging.info("step %d/%d  loss %.4f  %.1f steps/s  ETA %.0fs", done, config.train.steps,
                       last["loss"], rate, eta)
          writer.write(done, last)
          t0, window, window_start = time.time(), [], done
        if done % config.train.eval_every == 0 or done == config.train.steps:
          last["val_loss"] = validate(state.params)
          logging.info("step %d  validation loss %.4f", done, last["val_loss"])
          writer.write(done, dict(val_loss=last["val_loss"]))
        if done % config.train.checkpoint_every == 0 or done == config.train.steps:
          checkpoint.save(mngr, done, state, config)
  finally:
    mngr.wait_until_finished()
    mngr.close()
    writer.close()
  return last


def load_trained(workdir: str, step: int | None = None, mesh=None) -> Trained:
  """Config, session and parameters of the model trained in `workdir`."""
  config = checkpoint.load_config(workdir, step)
  mesh = mesh_lib.make_mesh(config.mesh.data) if mesh is None else mesh
  info = pipeline.session_info(config.data.dataset, config.data.data_dir)
  graphdef, _, state = _create(config, info, mesh)
  mngr = checkpoint.manager(workdir, create=False)
  state = checkpoint.restore(mngr, state, step)
  mngr.close()
  return Trained(config, info, graphdef, state.params, int(state.step), mesh)
