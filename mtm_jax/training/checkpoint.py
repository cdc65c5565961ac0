"""Orbax checkpoints of {train state, config, sessions, progress, data, provenance}: save, resume and
restore for analysis. The config and the sessions (name, id and neurons of each session
row) travel with every checkpoint, so a model is loaded by its path alone.

A checkpoint holds everything a resumed run needs to continue bit for bit:
- state: parameters, optimiser state and step (TrainState, Orbax StandardSave);
- progress: the run's PRNG key (implementation and key data) and the number of
  non-finite steps in a row at that step (JSON);
- data: the grain iterator state of the training batches (JSON, as grain writes it);
- provenance: the run's config hash, the config it was given and its pretrained
  checkpoint's identity (JSON, training.provenance). Checkpoints written before it was
  saved (or imported ones) lack it, and restore as before.

Damaged checkpoints (a truncated array file, missing metadata, unreadable JSON, an
interrupted save's Orbax tmp directory) are reported with a warning naming the step and
directory, and the newest readable one is used instead. When training resumes, damaged
ones are moved to <workdir>/checkpoints_damaged, so that retention (max_to_keep), which
deletes the oldest steps first, never deletes the good checkpoint in favour of a damaged
newer one.

Checkpoints are written in the background (Orbax async): training.saver watches them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import NamedTuple

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from mtm_jax.parallel import sharding
from mtm_jax.training import config_checks

ITEMS = ("state", "config", "sessions", "progress", "data", "provenance")
OPTIONAL = ("progress", "data", "provenance")  # items older checkpoints may lack
DAMAGED_DIR = "checkpoints_damaged"
TMP_MARK = ".orbax-checkpoint-tmp"


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(os.path.expanduser(workdir)), "checkpoints")


def manager(workdir: str, keep: int = 3, create: bool = True) -> ocp.CheckpointManager:
  """CheckpointManager in <workdir>/checkpoints (absolute), keeping the newest `keep`.

  Orbax writes a step into a tmp directory and renames it only when every item is
  written, and deletes old steps only after that, so retention never removes the newest
  complete checkpoint in favour of a half-written one."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create, enable_async_checkpointing=True)
  handlers = {
    name: ocp.StandardCheckpointHandler() if name == "state" else ocp.JsonCheckpointHandler() for name in ITEMS
  }
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_handlers=handlers)


def key_record(key: jax.Array) -> dict:
  """A typed PRNG key as JSON: its implementation and key data."""
  return dict(impl=str(jax.random.key_impl(key)), data=np.asarray(jax.random.key_data(key)).ravel().tolist())


def key_from_record(record: dict) -> jax.Array:
  return jax.random.wrap_key_data(np.asarray(record["data"], np.uint32), impl=record["impl"])


def save(
  mngr: ocp.CheckpointManager,
  step: int,
  state,
  config: ml_collections.ConfigDict,
  sessions: list[dict],
  *,
  key: jax.Array,
  data_state: dict | None,
  nonfinite_in_a_row: int = 0,
  provenance: dict | None = None,
) -> None:
  """Saves (asynchronously) the checkpoint of `step`.

  sessions: one JSON-able dict per session row (the task's records); key: the run's
  PRNG key (step keys are fold_in(key, step)); data_state: the grain iterator state of
  the training batches after `step` batches; provenance: training.provenance.record."""
  progress = dict(step=int(step), rng=key_record(key), nonfinite_in_a_row=int(nonfinite_in_a_row))
  items = dict(
    state=ocp.args.StandardSave(state),
    config=ocp.args.JsonSave(config.to_dict()),
    sessions=ocp.args.JsonSave(sessions),
    progress=ocp.args.JsonSave(progress),
  )
  if data_state is not None:
    items["data"] = ocp.args.JsonSave(data_state)
  if provenance is not None:
    items["provenance"] = ocp.args.JsonSave(provenance)
  mngr.save(step, args=ocp.args.Composite(**items), force=True)


def abstract(tree):
  """ShapeDtypeStructs with the (concrete) shardings of `tree`, as a restore target."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


@dataclasses.dataclass
class Restored:
  """One checkpoint, read in full."""

  step: int
  state: object  # laid out like the restore target
  config: ml_collections.ConfigDict
  sessions: list[dict]
  progress: dict | None  # None in checkpoints written before it was saved
  data_state: dict | None
  provenance: dict | None = None  # None in checkpoints written before it was saved


def first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0][:300] if text else ''}"


def _quarantine(directory: str, name: str) -> str:
  """Moves <checkpoints>/<name> to <workdir>/checkpoints_damaged/<name>.<time> (kept for
  inspection, never deleted); returns the new path."""
  target_dir = os.path.join(os.path.dirname(directory), DAMAGED_DIR)
  os.makedirs(target_dir, exist_ok=True)
  target = os.path.join(target_dir, f"{name}.{time.strftime('%Y%m%dT%H%M%S')}")
  shutil.move(os.path.join(directory, name), target)
  return target


def report_half_written(mngr: ocp.CheckpointManager, quarantine: bool) -> None:
  """Warns about (and when `quarantine`, moves aside) interrupted saves' tmp dirs."""
  directory = str(mngr.directory)
  if not os.path.isdir(directory):
    return
  for name in sorted(os.listdir(directory)):
    if TMP_MARK in name:
      where = _quarantine(directory, name) if quarantine else os.path.join(directory, name)
      logging.warning(
        "checkpoint %s in %s is half-written (an interrupted save) and is ignored%s",
        name.split(".")[0],
        directory,
        f"; moved to {where}" if quarantine else "",
      )


def _items_present(mngr: ocp.CheckpointManager, step: int) -> set[str]:
  path = os.path.join(str(mngr.directory), str(step))
  return {name for name in ITEMS if os.path.isdir(os.path.join(path, name))}


def _layout(tree) -> set[str]:
  """The leaf paths of a (train or optimiser) state, or of a checkpoint's metadata tree of one."""
  return {sharding.path_name(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)}


def _saved_opt_state(mngr: ocp.CheckpointManager, step: int):
  """The metadata tree of the optimiser state saved at `step` (None when it does not read:
  restoring then reports the checkpoint as damaged)."""
  try:
    return mngr.item_metadata(step)["state"].tree["opt_state"]
  except Exception:  # pylint: disable=broad-except
    return None


def _state_target(mngr: ocp.CheckpointManager, step: int, target, params_only: bool):
  """What to restore the state of `step` as: abstract(target). A saved optimiser state
  laid out otherwise (an older mtm_jax's, e.g. AdamW without per-row step counts) is read
  as the checkpoint laid it out (replicated) with `params_only`, else a ValueError
  naming the workdir."""
  saved = _saved_opt_state(mngr, step)
  if saved is None or _layout(saved) == _layout(target.opt_state):
    return abstract(target)
  if not params_only:
    raise ValueError(
      f"{os.path.dirname(str(mngr.directory))}: its checkpoint of step {step} was made by an older version of "
      "mtm_jax (another optimiser state layout: AdamW now keeps a step count per row), so the run cannot resume; "
      "train in a new workdir (the model itself still loads, e.g. as a pretrained model or to evaluate)"
    )
  replicated = target.step.sharding
  as_saved = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=replicated), saved)
  return dataclasses.replace(abstract(dataclasses.replace(target, opt_state=None)), opt_state=as_saved)


def restore(
  mngr: ocp.CheckpointManager,
  target,
  step: int | None = None,
  *,
  quarantine: bool = False,
  params_only: bool = False,
) -> Restored:
  """The newest readable checkpoint (or the one of `step`), state laid out like `target`.

  Every item is read; a checkpoint that fails to read is damaged: a warning names its
  step and directory and the previous one is tried (with `quarantine`, for a training
  run that will write new checkpoints, it is also moved to <workdir>/checkpoints_damaged).
  An explicit `step` that is damaged is an error. Raises FileNotFoundError when no
  readable checkpoint is left. params_only: only the parameters matter (the restored
  opt_state is laid out as saved), so checkpoints of older optimiser layouts load too; without it such a checkpoint is a ValueError (_state_target)."""
  directory = str(mngr.directory)
  report_half_written(mngr, quarantine)
  steps = sorted(mngr.all_steps(), reverse=True)
  if step is not None:
    if step not in steps:
      raise FileNotFoundError(f"{directory}: no checkpoint at step {step}; it has {sorted(steps)}")
    steps = [step]
  damaged = []
  for s in steps:
    present = _items_present(mngr, s)
    args = dict(
      state=ocp.args.StandardRestore(_state_target(mngr, s, target, params_only)),
      config=ocp.args.JsonRestore(),
      sessions=ocp.args.JsonRestore(),
    )
    args.update({name: ocp.args.JsonRestore() for name in OPTIONAL if name in present})
    try:
      if not {"state", "config", "sessions"} <= present:
        raise FileNotFoundError(f"items {sorted({'state', 'config', 'sessions'} - present)} are missing")
      out = mngr.restore(s, args=ocp.args.Composite(**args))
    except Exception as error:  # pylint: disable=broad-except  # any read failure = damaged
      if step is not None:
        raise ValueError(f"{directory}: checkpoint of step {step} is damaged ({first_line(error)})") from error
      moved = _quarantine(directory, str(s)) if quarantine else None
      logging.warning(
        "checkpoint of step %d in %s is damaged and skipped (%s)%s",
        s,
        directory,
        first_line(error),
        f"; moved to {moved}" if moved else "",
      )
      damaged.append(s)
      continue
    if damaged and quarantine:
      mngr.reload()
    return Restored(
      s,
      out["state"],
      ml_collections.ConfigDict(out["config"]),
      list(out["sessions"]),
      dict(out["progress"]) if "progress" in present else None,
      dict(out["data"]) if "data" in present else None,
      dict(out["provenance"]) if "provenance" in present else None,
    )
  if quarantine:
    mngr.reload()
  raise FileNotFoundError(
    f"{directory}: holds no readable checkpoint" + (f" (damaged: steps {damaged})" if damaged else "")
  )


def latest_step(workdir: str) -> int | None:
  """The newest finished checkpoint's step in `workdir` (None if there is none)."""
  if not os.path.isdir(checkpoint_dir(workdir)):
    return None
  mngr = manager(workdir, create=False)
  step = mngr.latest_step()
  mngr.close()
  return step


class Metadata(NamedTuple):
  """The JSON items of one checkpoint: what a run was trained with."""

  step: int
  config: ml_collections.ConfigDict
  sessions: list[dict]
  provenance: dict | None  # None in checkpoints written before it was saved (training.provenance)


def load_metadata(workdir: str, step: int | None = None) -> tuple[ml_collections.ConfigDict, list[dict]]:
  """The config a run in `workdir` was trained with, and its session records: those of
  `step`, or of the newest checkpoint whose metadata reads (damaged ones are reported)."""
  metadata = read_metadata(workdir, step)
  return metadata.config, metadata.sessions


def read_metadata(workdir: str, step: int | None = None) -> Metadata:
  """load_metadata's checkpoint, with its step and provenance."""
  path = checkpoint_dir(workdir)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{workdir}: no checkpoints directory ({path}); was a model trained there?")
  mngr = manager(workdir, create=False)
  try:
    steps = sorted(mngr.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f"{path}: holds no finished checkpoint")
    if step is not None:
      if step not in steps:
        raise FileNotFoundError(f"{path}: no checkpoint at step {step}; it has {sorted(steps)}")
      steps = [step]
    for s in steps:
      names = ("config", "sessions") + (("provenance",) if "provenance" in _items_present(mngr, s) else ())
      try:
        restored = mngr.restore(s, args=ocp.args.Composite(**{name: ocp.args.JsonRestore() for name in names}))
        provenance = dict(restored["provenance"]) if "provenance" in names else None
        return Metadata(s, ml_collections.ConfigDict(restored["config"]), list(restored["sessions"]), provenance)
      except Exception as error:  # pylint: disable=broad-except
        if step is not None:
          raise ValueError(
            f"{path}: the config or sessions of step {step} do not read ({first_line(error)})"
          ) from error
        logging.warning(
          "checkpoint of step %d in %s: config or sessions do not read (%s); trying the previous one",
          s,
          path,
          first_line(error),
        )
    raise FileNotFoundError(
      f"{path}: no checkpoint with readable config and sessions (steps {steps}; each "
      f"failure is logged above). A run written by an older mtm_jax may not read: train in a "
      f"new workdir (this one is left as it is)"
    )
  finally:
    mngr.close()


def check_writable(workdir: str, what: str) -> None:
  """Raises PermissionError naming `workdir` when `what` (e.g. "metrics.json") cannot be
  written there: before the work that produces it, not after."""
  if not os.access(os.path.abspath(os.path.expanduser(workdir)), os.W_OK):
    raise PermissionError(
      f"{workdir}: not writable, so {what} cannot be written there (a read-only copy of the run? "
      "copy the workdir somewhere writable)"
    )


def relocate_data(config: ml_collections.ConfigDict, data_dir: str | None) -> None:
  """Points a restored run's `config.data.data_dir` at `data_dir` (its data sets moved,
  or the workdir was copied to another machine); None keeps the recorded one."""
  if data_dir is not None:
    with config.unlocked():
      config.data.data_dir = os.path.abspath(os.path.expanduser(data_dir))


def with_defaults(
  saved: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict, legacy: dict | None = None
) -> ml_collections.ConfigDict:
  """A config section as a checkpoint saved it, plus the fields of `defaults` it lacks
  (options added to the library after the checkpoint was written keep their defaults,
  which leave the model as it was). legacy: {field: value} of options added later whose
  default changes the model; a saved section without one had `value` (e.g. {"unit_readout": False})."""
  merged = defaults.to_dict()
  merged.update(legacy or {})
  merged.update(saved.to_dict())
  return ml_collections.ConfigDict(merged)


def check_compatible(
  saved: ml_collections.ConfigDict,
  saved_sessions: list[dict],
  config: ml_collections.ConfigDict,
  sessions: list[dict],
  where: str,
  legacy: dict | None = None,
) -> None:
  """Raises ValueError (before any training) when the checkpoint in `where` is from
  another model (config.family, config.model) or other sessions (names, ids, neurons).
  legacy: the model fields a saved config without them had (with_defaults)."""
  for field in ("family", "model"):  # the family with older ids read as today's (config_checks.family_of)
    a, b = (config_checks.family_of(x) if field == "family" else x.get(field) for x in (saved, config))
    if field == "model" and legacy:  # a field either side lacks had its legacy value
      a, b = (ml_collections.ConfigDict({**legacy, **x.to_dict()}) if x is not None else x for x in (a, b))
    # As JSON holds them (tuples come back as lists).
    a = json.loads(json.dumps(a.to_dict() if isinstance(a, ml_collections.ConfigDict) else a))
    b = json.loads(json.dumps(b.to_dict() if isinstance(b, ml_collections.ConfigDict) else b))
    if a != b:
      if isinstance(a, dict) and isinstance(b, dict):
        diff = [
          f"config.{field}.{k}: checkpoint {a.get(k)!r}, this config {b.get(k)!r}"
          for k in sorted(set(a) | set(b))
          if a.get(k) != b.get(k)
        ]
      else:
        diff = [f"config.{field}: checkpoint {a!r}, this config {b!r}"]
      raise ValueError(
        f"{where}: holds a run of another model ({'; '.join(diff)}); use another workdir or the checkpoint's config"
      )
  if len(saved_sessions) != len(sessions) or any(
    a.get("name") != b.get("name") for a, b in zip(saved_sessions, sessions)
  ):
    raise ValueError(
      f"{where}: holds a run on sessions {[r.get('name') for r in saved_sessions]}, not "
      f"{[r.get('name') for r in sessions]}; use another workdir"
    )
  for a, b in zip(saved_sessions, sessions):
    for k in sorted(set(a) | set(b)):
      if a.get(k) != b.get(k):
        size = lambda v: f"{len(v)} entries" if isinstance(v, list) else repr(v)
        raise ValueError(
          f"{where}: session {a.get('name')!r} has {k} = {size(a.get(k))} in the checkpoint but "
          f"{size(b.get(k))} in the data set (neurons or units differ: was the data set rebuilt?)"
        )
