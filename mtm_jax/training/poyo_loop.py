"""train(config, workdir): POYO on one or many spike-event sessions, from scratch or from a
pretrained POYO (new sessions: unit identification, optionally then full fine-tuning).

Checkpoints hold the train state, the config (with the behaviour scale resolved into
config.data.scale) and one record per session row of the vocabulary (name, session id,
unit ids), so `load_trained(workdir)` needs nothing but the path.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from mtm_jax.configs import poyo as poyo_config
from mtm_jax.datasets import events
from mtm_jax.evaluation import poyo_eval
from mtm_jax.models import poyo
from mtm_jax.parallel import mesh as mesh_lib, sharding
from mtm_jax.training import checkpoint, loop, optimizer, poyo_step
from mtm_jax.training.step import init_state


@dataclasses.dataclass
class TrainedPOYO:
  """A POYO model restored from a workdir."""

  config: ml_collections.ConfigDict
  records: list[dict]  # one per session row of the vocabulary
  vocab: events.Vocabulary
  scale: np.ndarray  # [D] float32 behaviour divisor
  graphdef: nnx.GraphDef
  params: nnx.State  # on `mesh`, laid out by sharding.RULES
  step: int
  mesh: jax.sharding.Mesh


# ------------------------------------------------------------------------------------------
# Pieces shared by training, loading and evaluation
# ------------------------------------------------------------------------------------------


def behaviour_task(config) -> str:
  """The task the event batches' behaviour is read out by (output_task 0: first sorted name)."""
  return sorted(dict(config.model.tasks))[0]


def window_config(config, train: bool) -> events.WindowConfig:
  """How windows are cut: unit dropout only when `train`."""
  d = config.data
  dropout = (d.unit_dropout_min, d.unit_dropout_mode, d.unit_dropout_max) if (train and d.unit_dropout) else None
  return events.WindowConfig(window_length=d.window_length, bucket_lengths=tuple(d.token_buckets),
                             unit_dropout=dropout, max_outputs=d.max_queries, eval_step=config.eval.window_step)


def load_sessions(config, splits: Sequence[str] = ("train", "val")) -> list[dict]:
  """The event sessions of config.data.datasets (built spike_events data sets)."""
  return [events.load_event_session(n, config.data.data_dir, splits) for n in poyo_config.dataset_names(config)]


def session_records(names: Sequence[str], sessions: Sequence[dict]) -> list[dict]:
  """What a checkpoint keeps of each session row (JSON)."""
  return [dict(name=n, session_id=str(s["session_id"]), unit_ids=[str(u) for u in s["unit_ids"]])
          for n, s in zip(names, sessions)]


def vocabulary(records: Sequence[dict]) -> events.Vocabulary:
  return events.Vocabulary(tuple(r["session_id"] for r in records), tuple(len(r["unit_ids"]) for r in records),
                           tuple(u for r in records for u in r["unit_ids"]))


def _model_state(config, vocab: events.Vocabulary, mesh, params=None):
  """(graphdef, tx, state) laid out on the mesh (sharding.RULES); `params` (a pure dict
  or State) replaces the fresh initialisation."""
  model = poyo.from_config(config, len(vocab.unit_ids), len(vocab.session_ids), rngs=nnx.Rngs(config.seed))
  graphdef, state = nnx.split(model, nnx.Param)
  if params is not None:
    nnx.replace_by_pure_dict(state, params if isinstance(params, dict) else nnx.to_pure_dict(params))
  tx = optimizer.make_poyo_optimizer(config, state)
  return graphdef, tx, sharding.place_state(init_state(state, tx), mesh, model)



# ------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------


def train(config: ml_collections.ConfigDict, workdir: str, sessions: Sequence[dict] | None = None) -> dict:
  """Trains (or resumes) in `workdir`; returns the last logged metrics (with val_r2).

  sessions: event sessions to train on instead of reading config.data.datasets (e.g.
  synthetic ones in memory); their session ids then name them in the checkpoint."""
  poyo_config.validate(config)
  config, workdir = loop.prepare_run(config, workdir)
  if sessions is None:
    sessions = load_sessions(config)
    names = poyo_config.dataset_names(config)
  else:
    sessions = list(sessions)
    names = [str(s["session_id"]) for s in sessions]
    config.data.datasets = ",".join(names)

  # ---- Mesh -----------------------------------------------------------------------------
  mesh = mesh_lib.from_config(config)
  mesh_lib.check_batch_size(config.data.batch_size, mesh)
  mesh_lib.check_batch_size(config.eval.batch_size, mesh)

  # ---- Vocabulary, scale and initial parameters ------------------------------------------
  pre = None
  if config.init.pretrained:
    pre = load_trained(config.init.pretrained, None if config.init.step < 0 else config.init.step, mesh)
    records = list(pre.records) + [r for r in session_records(names, sessions)
                                   if r["session_id"] not in pre.vocab.session_ids]
    scale = pre.scale
  else:
    records = session_records(names, sessions)
    scale = np.asarray(config.data.scale, np.float32) if config.data.scale else events.behaviour_scale(sessions)
  vocab = vocabulary(records)
  config.data.scale = [float(x) for x in scale]

  # ---- Input ----------------------------------------------------------------------------
  train_data = events.prepare(sessions, "train", window_config(config, train=True), vocab=vocab, scale=scale)
  val_data = events.prepare(sessions, "val", window_config(config, train=False), vocab=vocab, scale=scale)
  batches = events.training_batches(train_data, config.data.batch_size, config.data.shuffle_seed)
  for s in sessions:
    logging.info("session %s: %d units, %d train / %d val intervals", s["session_id"], len(s["unit_ids"]),
                 len(s["splits"]["train"]), len(s["splits"]["val"]))

  # ---- Model, optimiser, checkpoint -----------------------------------------------------
  if pre is not None:
    grown = poyo.grow_vocab(nnx.to_pure_dict(jax.device_get(pre.params)), vocab.n_unit_rows - pre.vocab.n_unit_rows,
                            vocab.n_session_rows - pre.vocab.n_session_rows, jax.random.key(config.seed + 7),
                            init_scale=config.model.emb_init_scale)
    graphdef, tx, state = _model_state(config, vocab, mesh, grown)
    trainable = poyo_step.new_rows_mask(state.params, pre.vocab.n_unit_rows, pre.vocab.n_session_rows)
    warmup = config.train.steps if config.finetune.mode == "unit_id" else config.finetune.warmup_steps
    logging.info("from %s (step %d): %d new unit rows, %d new session rows; %s", config.init.pretrained, pre.step,
                 vocab.n_unit_rows - pre.vocab.n_unit_rows, vocab.n_session_rows - pre.vocab.n_session_rows,
                 f"unit identification for {warmup} steps" + (", then everything" if warmup < config.train.steps
                                                               else ""))
  else:
    graphdef, tx, state = _model_state(config, vocab, mesh)
    trainable, warmup = None, 0
  logging.info("POYO %s: %d parameters (%d outside the unit/session tables)", config.model.size,
               sum(x.size for x in jax.tree.leaves(state.params)),
               poyo.count_params(nnx.merge(graphdef, state.params), embeddings=False))
  mngr = checkpoint.manager(workdir, keep=config.train.keep_checkpoints)
  key = jax.random.key(config.seed, impl=config.train.prng_impl)
  state, key, data_state, nonfinite = loop.resume(mngr, workdir, state, config, records, key)

  # ---- Update steps ---------------------------------------------------------------------
  tasks, dtype = dict(config.model.tasks), config.model.get("dtype", "float32")
  full_step = sharding.jit_train_step(poyo_step.make_train_step(graphdef, tx, tasks=tasks, dtype=dtype), state, mesh,
                                      dtype)
  frozen_step = (sharding.jit_train_step(poyo_step.make_train_step(graphdef, tx, tasks=tasks, trainable=trainable,
                                                                   dtype=dtype), state, mesh, dtype)
                 if trainable is not None else None)
  predictor = poyo_eval.make_predictor(graphdef, behaviour_task(config))
  lr = optimizer.poyo_learning_rate_schedule(config)

  # ---- Loop -----------------------------------------------------------------------------
  shard = lambda batch: mesh_lib.shard_global_batch(batch, mesh)

  def update(step, state, batch):
    return (frozen_step if step < warmup else full_step)(state, shard(batch), key)

  def summarise(window) -> dict:
    return dict(loss=np.mean([m["loss"] for m in window]), grad_norm=np.mean([m["grad_norm"] for m in window]),
                param_norm=float(window[-1]["param_norm"]))

  def evaluate(state) -> dict:
    val, _ = poyo_eval.evaluate_data(graphdef, state.params, val_data, task=behaviour_task(config),
                                     batch_size=config.eval.batch_size, mesh=mesh, predictor=predictor)
    return dict(val_r2=val["behaviour_r2"])

  writer = loop.MetricWriter(workdir)
  try:
    with checkpoint.saving(mngr, config, records, key) as saver, jax.set_mesh(mesh):
      return loop.run_steps(state, config.train, batches, update=update, summarise=summarise, learning_rate=lr,
                            evaluate=evaluate, writer=writer, data_state=data_state, nonfinite_in_a_row=nonfinite,
                            save=saver.save, check_saves=saver.failure)
  finally:
    writer.close()


# ------------------------------------------------------------------------------------------
# Loading and fine-tuning
# ------------------------------------------------------------------------------------------


def load_trained(workdir: str, step: int | None = None, mesh=None) -> TrainedPOYO:
  """Config, vocabulary, scale and parameters of the POYO trained in `workdir` (its
  checkpoint alone: no data set is read)."""
  config, records = checkpoint.load_metadata(workdir, step)
  if config.get("family") != "poyo":
    raise ValueError(f"{workdir}: holds a {config.get('family', 'mtm')!r} model, not POYO")
  vocab = vocabulary(records)
  mesh = mesh_lib.from_config(config, fit=True) if mesh is None else mesh
  graphdef, _, state = _model_state(config, vocab, mesh)
  mngr = checkpoint.manager(workdir, create=False)
  restored = checkpoint.restore(mngr, state, step)
  mngr.close()
  return TrainedPOYO(config, records, vocab, np.asarray(config.data.scale, np.float32), graphdef,
                     restored.state.params, restored.step, mesh)


def finetune_config(config: ml_collections.ConfigDict, pretrained: str | None,
                    mode: str = "unit_id") -> ml_collections.ConfigDict:
  """`config` set up to adapt the POYO in workdir `pretrained` (its checkpoint alone is
  read) to the sessions of config.data.datasets: the architecture (config.model) and the
  behaviour scale are the pretrained ones; new unit and session rows are appended.
  mode "unit_id" trains only those rows; "full" trains only them for
  config.finetune.warmup_steps, then everything. pretrained=None (or "") leaves `config`
  as it is: training from scratch."""
  if mode not in poyo_config.FINETUNE_MODES:
    raise ValueError(f"finetune mode: expected one of {poyo_config.FINETUNE_MODES}, got {mode!r}")
  config = ml_collections.ConfigDict(config.to_dict())
  if not pretrained:
    return config
  pre, _ = checkpoint.load_metadata(pretrained)
  if pre.get("family") != "poyo":
    raise ValueError(f"{pretrained}: holds a {pre.get('family', 'mtm')!r} model, not POYO")
  config.model = checkpoint.with_defaults(pre.model, config.model)
  config.data.window_length = pre.data.window_length
  config.data.scale = list(pre.data.scale)
  config.init.pretrained = os.path.abspath(os.path.expanduser(pretrained))
  config.finetune.mode = mode
  return config
