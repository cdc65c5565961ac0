"""Local scoring of a BrainWideBench submission folder, as the scorer ibl-bwb-eval 0.1.0 scores it.

Ground truth: {gt_dir}/{task_id}/{recording_id}/ground_truth.safetensors (TS1: values,
trial_id, optional mask; TS2: targets, window_timestamps, unit_ids) and
{gt_dir}/ts3-<task>/ground_truth.safetensors (targets, entity_ids; metadata label_names);
write them with write_ground_truth_ts1/ts2/ts3. Predictions are aligned to it as the scorer
does: TS1 by trial_id, TS2 by exact float64 window starts, TS3 by entity id.

Unlike the scorer, which silently scores whatever subset matches (and skips files without
ground truth), every mismatch is REPORTED: with strict=True (the default) a ScoreMismatch
error is raised listing them all; with strict=False each is returned as a warning string and
the matching subset is scored as the scorer would. Reported: duplicate alignment keys,
predictions with no ground truth, ground truth with no prediction, a missing ground-truth file,
TS2 unit ids differing from the ground truth's (the scorer ignores them; the upload check does
not), and TS3 units predicted but not in the ground truth (a warning even when strict: the
upload check accepts a superset).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file

from mtm_jax.bwb import metrics, tasks
from mtm_jax.bwb.submission import write_file


class ScoreMismatch(ValueError):
  """Predictions and ground truth do not match one to one (strict scoring)."""


@dataclasses.dataclass
class Scores:
  """raw: {(label, task, recording_id, seed) (TS1, TS2) or (label, task, seed) (TS3): {metric: value}}
  as the scorer's score_dir; warnings: each mismatch found (strict=False) or tolerated."""

  raw: dict
  warnings: list

  def aggregate(self) -> dict:
    """{(label, task): {metric: (mean, sem, number of seeds)}}: metrics.aggregate(raw)."""
    return metrics.aggregate(self.raw)


def _gt_path(gt_dir, *parts) -> str:
  return os.path.join(gt_dir, *parts, "ground_truth.safetensors")


def write_ground_truth_ts1(gt_dir, task, recording_id, values, trial_id, mask=None) -> str:
  """Writes {gt_dir}/ts1-<task>/<recording_id>/ground_truth.safetensors; returns its path.

  values: class tasks (N,) class indices (stored (N, 1) int64); per-bin tasks (N, 50) or
  (N, 50, 1) (stored (N, 50, 1) float32). trial_id: (N,) unique ints. mask: (N, 50) bool,
  required for the paw tasks and refused for the others."""
  spec = tasks.ts1_spec(task)
  trial_id = np.asarray(trial_id)
  n = trial_id.shape[0]
  if trial_id.ndim != 1 or not np.issubdtype(trial_id.dtype, np.integer) or len(np.unique(trial_id)) != n:
    raise ValueError(
      f"ts1-{spec.task} ground truth trial_id: expected (N,) unique integers; got {trial_id.dtype} {trial_id.shape}"
    )
  if spec.classification:
    values = np.asarray(values).reshape(-1)
    if values.shape != (n,) or not np.all((values >= 0) & (values < spec.dim) & (values == np.round(values))):
      raise ValueError(f"ts1-{spec.task} ground truth values: expected ({n},) class indices in [0, {spec.dim})")
    values = values.astype(np.int64)[:, None]
  else:
    values = np.asarray(values, np.float32).reshape(n, -1)[:, :, None]
    if values.shape != (n, tasks.TIMESTEPS, 1):
      raise ValueError(
        f"ts1-{spec.task} ground truth values: expected ({n}, {tasks.TIMESTEPS}); got {values.shape[:2]}"
      )
  tensors = {"values": values, "trial_id": trial_id.astype(np.int64)}
  if spec.masked != (mask is not None):
    raise ValueError(f"ts1-{spec.task} ground truth: a mask is {'required' if spec.masked else 'not expected'}")
  if mask is not None:
    mask = np.asarray(mask)
    if mask.dtype != np.bool_ or mask.shape != (n, tasks.TIMESTEPS):
      raise ValueError(
        f"ts1-{spec.task} ground truth mask: expected ({n}, {tasks.TIMESTEPS}) bool; got {mask.dtype} {mask.shape}"
      )
    tensors["mask"] = mask
  return write_file(_gt_path(gt_dir, f"ts1-{spec.task}", recording_id), tensors, {"task": f"ts1-{spec.task}"})


def write_ground_truth_ts2(gt_dir, task, recording_id, targets, window_timestamps, unit_ids) -> str:
  """Writes {gt_dir}/ts2-<task>/<recording_id>/ground_truth.safetensors; returns its path.

  targets: (W, T, U) counts (stored float32); window_timestamps: (W,) unique float64 starts;
  unit_ids: U ids `<session id>/<unit uuid>`."""
  if task not in tasks.TS2_TASKS:
    raise ValueError(f"TS2 task {task!r}: expected one of {tasks.TS2_TASKS}")
  targets = np.asarray(targets, np.float32)
  starts = np.asarray(window_timestamps)
  if targets.ndim != 3 or starts.dtype != np.float64 or starts.shape != targets.shape[:1]:
    raise ValueError(
      f"ts2-{task} ground truth: expected targets (W, T, U) and (W,) float64 window starts; "
      f"got {targets.shape}, {starts.dtype} {starts.shape}"
    )
  if len(np.unique(starts)) != len(starts) or (targets < 0).any():
    raise ValueError(f"ts2-{task} ground truth: window starts must be unique and counts non-negative")
  ids = tasks.encode_ids(unit_ids)
  if ids.shape[0] != targets.shape[2]:
    raise ValueError(f"ts2-{task} ground truth: {ids.shape[0]} unit ids for {targets.shape[2]} units")
  tensors = {"targets": targets, "window_timestamps": starts, "unit_ids": ids}
  return write_file(_gt_path(gt_dir, f"ts2-{task}", recording_id), tensors, {"task": f"ts2-{task}"})


def write_ground_truth_ts3(gt_dir, entity_ids, targets, task="unit_cosmos") -> str:
  """Writes {gt_dir}/ts3-<task>/ground_truth.safetensors; returns its path.

  entity_ids: N unit ids; targets: (N,) indices into COSMOS_LABELS."""
  targets = np.asarray(targets).reshape(-1)
  n = len(tasks.COSMOS_LABELS)
  if not np.all((targets >= 0) & (targets < n)):
    raise ValueError(f"ts3-{task} ground truth targets: expected indices in [0, {n})")
  ids = tasks.encode_ids(entity_ids)
  if ids.shape[0] != targets.shape[0] or len(set(tasks.decode_ids(ids))) != ids.shape[0]:
    raise ValueError(f"ts3-{task} ground truth: expected one unique entity id per target")
  tensors = {"targets": targets.astype(np.int64), "entity_ids": ids}
  return write_file(
    _gt_path(gt_dir, f"ts3-{task}"), tensors, {"task": f"ts3-{task}", "label_names": ",".join(tasks.COSMOS_LABELS)}
  )


def _align(pred_keys, gt_keys, what: str, problems: list):
  """Indices (pred_idx, gt_idx) of the common keys, sorted by key (np.intersect1d, as the scorer);
  each mismatch appended to problems."""
  for name, keys in (("predictions", pred_keys), ("ground truth", gt_keys)):
    if len(np.unique(keys)) != len(keys):
      problems.append(f"duplicate {what} in the {name} (the scorer keeps one of each)")
  _, pred_idx, gt_idx = np.intersect1d(pred_keys, gt_keys, return_indices=True)
  extra, missing = len(np.unique(pred_keys)) - len(pred_idx), len(np.unique(gt_keys)) - len(gt_idx)
  if extra:
    problems.append(f"{extra} of {len(pred_keys)} predicted {what} are not in the ground truth (not scored)")
  if missing:
    problems.append(f"{missing} of {len(gt_keys)} ground-truth {what} have no prediction (not scored)")
  return pred_idx, gt_idx


def score_ts1(task_id: str, pred: dict, gt: dict, problems: list) -> dict:
  """The scorer's TS1 metrics of one file: class tasks bacc, f1; per-bin r2, mae (licking_rate:
  poisson_d2, mae). pred, gt: the files' tensors. (The scorer also reports ap and pearson.)"""
  spec = tasks.ts1_spec(task_id)
  pred_idx, gt_idx = _align(pred["trial_id"], gt["trial_id"], "trial ids", problems)
  if len(pred_idx) == 0:
    raise ScoreMismatch(f"{task_id}: no trial id in common with the ground truth")
  predictions, values = pred["predictions"][pred_idx], gt["values"][gt_idx]
  if spec.classification:
    labels = values.reshape(len(gt_idx), -1)[:, 0]
    return {
      "bacc": metrics.balanced_accuracy(predictions, labels, spec.dim),
      "f1": metrics.macro_f1(predictions, labels, spec.dim),
    }
  mask = None
  if spec.masked:
    if "mask" not in gt:
      raise ScoreMismatch(f"{task_id}: the ground truth has no 'mask' (pose confidence); the scorer refuses it too")
    mask = gt["mask"][gt_idx].reshape(-1)
  if spec.primary == "poisson_d2":
    return {
      "poisson_d2": metrics.poisson_d2(predictions.reshape(-1, 1), values.reshape(-1, 1)),
      "mae": metrics.mean_absolute_error(predictions, values),
    }
  return {"r2": metrics.r2(predictions, values, mask), "mae": metrics.mean_absolute_error(predictions, values, mask)}


def score_ts2(task_id: str, pred: dict, gt: dict, problems: list) -> dict:
  """poisson_d2 and bps of one TS2 file (windows x bins flattened, one row per unit)."""
  if pred["window_timestamps"].dtype != np.float64:
    problems.append(f"window_timestamps are {pred['window_timestamps'].dtype}, not float64: starts may not match")
  pred_idx, gt_idx = _align(pred["window_timestamps"], gt["window_timestamps"], "window starts", problems)
  if len(pred_idx) == 0:
    raise ScoreMismatch(f"{task_id}: no window start in common with the ground truth")
  if "unit_ids" in gt and tasks.decode_ids(pred["unit_ids"]) != tasks.decode_ids(gt["unit_ids"]):
    problems.append("unit_ids differ from the ground truth's (or their order does)")
  predictions, targets = pred["predictions"][pred_idx], gt["targets"][gt_idx]
  if predictions.shape != targets.shape:
    raise ScoreMismatch(
      f"{task_id}: predictions {predictions.shape} and ground truth {targets.shape} differ in shape after alignment"
    )
  log_rates, counts = predictions.reshape(-1, predictions.shape[-1]), targets.reshape(-1, targets.shape[-1])
  return {"poisson_d2": metrics.poisson_d2(log_rates, counts), "bps": metrics.bits_per_spike(log_rates, counts)}


def score_ts3(pred: dict, pred_meta: dict, gt: dict, gt_meta: dict, problems: list, warnings: list) -> dict:
  """TS3 precision, recall, F1 per class and macro of one file (argmax of pred_proba)."""
  if pred_meta.get("label_names") != gt_meta.get("label_names"):
    raise ScoreMismatch(f"label_names {pred_meta.get('label_names')!r}: expected {gt_meta.get('label_names')!r}")
  pred_ids, gt_ids = tasks.decode_ids(pred["entity_ids"]), tasks.decode_ids(gt["entity_ids"])
  if len(set(pred_ids)) != len(pred_ids):
    problems.append("duplicate entity ids in the predictions (the scorer keeps the last of each)")
  index = {u: i for i, u in enumerate(pred_ids)}
  missing = [u for u in gt_ids if u not in index]
  if missing:
    raise ScoreMismatch(
      f"{len(missing)} ground-truth units have no prediction, e.g. {missing[:5]} (the scorer refuses it too)"
    )
  extra = set(pred_ids) - set(gt_ids)
  if extra:
    warnings.append(f"{len(extra)} predicted units are not in the ground truth (ignored, as the scorer does)")
  proba = pred["pred_proba"][[index[u] for u in gt_ids]]
  return metrics.classification_report(gt["targets"], np.argmax(proba, axis=1), gt_meta["label_names"].split(","))


def _score_file(path: str, gt_path: str, meta: dict, found: list, warnings: list) -> dict:
  """{raw key: metrics} of one prediction file (metadata meta) against its ground truth."""
  task, label, seed = meta["task"], meta["label"], int(meta["seed"])
  pred, gt = load_file(path), load_file(gt_path)
  if task.startswith("ts1-"):
    return {(label, task, meta["recording_id"], seed): score_ts1(task, pred, gt, found)}
  if task.startswith("ts2-"):
    return {(label, task, meta["recording_id"], seed): score_ts2(task, pred, gt, found)}
  with safe_open(gt_path, framework="np") as f:
    gt_meta = f.metadata() or {}
  return {(label, task, seed): score_ts3(pred, meta, gt, gt_meta, found, warnings)}


def score_folder(pred_dir, gt_dir, strict: bool = True) -> Scores:
  """Scores every seed_*.safetensors file under pred_dir against gt_dir, as the scorer's score_dir
  of the three suites (keys from each file's metadata). strict: raise ScoreMismatch listing every
  mismatch found; otherwise return them in Scores.warnings."""
  raw, problems, warnings = {}, [], []
  paths = sorted(
    os.path.join(d, n)
    for d, _, names in os.walk(pred_dir)
    for n in names
    if n.startswith("seed_") and n.endswith(".safetensors")
  )
  if not paths:
    raise ScoreMismatch(f"no seed_*.safetensors file under {pred_dir}")
  for path in paths:
    with safe_open(path, framework="np") as f:
      meta = f.metadata() or {}
    for field in ("task", "label", "seed") + (() if meta.get("task", "").startswith("ts3-") else ("recording_id",)):
      if field not in meta:
        raise ValueError(f"{path}: no {field!r} in the header metadata (expected as BWB's writer stamps it)")
    task = meta["task"]
    recording = meta["recording_id"] if tasks.suite_of(task) != "ts3" else None
    gt_path = _gt_path(gt_dir, task, *([recording] if recording else []))
    found: list = []
    if not os.path.exists(gt_path):
      found.append(f"no ground truth {os.path.relpath(gt_path, gt_dir)} (the scorer skips the file)")
    else:
      try:
        raw.update(_score_file(path, gt_path, meta, found, warnings))
      except ScoreMismatch as error:  # the scorer too refuses these files (and goes on)
        found.append(f"not scored: {error}")
    problems += [f"{os.path.relpath(path, pred_dir)}: {p}" for p in found]
  if strict and problems:
    raise ScoreMismatch("predictions and ground truth do not match one to one:\n  " + "\n  ".join(problems))
  return Scores(raw, problems + warnings)
