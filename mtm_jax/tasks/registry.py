"""The model families by config.family, and what every program does with a workdir
whatever its family: load the model, score it."""

from __future__ import annotations

import json
import os
import re

import jax
import numpy as np

from mtm_jax import files
from mtm_jax.tasks import base, ndt1, poyo, poyo_mtm
from mtm_jax.training import checkpoint

TASKS = {task.family: task for task in (ndt1.NDT1Task(), poyo.POYOTask(), poyo_mtm.PoyoMtMTask())}


def get(family: str) -> base.Task:
  """The task of config.family `family`."""
  if family not in TASKS:
    raise ValueError(f"config.family: unknown {family!r}; expected one of {sorted(TASKS)}")
  return TASKS[family]


def of(config) -> base.Task:
  """The task of a config (configs saved before config.family existed are NDT1's)."""
  return get(config.get("family", "mtm"))


def of_workdir(workdir: str, step: int | None = None) -> base.Task:
  return of(checkpoint.load_metadata(workdir, step)[0])


def load_trained(workdir: str, step: int | None = None, mesh=None) -> base.Trained:
  """The model trained in `workdir`, any family (its checkpoint alone: no data set is read)."""
  return of_workdir(workdir, step).load(workdir, step, mesh)


def evaluate_workdir(
  workdir: str,
  split: str | None = None,
  step: int | None = None,
  sessions=None,
  decode: bool = True,
  data_dir: str | None = None,
) -> dict:
  """Scores the model in `workdir` on `split` (default: its config.eval.split) with its
  family's evaluation (task.evaluate; sessions: which of them, see there) and writes
  <workdir>/metrics.json (and the task's arrays file; process 0 of a multi-host job
  writes them, each whole: files.atomic_write). data_dir: where the data sets are now
  (default: the run's config.data.data_dir). Returns the results (on every process)."""
  trained = load_trained(workdir, step)
  checkpoint.relocate_data(trained.config, data_dir)
  checkpoint.check_writable(workdir, "metrics.json")
  task = of(trained.config)
  results, arrays = task.evaluate(trained, split or trained.config.eval.split, sessions, decode=decode)
  folder = os.path.abspath(os.path.expanduser(workdir))
  if jax.process_index() != 0:
    return results
  with files.atomic_write(os.path.join(folder, "metrics.json"), encoding="utf-8") as f:
    json.dump(results, f, indent=2)
  if task.arrays_file():
    with files.atomic_write(os.path.join(folder, task.arrays_file()), "wb") as f:
      np.savez(f, **arrays)
  return results


LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")  # a --compare label: a column name of the figure and table


def check_evaluation(workdir: str, step: int | None = None, plots: bool = False, compare=()) -> dict[str, str]:
  """The checks of an evaluation's flags, before any scoring (only checkpoint metadata is
  read): --plots of a family with a figure; every --compare entry label=workdir with a
  well-formed, new label and a trained workdir of the same family. Returns the models of
  the figure {label: workdir}: this one first, labelled by its folder's name."""
  task = of_workdir(workdir, step)
  if plots and task.plot_file() is None:
    raise ValueError(f"--plots: {task.name} models have no figure (NDT1 and POYO models do); leave --plots out")
  if compare and not plots:
    raise ValueError("--compare: the compared models are drawn in --plots' figure; add --plots")
  main = os.path.basename(os.path.normpath(os.path.abspath(os.path.expanduser(workdir))))
  workdirs = {main: workdir}
  for item in compare:
    label, sep, path = item.partition("=")
    if not sep or not LABEL.fullmatch(label) or not path:
      raise ValueError(f"--compare: expected label=workdir (label: letters, digits, _.+-), got {item!r}")
    if label in workdirs:
      raise ValueError(f"--compare: label {label!r} given twice (the scored model is {main!r})")
    other = of_workdir(path)
    if other.family != task.family:
      raise ValueError(f"--compare: {path} holds a {other.name} model; {workdir} holds a {task.name} model")
    workdirs[label] = path
  return workdirs
