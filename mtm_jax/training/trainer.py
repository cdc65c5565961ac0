"""train(task, config, workdir): the one training program of every model family.

In this order, for every family (its task, a Task of tasks/<family>.py, supplies what differs):
  config   the task checks it; the run keeps its own copy with absolute paths;
  workdir  held by this run alone (training.workdir: a second run there stops at once);
  mesh     from config.mesh; the batch must divide over its data axis;
  input    the task reads the sessions: their checkpoint records and the batches of
           this process (batch i feeds step i, so a resumed run reads what an
           uninterrupted one would);
  state    resume from the workdir's newest readable checkpoint (refused when its
           provenance differs: training.provenance); else, with
           config.init.pretrained, a fresh model with the pretrained weights merged in
           (task.merge_pretrained: new sessions' parts stay fresh); else fresh;
  steps    one jitted train step per phase (training.step.make_train_step with the
           phase's row mask, e.g. unit identification first, then everything);
  loop     run_steps: logging, validation, checkpoints, faults, SIGTERM and Ctrl-C.

The resolved config (every field, paths absolute) is written to <workdir>/config.json
when the loop starts; the programs' --print_config prints the same text. The run's
provenance (its config hash, the config as given and its pretrained checkpoint's identity:
training.provenance) goes to <workdir>/provenance.json then and into every checkpoint.
"""

from __future__ import annotations

import json
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from mtm_jax import files
from mtm_jax.datasets import pipeline
from mtm_jax.parallel import mesh as mesh_lib, sharding
from mtm_jax.training import checkpoint, provenance, saver as saver_lib, step as step_lib, workdir as workdir_lib
from mtm_jax.training.stopping import Interrupted, stop_flag, stop_signals, stopped


LOG_SECONDS = 30.0  # between log steps, a line at least this often
RESUME_ADVICE = (
  "A resume continues the same training: train this config in another workdir, or resume this run with the "
  "config it was started with (the \"request\" of its provenance.json)"
)


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


def prepare_run(config: ml_collections.ConfigDict, workdir: str) -> tuple[ml_collections.ConfigDict, str]:
  """The run's own copy of the config (saved with its checkpoints) with absolute data
  and pretrained paths, and the absolute workdir."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.data.data_dir = os.path.abspath(os.path.expanduser(config.data.data_dir))
  if config.init.pretrained:
    config.init.pretrained = os.path.abspath(os.path.expanduser(config.init.pretrained))
  return config, os.path.abspath(os.path.expanduser(workdir))


def resolved_config(task, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config a run of `task` trains with: checked by the task, with absolute data and
  pretrained paths (what <workdir>/config.json holds)."""
  task.check(config)
  return prepare_run(config, ".")[0]


def config_json(config: ml_collections.ConfigDict) -> str:
  """`config` as <workdir>/config.json and --print_config show it: JSON, every field."""
  return json.dumps(config.to_dict(), indent=2) + "\n"


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """<workdir>/config.json (process 0; written whole: files.atomic_write)."""
  if jax.process_index() == 0:
    with files.atomic_write(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
      f.write(config_json(config))


def train(task, config: ml_collections.ConfigDict, workdir: str, sessions=None) -> dict:
  """Trains (or resumes) `task`'s model in `workdir`; returns the last logged metrics.

  sessions: in-memory sessions to train on instead of reading config.data.datasets (for
  the families that take them, e.g. POYO's synthetic event sessions). The run holds the
  workdir (training.workdir.claimed) before touching it: files.InUseError when another
  run does."""
  task.check(config)
  config, workdir = prepare_run(config, workdir)
  with workdir_lib.claimed(workdir):
    return _train(task, config, workdir, sessions)


def _train(task, config: ml_collections.ConfigDict, workdir: str, sessions) -> dict:
  # ---- Config -------------------------------------------------------------------------------
  request = json.loads(provenance.canonical(config))  # as given, before the task resolves its data
  identity, pre = provenance.pretrained_of(config)
  pretrained = provenance.Pretrained(config.init.pretrained, pre.step, pre.config, pre.sessions) if pre else None

  # ---- Mesh ---------------------------------------------------------------------------------
  mesh = mesh_lib.from_config(config)
  task.check_mesh(config, mesh)

  # ---- Input --------------------------------------------------------------------------------
  inputs = task.input(config, mesh, pretrained, sessions)

  # ---- State: resume, else pretrained, else fresh ------------------------------------------
  graphdef, tx, state = task.create(config, inputs.records, mesh)
  logging.info("%s", task.describe(config, graphdef, state))
  mngr = checkpoint.manager(workdir, keep=config.train.keep_checkpoints)
  key = jax.random.key(config.seed, impl=config.train.get("prng_impl"))
  state, key, data_state, nonfinite = resume(
    mngr, workdir, state, config, inputs.records, key, task.legacy_model, (request, identity)
  )
  if int(state.step) == 0 and config.init.pretrained:  # not resumed (no checkpoint has step 0)
    pre = task.load(pretrained.path, pretrained.step, mesh)
    graphdef, tx, state = task.merge_pretrained(config, graphdef, tx, state, pre, inputs.records, mesh)

  # ---- Update steps -------------------------------------------------------------------------
  dtype = config.model.get("dtype", "float32")
  loss = task.loss(config, graphdef)
  phases = [
    (p.until, sharding.jit_train_step(step_lib.make_train_step(loss, tx, row_mask=p.row_mask), state, mesh, dtype))
    for p in task.phases(config, inputs, pretrained)
  ]

  def update(step, state, batch):
    train_step = next(fn for until, fn in phases if step < until)
    return train_step(state, mesh_lib.shard_batch(batch, mesh, config.data.batch_size), inputs.consts, key)

  validate = task.validator(config, graphdef, inputs, mesh)

  # ---- Loop ---------------------------------------------------------------------------------
  write_config(config, workdir)
  record = provenance.record(request, config, identity)
  if jax.process_index() == 0:
    provenance.write(workdir, record)
  writer = MetricWriter(workdir)
  try:
    with saver_lib.saving(mngr, config, inputs.records, key, record) as saver, jax.set_mesh(mesh):
      return run_steps(
        state,
        config.train,
        inputs.batches,
        update=update,
        summarise=task.summarise,
        learning_rate=task.learning_rate(config),
        evaluate=lambda state: validate(state.params),
        save=saver.save,
        check_saves=saver.failure,
        writer=writer,
        data_state=data_state,
        nonfinite_in_a_row=nonfinite,
      )
  finally:
    writer.close()


def run_steps(
  state,
  train_config,
  batches,
  *,
  update,
  summarise,
  learning_rate,
  evaluate,
  save,
  writer: MetricWriter,
  data_state: dict | None = None,
  nonfinite_in_a_row: int = 0,
  check_saves=lambda step, wait: None,
  log_seconds: float = LOG_SECONDS,
) -> dict:
  """The training loop every model family shares: from state.step to train_config.steps,
  batch i = batches[i] (so a resumed run reads what an uninterrupted one would).

  update(step, state, host batch) -> (state, metrics with a [] bool "finite"); every
  log_every steps the window's metrics are fetched and summarise(finite steps' metrics)
  -> scalars is logged with steps/s, the learning rate and the skipped steps; every
  eval_every steps evaluate(state) -> scalars; every checkpoint_every steps (and at the
  end) save(step, state, progress) with progress = dict(data_state=the grain iterator
  state, nonfinite_in_a_row=...). One line per log step (with the evaluation's scores
  when it evaluates too); one after the first step (`step 1/N compiled and ran in 12.3 s`:
  steps/s and ETAs count from its end, compilation left out); and between log steps one at
  least every log_seconds (step, loss so far, steps/s, ETA; logged only, not written).

  Faults: a step whose update was skipped as non-finite is logged with its number; after
  train_config.max_nonfinite_steps of them in a row the state (whose parameters are
  those of the last finite update) is saved and FloatingPointError raised. SIGTERM
  saves the current step and raises stopping.Preempted; Ctrl-C (SIGINT) the same with
  stopping.Interrupted (a second Ctrl-C raises KeyboardInterrupt at once).
  check_saves(step, wait) -> the exception of a background save that failed, or None (saver.Saver.failure; without
  `wait` it must not block): it is raised at the first step boundary after the failure.
  data_state (a restored iterator state) must be at state.step. Returns the last logged
  scalars."""
  first, total = int(state.step), train_config.steps
  limit = train_config.max_nonfinite_steps
  if data_state is not None and data_state.get("next_index") != first:
    raise ValueError(
      f"checkpoint of step {first}: its data iterator state {data_state} is not at batch {first}; "
      "the checkpoint is inconsistent"
    )
  if first >= total:
    logging.warning(
      "the run is at step %d and config.train.steps is %d: nothing to train (it is finished)",
      first,
      total,
    )
  data = pipeline.iterate_from(batches, first, data_state)
  bad, last = nonfinite_in_a_row, {}
  window, window_start, checked = [], first, 0
  start = time.time()
  clock = dict(tick=start, tick_step=first, line=start)  # steps/s and ETA count from (tick, tick_step)
  progress = lambda: dict(data_state=data.get_state(), nonfinite_in_a_row=bad)
  with stop_flag() as stop_requested:
    for step in range(first, total):
      state, metrics = update(step, state, next(data))
      window.append(metrics)
      done = step + 1
      if done == first + 1:  # the first step compiled: rates and ETAs are measured from its end
        jax.block_until_ready(metrics)  # waits; computes nothing
        now = time.time()
        clock.update(tick=now, tick_step=done, line=now)
        logging.info("step %d/%d compiled and ran in %.1f s", done, total, now - start)
      log_now = done % train_config.log_every == 0 or done == total
      save_now = done % train_config.checkpoint_every == 0 or done == total
      eval_now = done % train_config.eval_every == 0 or done == total
      sync = log_now or save_now or done % limit == 0  # steps where the host waits for the device anyway
      timed = not (log_now or eval_now) and time.time() - clock["line"] >= log_seconds
      stop, failed = stop_signals(stop_requested, check_saves, done, sync)
      if failed is not None:
        raise failed
      if sync or stop:  # count the non-finite steps so far
        for i, finite in enumerate(jax.device_get([m["finite"] for m in window[checked:]])):
          bad = 0 if finite else bad + 1
          if not finite:
            logging.warning(
              "step %d: non-finite loss or gradient; update skipped (%d in a row)", window_start + checked + i + 1, bad
            )
        checked = len(window)
        if bad >= limit:
          save(done, state, progress())
          raise FloatingPointError(
            f"step {done}: {bad} steps in a row had a non-finite loss or gradient (config.train."
            f"max_nonfinite_steps = {limit}); their updates were skipped, and the state of the last finite update "
            f"(step {done - bad}) is saved as the checkpoint of step {done}. Lower the learning rate or check the data."
          )
      line = []
      if log_now or timed:  # timed: a line every log_seconds between log steps (fetches; no collective)
        fetched = jax.device_get(window)
        good = [m for m in fetched if m["finite"]]
        scalars = {k: float(v) for k, v in summarise(good).items()} if good else dict(loss=float("nan"))
        rate = _rate(clock, done)  # None right after the first step (compiling)
        line.append(f"step {done}/{total}  loss {scalars['loss']:.4f}")
        if rate is not None:
          line.append(f"  {rate:.2f} steps/s  ETA {(total - done) / max(rate, 1e-9):.0f}s")
      if log_now:
        last = scalars
        last.update(
          steps_per_second=rate if rate is not None else (done - first) / max(time.time() - start, 1e-9),
          learning_rate=float(learning_rate(done)),
          skipped_steps=float(len(fetched) - len(good)),
        )
        writer.write(done, last)
      if eval_now:
        scores = {k: float(v) for k, v in evaluate(state).items()}
        if scores:
          line.append(("" if log_now else f"step {done}") + "".join(f"  {k} {v:.4f}" for k, v in scores.items()))
          writer.write(done, scores)
          last.update(scores)
      if line:
        logging.info("%s", "".join(line))
        now = time.time()
        clock.update(tick=now, tick_step=done, line=now)
      if log_now:
        window, window_start, checked = [], done, 0
      if save_now or stop:
        save(done, state, progress())
      if stop:
        failed = check_saves(done, True)
        if failed is not None:
          raise failed
        error = stopped(stop_requested, done)
        if isinstance(error, Interrupted):
          logging.warning("interrupted (Ctrl-C): saved the checkpoint of step %d; re-run to resume", done)
        else:
          logging.warning("SIGTERM: saved the checkpoint of step %d and stopping; re-run to resume", done)
        raise error
  return last


def _rate(clock: dict, done: int) -> float | None:
  """Steps/s since the clock's tick (the end of the first step, or the last line), None when
  no step ran since."""
  steps = done - clock["tick_step"]
  return steps / max(time.time() - clock["tick"], 1e-9) if steps > 0 else None


def resume(
  mngr,
  workdir: str,
  state,
  config: ml_collections.ConfigDict,
  records: list[dict],
  key: jax.Array,
  legacy_model=None,
  origin: tuple[dict, dict | None] | None = None,
):
  """Continues the run in `workdir` if it has a checkpoint: (state, key, data_state,
  nonfinite_in_a_row) of its newest readable checkpoint, checked against this run's
  model config and sessions, and (origin: this run's config as given and its pretrained
  checkpoint's identity) against the checkpoint's provenance first (a clear error
  otherwise: provenance.check); damaged checkpoints are reported and moved aside. Without
  a checkpoint: (state, key, None, 0) as given. legacy_model: the task's
  Task.legacy_model (model fields older checkpoints lack)."""
  if not mngr.all_steps():
    checkpoint.report_half_written(mngr, quarantine=True)
    return state, key, None, 0
  saved = checkpoint.read_metadata(workdir)
  checkpoint.check_compatible(saved.config, saved.sessions, config, records, workdir, legacy=legacy_model)
  if saved.provenance is None:
    logging.warning(
      "%s: its checkpoint of step %d records no provenance (written before runs recorded it, or imported): "
      "only its family, model and sessions are checked against this config",
      workdir,
      saved.step,
    )
  elif origin is not None:
    provenance.check(saved.provenance, *origin, workdir, RESUME_ADVICE)
  restored = checkpoint.restore(mngr, state, quarantine=True)
  progress = restored.progress or {}
  if "rng" in progress:
    saved_key = checkpoint.key_from_record(progress["rng"])
    if not np.array_equal(jax.random.key_data(saved_key), jax.random.key_data(key)):
      logging.warning("the checkpoint's PRNG key differs from config.seed's; continuing with the checkpoint's")
    key = saved_key
  logging.info("resumed from step %d", restored.step)
  return restored.state, key, restored.data_state, int(progress.get("nonfinite_in_a_row", 0))
