"""What the spike-token tasks (tasks/poyo.py, tasks/poyo_mtm.py) share: their event
sessions and vocabulary records, the placed model, and fine-tuning by unit identification.

A run's vocabulary records (datasets.events.vocabulary) are the pretrained model's rows
first, then those of the sessions it does not know; the new rows (models/unit_tables.py:
grow, load) are the only ones that train during unit identification ("unit_id": every
step; "full": config.finetune.warmup_steps, then everything).
"""

from __future__ import annotations

import os
from typing import Sequence

import ml_collections
from absl import logging
from flax import nnx

from mtm_jax.datasets.events import session as session_lib
from mtm_jax.datasets.events import tfds
from mtm_jax.datasets.events import vocabulary as vocabulary_lib
from mtm_jax.models import unit_tables
from mtm_jax.parallel import mesh as mesh_lib, sharding
from mtm_jax.tasks import base
from mtm_jax.training import checkpoint, config_checks, rows, step as step_lib


def load_sessions(config, splits: Sequence[str] = ("train", "val")) -> list[session_lib.EventSession]:
  """The event sessions of config.data.datasets (built spike_events data sets)."""
  return [tfds.load_event_session(n, config.data.data_dir, splits) for n in config_checks.dataset_names(config)]


def input_sessions(config, sessions=None) -> tuple[list[session_lib.EventSession], list[str]]:
  """(sessions, their names): config.data.datasets read from TFDS, or the given in-memory
  sessions (config.data.datasets then names them by session id)."""
  if sessions is None:
    return load_sessions(config), config_checks.dataset_names(config)
  sessions = list(sessions)
  names = [str(s.session_id) for s in sessions]
  config.data.datasets = ",".join(names)
  return sessions, names


def vocabulary_records(sessions, names, pretrained: base.Pretrained | None) -> list[dict]:
  """The vocabulary records of a run: the pretrained model's rows first (if any), then
  those of the sessions it does not know."""
  records = vocabulary_lib.build_vocabulary(sessions).records(names)
  if pretrained is None:
    return records
  known = {r["session_id"] for r in pretrained.records}
  return list(pretrained.records) + [r for r in records if r["session_id"] not in known]


def training_input(config, mesh, records, sessions, what: str, train, val, training_batches) -> base.Input:
  """The Input of a spike-token run: training batches of `train` (training_batches(examples,
  batch size, seed, rows=this process's rows of a batch)), `val` for validation, and one log
  line per session (log_sessions; what: "intervals" or "trials")."""
  mine = mesh_lib.process_rows(config.data.batch_size, mesh)
  batches = training_batches(train, config.data.batch_size, config.data.shuffle_seed, rows=mine)
  log_sessions(sessions, what)
  return base.Input(records, batches, None, dict(val=val))


def log_sessions(sessions, what: str) -> None:
  """One log line per session: its units and its train / val `what` (intervals, trials)."""
  for s in sessions:
    logging.info(
      "session %s: %d units, %d train / %d val %s",
      s.session_id,
      len(s.unit_ids),
      len(s.splits["train"]),
      len(s.splits["val"]),
      what,
    )


def placed(model, make_tx, params, mesh):
  """(graphdef, tx, TrainState on `mesh`) of `model`, its parameters replaced by `params`
  (a pure dict or State; None: fresh); make_tx(param state) -> the optax transformation."""
  graphdef, state = nnx.split(model, nnx.Param)
  if params is not None:
    nnx.replace_by_pure_dict(state, params if isinstance(params, dict) else nnx.to_pure_dict(params))
  tx = make_tx(state)
  return graphdef, tx, sharding.place_state(step_lib.init_state(state, tx), mesh, model)


def unit_id_config(task: base.Task, config, pretrained, mode):
  """(config, pretrained config or None) for fine-tuning by unit identification: the
  pretrained architecture, init.pretrained and finetune.mode set (mode None: "unit_id")."""
  mode = "unit_id" if mode is None else mode
  if mode not in config_checks.FINETUNE_MODES:
    raise ValueError(f"finetune mode: expected one of {config_checks.FINETUNE_MODES}, got {mode!r}")
  config = ml_collections.ConfigDict(config.to_dict())
  if not pretrained:
    return config, None
  pre = task.pretrained_config(pretrained)
  config.model = checkpoint.with_defaults(pre.model, config.model, task.legacy_model)
  config.init.pretrained = os.path.abspath(os.path.expanduser(pretrained))
  config.finetune.mode = mode
  return config, pre


def unit_id_phases(config, pretrained: base.Pretrained | None) -> list[base.Phase]:
  """From scratch: one phase. From a pretrained model: only the new unit and session rows
  train ("unit_id": every step; "full": finetune.warmup_steps, then everything)."""
  if pretrained is None:
    return [base.Phase(base.FOREVER, None)]
  old = vocabulary_lib.Vocabulary.from_records(pretrained.records)
  warmup = config.train.steps if config.finetune.mode == "unit_id" else config.finetune.warmup_steps
  logging.info("unit identification for %d steps%s", warmup, ", then everything" if warmup < config.train.steps else "")
  return [base.Phase(warmup, new_rows_mask(old.n_unit_rows, old.n_session_rows)), base.Phase(base.FOREVER, None)]


def log_new_rows(config, pretrained: base.Trained, records: list[dict]) -> None:
  """One log line: the unit and session rows `records` add to the pretrained model's."""
  old, new = pretrained.vocab, vocabulary_lib.Vocabulary.from_records(records)
  logging.info(
    "from %s (step %d): %d new unit rows, %d new session rows",
    config.init.pretrained,
    pretrained.step,
    new.n_unit_rows - old.n_unit_rows,
    new.n_session_rows - old.n_session_rows,
  )


def new_rows_mask(n_unit_rows: int, n_session_rows: int):
  """row_mask(params, batch) of unit identification: only rows >= n_unit_rows of the
  unit table and >= n_session_rows of the session table (the rows unit_tables.grow or load appended)."""
  firsts = {paths[0]: n for paths, n in zip(unit_tables.embedding_paths().values(), (n_unit_rows, n_session_rows))}
  return lambda params, batch: rows.rows_from(params, firsts)
