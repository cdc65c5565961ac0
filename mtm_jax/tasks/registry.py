"""The model families by config.family, and what every program does with a workdir
whatever its family: load the model, score it."""

from __future__ import annotations

import json
import os
import re

import jax
import numpy as np

from absl import logging

from mtm_jax import files
from mtm_jax.evaluation import report
from mtm_jax.tasks import base, ndt1, neds, poyo, poyo_mtm
from mtm_jax.training import checkpoint, config_checks, provenance

TASKS = {task.family: task for task in (ndt1.NDT1Task(), poyo.POYOTask(), poyo_mtm.PoyoMtMTask(), neds.NEDSTask())}


def get(family: str) -> base.Task:
  """The task of config.family `family` (older ids, e.g. NDT1's "mtm", are read as today's)."""
  family = config_checks.LEGACY_FAMILIES.get(family, family)
  if family not in TASKS:
    raise ValueError(f"config.family: unknown {family!r}; expected one of {sorted(TASKS)}")
  return TASKS[family]


def of(config) -> base.Task:
  """The task of a config (a saved config with family "mtm", NDT1's id before "ndt1", or
  without config.family, written before it existed, is NDT1's: config_checks.family_of)."""
  return get(config_checks.family_of(config))


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
  writes them, each whole: files.atomic_write), keeping the earlier scores of the same
  step and split that this run skipped as decoding turned off (with_earlier). data_dir:
  where the data sets are now (default: the run's config.data.data_dir). The results
  hold the config hash of the checkpoint scored ("config_hash": provenance.run_hash) beside
  its "step". Returns the results (on every process)."""
  trained = load_trained(workdir, step)
  config_hash = provenance.run_hash(workdir, trained.step)
  checkpoint.relocate_data(trained.config, data_dir)
  checkpoint.check_writable(workdir, "metrics.json")
  task = of(trained.config)
  results, arrays = task.evaluate(trained, split or trained.config.eval.split, sessions, decode=decode)
  results["config_hash"] = config_hash
  folder = os.path.abspath(os.path.expanduser(workdir))
  results = with_earlier(os.path.join(folder, "metrics.json"), results)
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


def compared_scores(workdirs: dict[str, str], split: str) -> dict[str, dict]:
  """{label: metrics.json} of the --compare models scored on `split`; one warning line
  for each without such a file (it is left out of the table)."""
  out = {}
  for label, workdir in workdirs.items():
    path = os.path.join(os.path.expanduser(workdir), "metrics.json")
    try:
      with open(path, encoding="utf-8") as f:
        scores = json.load(f)
    except (OSError, ValueError):
      scores = {}
    if isinstance(scores, dict) and scores.get("split") == split:
      out[label] = scores
    else:
      logging.warning(
        "--compare %s: %s holds no scores of the %s split, so it is not in the table "
        "(python -m experiments.evaluate --workdir=%s adds them)",
        label,
        workdir,
        split,
        workdir,
      )
  return out


def with_earlier(path: str, results: dict) -> dict:
  """`results` with the scores of the metrics.json at `path` (same step, config hash, split and
  sessions) of the metrics they skip only because decoding was off (--nodecoding; NDT1
  and spike-token MtM): those are kept, with their folds and skip reasons, and one line
  names them."""
  try:
    with open(path, encoding="utf-8") as f:
      old = json.load(f)
  except (OSError, ValueError):
    return results
  same = ("step", "config_hash", "split", "session_id")
  if not isinstance(old, dict) or any(old.get(k) != results.get(k) for k in same):
    return results
  if set(old.get("sessions", {})) != set(results.get("sessions", {})):
    return results
  merged, kept = _merged(old, results)
  if "sessions" in results:
    merged["sessions"] = dict(results["sessions"])
  for sid, r in results.get("sessions", {}).items():
    merged["sessions"][sid], more = _merged(old["sessions"][sid], r)
    kept += [f"{sid}/{k}" for k in more]
  if kept:
    logging.info(
      "kept %d earlier scores of %s (step %s, %s split) that this run did not compute: %s",
      len(kept),
      path,
      results.get("step"),
      results.get("split"),
      ", ".join(kept),
    )
  return merged


def _merged(old: dict, new: dict) -> tuple[dict, list[str]]:
  """new, with old's scores (and folds, or skip reasons) of the metrics new skipped only
  because decoding was off."""
  skipped, folds = dict(new.get("skipped", {})), dict(new.get("decoding_folds", {}))
  merged, kept = dict(new), []
  for key in [k for k, why in skipped.items() if why == report.DECODING_OFF]:
    if isinstance(old.get(key), float):
      merged[key] = old[key]
      del skipped[key]
      kept.append(key)
      if key in old.get("decoding_folds", {}):
        folds[key] = old["decoding_folds"][key]
    elif old.get("skipped", {}).get(key, report.DECODING_OFF) != report.DECODING_OFF:
      skipped[key] = old["skipped"][key]  # the earlier run's reason stands
  if "skipped" in new:
    merged["skipped"] = skipped
  if folds or "decoding_folds" in new:
    merged["decoding_folds"] = folds
  return merged, kept
