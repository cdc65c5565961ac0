"""BrainWideBench's task vocabulary and id encoding, as the scorer ibl-bwb-eval 0.1.0 declares them.

Task ids are `ts1-<task>`, `ts2-<task>`, `ts3-<task>` (the folder a submission file is filed
under). Entity ids (TS2 unit ids `<session id>/<unit uuid>`, TS3 unit ids) travel as a uint8
matrix (n, width), one ASCII id per row, NUL-padded to the longest id.
"""

from __future__ import annotations

import dataclasses

import numpy as np

TS1_CLASS_DIMS = {"choice": 2, "reward": 2, "stimulus_contrast": 5}
TS1_TIMESTEP_TASKS = ("whisker_motion_energy", "wheel_speed", "right_paw_speed", "left_paw_speed", "licking_rate")
TS1_TASKS = tuple(TS1_CLASS_DIMS) + TS1_TIMESTEP_TASKS
TS2_TASKS = ("co_smoothing", "forecasting")
TS3_TASKS = ("unit_cosmos",)
# The Cosmos regions of TS3 in the order of pred_proba's columns (alphabetical, as BWB's).
COSMOS_LABELS = ("CB", "CNU", "CTXsp", "HB", "HPF", "HY", "Isocortex", "MB", "OLF", "TH")

TIMESTEPS = 50  # TS1 per-bin targets: 1.0 s at 50 Hz
BIN_SIZE = 0.02  # seconds
FORECAST_BINS = 5  # TS2 forecasting: the last 0.1 s of each window
UNIT_FILTERINGS = ("all_units", "selected_units", "custom", "mixed")
SELECTED_UNITS = "selected_units"  # the build TS2 and TS3 require
MIN_SEEDS = 3


@dataclasses.dataclass(frozen=True)
class TS1Spec:
  """What one TS1 task predicts.

  dim: the predictions' last axis (classes for class tasks, 1 for per-bin tasks);
  timesteps: 1 (class tasks: predictions (N, 1, dim)) or 50 (per-bin: (N, 50, 1));
  primary: the metric BWB ranks it on; masked: whether the ground truth carries a `mask`
  (pose confidence of the paw tasks) that gates the metric."""

  task: str
  dim: int
  timesteps: int
  primary: str
  masked: bool

  @property
  def classification(self) -> bool:
    return self.timesteps == 1


def ts1_spec(task: str) -> TS1Spec:
  """The spec of TS1 task `task` (bare name, e.g. "choice", or the id "ts1-choice")."""
  task = task.removeprefix("ts1-")
  if task in TS1_CLASS_DIMS:
    return TS1Spec(task, TS1_CLASS_DIMS[task], 1, "bacc", False)
  if task == "licking_rate":
    return TS1Spec(task, 1, TIMESTEPS, "poisson_d2", False)
  if task in TS1_TIMESTEP_TASKS:
    return TS1Spec(task, 1, TIMESTEPS, "r2", task.endswith("paw_speed"))
  raise ValueError(f"{task!r} is not a BWB TS1 task; expected one of {TS1_TASKS}")


def task_ids(suite: str) -> tuple[str, ...]:
  """The task ids of suite "ts1", "ts2" or "ts3", e.g. ("ts2-co_smoothing", "ts2-forecasting")."""
  tasks = {"ts1": TS1_TASKS, "ts2": TS2_TASKS, "ts3": TS3_TASKS}
  if suite not in tasks:
    raise ValueError(f"suite {suite!r}: expected 'ts1', 'ts2' or 'ts3'")
  return tuple(f"{suite}-{t}" for t in tasks[suite])


ALL_TASK_IDS = task_ids("ts1") + task_ids("ts2") + task_ids("ts3")


def suite_of(task_id: str) -> str:
  """ "ts1", "ts2" or "ts3" for a known task id; ValueError otherwise."""
  if task_id not in ALL_TASK_IDS:
    raise ValueError(f"task id {task_id!r} is not a BWB task; expected one of {ALL_TASK_IDS}")
  return task_id.split("-", 1)[0]


def primary_metric(task_id: str) -> str:
  """The metric BWB ranks task `task_id` on (the scorer's names)."""
  suite = suite_of(task_id)
  if suite == "ts1":
    return ts1_spec(task_id).primary
  return "poisson_d2" if suite == "ts2" else "macro/f1-score"


def unit_ids(session_id: str, unit_uuids) -> list[str]:
  """TS2 unit ids as BWB's session files name units: `<session id>/<unit uuid>`."""
  return [f"{session_id}/{u}" for u in unit_uuids]


def encode_ids(ids) -> np.ndarray:
  """(n, width) uint8: one ASCII id a row, NUL-padded to the longest (width = longest id).

  Raises ValueError for no ids, an empty id, or a non-ASCII one."""
  rows = [str(s) for s in np.asarray(ids).reshape(-1)]
  if not rows:
    raise ValueError("encode_ids: no ids to encode")
  encoded = []
  for s in rows:
    if not s:
      raise ValueError("encode_ids: ids must not be empty")
    try:
      encoded.append(s.encode("ascii"))
    except UnicodeEncodeError as error:
      raise ValueError(f"encode_ids: id {s!r} is not ASCII") from error
    if b"\x00" in encoded[-1]:
      raise ValueError(f"encode_ids: id {s!r} contains NUL (the padding byte)")
  out = np.zeros((len(encoded), max(map(len, encoded))), np.uint8)
  for i, row in enumerate(encoded):
    out[i, : len(row)] = np.frombuffer(row, np.uint8)
  return out


def decode_ids(matrix) -> list[str]:
  """The ids of an (n, width) uint8 matrix written by encode_ids (trailing NULs dropped).

  Raises ValueError when the matrix is not 2-D uint8 or a row is not ASCII."""
  matrix = np.asarray(matrix)
  if matrix.ndim != 2 or matrix.dtype != np.uint8:
    raise ValueError(f"decode_ids: expected an (n, width) uint8 matrix; got {matrix.dtype} {matrix.shape}")
  try:
    return [row.tobytes().rstrip(b"\x00").decode("ascii") for row in matrix]
  except UnicodeDecodeError as error:
    raise ValueError(f"decode_ids: a row is not ASCII ({error})") from error
