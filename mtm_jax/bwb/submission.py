"""BrainWideBench submission files, written as BWB's PredictionsWriter writes them (no torch).

Layout under a submission folder `root`:
  <label>/ts1-<task>/<recording_id>/seed_<seed>.safetensors
  <label>/ts2-<task>/<recording_id>/seed_<seed>.safetensors
  <label>/ts3-unit_cosmos/seed_<seed>.safetensors
Each file is a safetensors file with string header metadata: label, task (the task id),
seed, ibl_bwb_eval_version, unit_filtering, dataset_version, recording_id (TS1, TS2),
context_window and bin_size (TS2), label_names (TS3, comma-joined). Tensors per suite:
- TS1 class tasks: predictions (N, 1, C) float32 logits; trial_id (N,) int64.
- TS1 per-bin tasks: predictions (N, 50, 1) float32 (licking_rate: log-rates); trial_id (N,);
  timestamps (N, 50) float32 (optional).
- TS2: predictions (W, T, U) log-rates, float16 or float32 (co_smoothing: T = 50 bins, the
  held-out units; forecasting: T = 5, all units); window_timestamps (W,) float64, absolute
  window starts exactly as BWB's sampler makes them; unit_ids (U, width) uint8.
- TS3: pred_proba (N, 10) float32 in COSMOS_LABELS order; entity_ids (N, width) uint8.
Every file is written atomically (mtm_jax.files.atomic_write): a failed write leaves none.
zip_submission packs `<label>/` at the zip's root. validate (mtm_jax.bwb.validation) applies
the leaderboard's upload checks.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np
from safetensors.numpy import save

from mtm_jax import files
from mtm_jax.bwb import tasks
from mtm_jax.bwb.validation import Finding, validate  # noqa: F401  (re-exported)

SCORER_VERSION = "0.1.0"  # ibl_bwb_eval_version stamped in each file


def write_file(path: str, tensors: dict, metadata: dict) -> str:
  """Writes one safetensors file atomically (folders made as needed); returns its path.

  tensors: name -> NumPy array (made C-contiguous); metadata: name -> value (stored as str)."""
  data = save(
    {k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata={k: str(v) for k, v in metadata.items()}
  )
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with files.atomic_write(path, "wb") as f:
    f.write(data)
  return path


def _common(label: str, task_id: str, seed: int, unit_filtering: str, dataset_version: str) -> dict:
  if not label or "/" in label:
    raise ValueError(f"submission label {label!r}: expected a non-empty folder name without '/'")
  if unit_filtering not in tasks.UNIT_FILTERINGS:
    raise ValueError(f"unit_filtering {unit_filtering!r}: expected one of {tasks.UNIT_FILTERINGS}")
  parts = str(dataset_version).split(".")
  if len(parts) != 3 or not all(p.isdigit() for p in parts):
    raise ValueError(f"dataset_version {dataset_version!r}: expected x.y.z")
  if int(seed) < 0:
    raise ValueError(f"seed {seed}: expected a non-negative integer")
  return {
    "label": label,
    "task": task_id,
    "seed": str(int(seed)),
    "ibl_bwb_eval_version": SCORER_VERSION,
    "unit_filtering": unit_filtering,
    "dataset_version": str(dataset_version),
  }


def _finite(name: str, array) -> None:
  if not np.isfinite(array).all():
    raise ValueError(f"{name} contains NaN or inf (the upload check refuses it: E107)")


def _recording(recording_id: str) -> str:
  if not recording_id or "/" in recording_id:
    raise ValueError(f"recording_id {recording_id!r}: expected a non-empty folder name without '/'")
  return recording_id


def write_ts1(
  root, label, task, recording_id, seed, predictions, trial_id, *, timestamps=None, unit_filtering, dataset_version
) -> str:
  """Writes <root>/<label>/ts1-<task>/<recording_id>/seed_<seed>.safetensors; returns its path.

  predictions: class tasks (N, C) or (N, 1, C) logits; per-bin tasks (N, 50) or (N, 50, 1)
  (licking_rate: log-rates); stored float32 as (N, 1, C) / (N, 50, 1). trial_id: (N,) unique
  integer trial ids of the session. timestamps: optional (N, 50) bin times (stored float32)."""
  spec = tasks.ts1_spec(task)
  task_id = f"ts1-{spec.task}"
  predictions = np.asarray(predictions, np.float32)
  if predictions.ndim == 2:
    predictions = predictions[:, None, :] if spec.classification else predictions[:, :, None]
  expected = (spec.timesteps, spec.dim)
  if predictions.ndim != 3 or predictions.shape[1:] != expected:
    raise ValueError(f"{task_id} predictions: expected (N, {expected[0]}, {expected[1]}); got {predictions.shape}")
  trial_id = np.asarray(trial_id)
  if trial_id.shape != predictions.shape[:1] or not np.issubdtype(trial_id.dtype, np.integer):
    raise ValueError(
      f"{task_id} trial_id: expected ({predictions.shape[0]},) integers; got {trial_id.dtype} {trial_id.shape}"
    )
  if len(np.unique(trial_id)) != len(trial_id):
    raise ValueError(f"{task_id} trial_id: duplicate trial ids (the scorer would keep one of each silently)")
  _finite(f"{task_id} predictions", predictions)
  tensors = {"predictions": predictions, "trial_id": trial_id.astype(np.int64)}
  if timestamps is not None:
    timestamps = np.asarray(timestamps, np.float32)
    if timestamps.shape != predictions.shape[:2]:
      raise ValueError(f"{task_id} timestamps: expected {predictions.shape[:2]}; got {timestamps.shape}")
    tensors["timestamps"] = timestamps
  metadata = _common(label, task_id, seed, unit_filtering, dataset_version)
  metadata["recording_id"] = _recording(recording_id)
  return write_file(
    os.path.join(root, label, task_id, recording_id, f"seed_{int(seed)}.safetensors"), tensors, metadata
  )


def write_ts2(
  root,
  label,
  task,
  recording_id,
  seed,
  predictions,
  window_timestamps,
  unit_ids,
  *,
  dataset_version,
  unit_filtering=tasks.SELECTED_UNITS,
  context_window=1.0,
  bin_size=tasks.BIN_SIZE,
  dtype=np.float16,
) -> str:
  """Writes <root>/<label>/ts2-<task>/<recording_id>/seed_<seed>.safetensors; returns its path.

  predictions: (W, T, U) log-rates (co_smoothing: T = 50, U the held-out units; forecasting:
  T = 5, U all units), stored as `dtype` (float16 as BWB's writer, or float32);
  window_timestamps: (W,) float64 absolute window starts, unique, bit-exact as BWB's sampler
  makes them (they are the alignment key); unit_ids: U ids `<session id>/<unit uuid>`
  (tasks.unit_ids), in the order of the last axis."""
  task_id = f"ts2-{task}"
  if task not in tasks.TS2_TASKS:
    raise ValueError(f"TS2 task {task!r}: expected one of {tasks.TS2_TASKS}")
  if unit_filtering != tasks.SELECTED_UNITS:
    raise ValueError(f"{task_id}: unit_filtering {unit_filtering!r}; TS2 requires 'selected_units' (E109)")
  if np.dtype(dtype) not in (np.float16, np.float32):
    raise ValueError(f"{task_id}: dtype {dtype}: expected float16 or float32")
  predictions = np.asarray(predictions)
  steps = tasks.TIMESTEPS if task == "co_smoothing" else tasks.FORECAST_BINS
  if predictions.ndim != 3 or predictions.shape[1] != steps:
    raise ValueError(f"{task_id} predictions: expected (windows, {steps}, units); got {predictions.shape}")
  _finite(f"{task_id} predictions", predictions)
  stored = predictions.astype(dtype)
  _finite(f"{task_id} predictions as {np.dtype(dtype).name}", stored)
  window_timestamps = np.asarray(window_timestamps)
  if window_timestamps.dtype != np.float64 or window_timestamps.shape != predictions.shape[:1]:
    raise ValueError(
      f"{task_id} window_timestamps: expected ({predictions.shape[0]},) float64; "
      f"got {window_timestamps.dtype} {window_timestamps.shape}"
    )
  if len(np.unique(window_timestamps)) != len(window_timestamps):
    raise ValueError(f"{task_id} window_timestamps: duplicate window starts (E008)")
  ids = tasks.encode_ids(unit_ids)
  if ids.shape[0] != predictions.shape[2]:
    raise ValueError(f"{task_id} unit_ids: {ids.shape[0]} ids for {predictions.shape[2]} units of predictions")
  metadata = _common(label, task_id, seed, unit_filtering, dataset_version)
  metadata.update(recording_id=_recording(recording_id), context_window=float(context_window), bin_size=float(bin_size))
  tensors = {"predictions": stored, "window_timestamps": window_timestamps, "unit_ids": ids}
  return write_file(
    os.path.join(root, label, task_id, recording_id, f"seed_{int(seed)}.safetensors"), tensors, metadata
  )


def write_ts3(
  root, label, seed, pred_proba, entity_ids, *, dataset_version, unit_filtering=tasks.SELECTED_UNITS, task="unit_cosmos"
) -> str:
  """Writes <root>/<label>/ts3-<task>/seed_<seed>.safetensors; returns its path.

  pred_proba: (N, 10) float32 class probabilities, columns in COSMOS_LABELS order (the
  scorer takes the argmax); entity_ids: N unit ids (every eval unit must be present)."""
  task_id = f"ts3-{task}"
  if task not in tasks.TS3_TASKS:
    raise ValueError(f"TS3 task {task!r}: expected one of {tasks.TS3_TASKS}")
  if unit_filtering != tasks.SELECTED_UNITS:
    raise ValueError(f"{task_id}: unit_filtering {unit_filtering!r}; TS3 requires 'selected_units' (E109)")
  pred_proba = np.asarray(pred_proba, np.float32)
  if pred_proba.ndim != 2 or pred_proba.shape[1] != len(tasks.COSMOS_LABELS):
    raise ValueError(f"{task_id} pred_proba: expected (units, {len(tasks.COSMOS_LABELS)}); got {pred_proba.shape}")
  _finite(f"{task_id} pred_proba", pred_proba)
  ids = tasks.encode_ids(entity_ids)
  if ids.shape[0] != pred_proba.shape[0]:
    raise ValueError(f"{task_id} entity_ids: {ids.shape[0]} ids for {pred_proba.shape[0]} rows of pred_proba")
  if len(set(tasks.decode_ids(ids))) != ids.shape[0]:
    raise ValueError(f"{task_id} entity_ids: duplicate ids")
  metadata = _common(label, task_id, seed, unit_filtering, dataset_version)
  metadata["label_names"] = ",".join(tasks.COSMOS_LABELS)
  tensors = {"pred_proba": pred_proba, "entity_ids": ids}
  return write_file(os.path.join(root, label, task_id, f"seed_{int(seed)}.safetensors"), tensors, metadata)


def zip_submission(root, label: str, zip_path) -> str:
  """Packs <root>/<label>/ into zip_path (atomically) with `<label>/` at the zip's root; returns
  zip_path. Only the seed_*.safetensors files are packed."""
  folder = os.path.join(root, label)
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"zip_submission: no submission folder {folder}")
  names = []
  for dirpath, _, filenames in os.walk(folder):
    for name in filenames:
      if name.startswith("seed_") and name.endswith(".safetensors"):
        names.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
  if not names:
    raise ValueError(f"zip_submission: no seed_*.safetensors file under {folder}")
  with files.atomic_write(zip_path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as archive:
    for name in sorted(names):
      archive.write(os.path.join(root, name), name)
  return str(zip_path)
