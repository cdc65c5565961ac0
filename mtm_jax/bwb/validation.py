"""The BrainWideBench leaderboard's upload checks on a submission folder, in NumPy.

Reproduces the checks of the leaderboard's validator (app/validation/validate_submission.py,
codes E001-E109), with their codes, on an extracted submission folder (the one holding
`<label>/`): each Finding names the file (relative path, "." for the whole submission), the
code and what was expected. As there, path checks come first, then each well-named file is
opened and its first failing check is reported.

Reproduced: E001-E010, E013, E014, E101-E109; E011, E012 (trial ids, window starts, unit
ids, entity ids against the ground truth) and E104 (every ground-truth session covered) only
when gt_dir is given, since they need the ground truth, which BWB does not distribute (build
it with mtm_jax.bwb.scoring). E108 only with a version bound (the server's bounds are not
public). Not reproduced: E999 is what the server reports for an unexpected error while
reading a file; here a file that cannot be read is reported as E999 too, but the messages
differ. E000 (no prediction file at all) is ours: the server reports that without a code.
The server's messages are deliberately vague; these name what was expected.
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
from safetensors import safe_open

from mtm_jax.bwb import tasks

SEED_FILE = re.compile(r"^seed_(\d+)\.safetensors$")
IGNORED_FILES = {".DS_Store", "Thumbs.db", "desktop.ini"}
IGNORED_DIRS = {"__MACOSX"}
VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


@dataclasses.dataclass(frozen=True)
class Finding:
  """One failed upload check: path relative to the submission folder ("." for all of it)."""

  path: str
  code: str
  detail: str

  def __str__(self) -> str:
    return f"{self.path}: {self.code}: {self.detail}"


class _Fail(Exception):
  def __init__(self, code: str, detail: str):
    super().__init__(detail)
    self.code, self.detail = code, detail


def _parse(entry: str):
  """(label, task_id, recording_id or None, seed) from a relative path; _Fail otherwise."""
  parts = entry.split("/")
  match = SEED_FILE.match(parts[-1])
  if not match:
    raise _Fail("E004", f"file name {parts[-1]!r}: expected seed_<N>.safetensors")
  if len(parts) == 4:
    label, task, recording = parts[:3]
  elif len(parts) == 3:
    (label, task), recording = parts[:2], None
  else:
    raise _Fail("E013", "path depth: expected <label>/<task>/[<recording_id>/]seed_<N>.safetensors")
  if task not in tasks.ALL_TASK_IDS:
    raise _Fail("E005", f"task id {task!r} in the path: expected one of {tasks.ALL_TASK_IDS}")
  if task.startswith("ts3-") and recording is not None:
    raise _Fail("E013", f"{task} files lie directly in <label>/{task}/, without a recording folder")
  if not task.startswith("ts3-") and recording is None:
    raise _Fail("E013", f"{task} files lie in <label>/{task}/<recording_id>/")
  return label, task, recording, int(match.group(1))


def _seed_checks(coverage: dict) -> list[Finding]:
  """E103 (one seed set per task), E101 (>= 3 seeds), E102 (contiguous), per task."""
  findings, by_task = [], {}
  for (task, recording), seeds in coverage.items():
    by_task.setdefault(task, {})[recording] = frozenset(seeds)
  for task, per_recording in sorted(by_task.items()):
    sets = set(per_recording.values())
    if len(sets) > 1:
      shown = {r: sorted(s) for r, s in list(per_recording.items())[:5]}
      findings.append(Finding(".", "E103", f"{task}: every recording needs the same seeds; got {shown}"))
      continue
    seeds = sorted(next(iter(sets)))
    if len(seeds) < tasks.MIN_SEEDS:
      findings.append(
        Finding(".", "E101", f"{task}: {len(seeds)} seed(s) {seeds}; expected at least {tasks.MIN_SEEDS}")
      )
    elif seeds != list(range(seeds[0], seeds[0] + len(seeds))):
      findings.append(Finding(".", "E102", f"{task}: seeds {seeds} are not contiguous"))
  return findings


def _coverage_checks(coverage: dict, gt_dir: str) -> list[Finding]:
  """E104: for each TS1/TS2 task submitted, every recording with ground truth has predictions."""
  findings, submitted = [], {}
  for task, recording in coverage:
    if recording is not None:
      submitted.setdefault(task, set()).add(recording)
  for task, recordings in sorted(submitted.items()):
    folder = os.path.join(gt_dir, task)
    if not os.path.isdir(folder):
      continue
    expected = {r for r in os.listdir(folder) if os.path.exists(os.path.join(folder, r, "ground_truth.safetensors"))}
    missing = sorted(expected - recordings)
    if missing:
      findings.append(
        Finding(
          ".", "E104", f"{task}: no predictions for {len(missing)}/{len(expected)} session(s), e.g. {missing[:10]}"
        )
      )
  return findings


def _version(text: str):
  match = VERSION.match(text)
  if not match:
    raise _Fail("E003", f"dataset_version {text!r}: expected x.y.z")
  return tuple(int(g) for g in match.groups())


def _require(present, required, what: str) -> None:
  missing = sorted(set(required) - set(present))
  if missing:
    raise _Fail("E001", f"missing {what}: {missing}")


def _match(pred: set, truth: set, exact: bool, what: str) -> None:
  """E012 unless pred == truth (exact) or pred covers truth (not exact)."""
  missing, extra = truth - pred, (pred - truth) if exact else set()
  if missing or extra:
    raise _Fail(
      "E012",
      f"{what} do not match the ground truth: {len(missing)} missing (e.g. {sorted(missing)[:5]})"
      + (f", {len(extra)} unexpected (e.g. {sorted(extra)[:5]})" if exact else ""),
    )


def _ground_truth(gt_dir, *parts):
  path = os.path.join(gt_dir, *parts, "ground_truth.safetensors")
  if not os.path.exists(path):
    raise _Fail(
      "E011", f"no ground truth {os.path.join(*parts, 'ground_truth.safetensors')} under the ground-truth folder"
    )
  return safe_open(path, framework="np")


def _check_file(path: str, parsed, gt_dir, min_version, max_version) -> None:
  label, task, recording, seed = parsed
  suite = task.split("-", 1)[0]
  with safe_open(path, framework="np") as f:
    meta = f.metadata() or {}
    keys = set(f.keys())
    _require(meta, ("label", "task", "seed", "unit_filtering", "dataset_version"), "metadata field(s)")
    if meta["unit_filtering"] not in tasks.UNIT_FILTERINGS:
      raise _Fail("E002", f"unit_filtering {meta['unit_filtering']!r}: expected one of {tasks.UNIT_FILTERINGS}")
    version = _version(meta["dataset_version"])
    if min_version is not None and version < _version(min_version):
      raise _Fail("E108", f"dataset_version {meta['dataset_version']} is older than {min_version}")
    if max_version is not None and version > _version(max_version):
      raise _Fail("E108", f"dataset_version {meta['dataset_version']} is newer than {max_version}")
    if meta["label"] != label or meta["task"] != task or not meta["seed"].isdigit() or int(meta["seed"]) != seed:
      raise _Fail(
        "E013",
        f"metadata label/task/seed {meta['label']!r}/{meta['task']!r}/{meta['seed']!r}: "
        f"expected {label!r}/{task!r}/{seed}",
      )
    if recording is not None and meta.get("recording_id") != recording:
      raise _Fail("E013", f"metadata recording_id {meta.get('recording_id')!r}: expected {recording!r} (its folder)")
    if suite in ("ts2", "ts3") and meta["unit_filtering"] != tasks.SELECTED_UNITS:
      raise _Fail("E109", f"unit_filtering {meta['unit_filtering']!r}: {suite} requires 'selected_units'")
    shape = lambda name: tuple(f.get_slice(name).get_shape())  # noqa: E731
    if suite == "ts1":
      _require(meta, ("recording_id",), "metadata field(s)")
      _require(keys, ("predictions", "trial_id"), "tensor(s)")
      dim = tasks.ts1_spec(task).dim
      pred_shape, trial_shape = shape("predictions"), shape("trial_id")
      if len(pred_shape) != 3 or pred_shape[-1] != dim:
        raise _Fail("E006", f"predictions {pred_shape}: expected (N, T, {dim})")
      if not trial_shape or trial_shape[0] != pred_shape[0]:
        raise _Fail("E006", f"trial_id {trial_shape}: expected {pred_shape[0]} entries, one per prediction")
      if not np.isfinite(f.get_tensor("predictions")).all():
        raise _Fail("E107", "predictions contain NaN or inf")
      if gt_dir is not None:
        with _ground_truth(gt_dir, task, recording) as gt:
          truth = set(gt.get_tensor("trial_id").tolist())
        _match(set(f.get_tensor("trial_id").tolist()), truth, True, "trial ids")
    elif suite == "ts2":
      _require(meta, ("recording_id",), "metadata field(s)")
      _require(keys, ("predictions", "window_timestamps", "unit_ids"), "tensor(s)")
      pred_shape, ts_shape = shape("predictions"), shape("window_timestamps")
      if len(pred_shape) != 3:
        raise _Fail("E007", f"predictions {pred_shape}: expected (windows, bins, units)")
      if len(ts_shape) != 1 or ts_shape[0] != pred_shape[0]:
        raise _Fail("E007", f"window_timestamps {ts_shape}: expected ({pred_shape[0]},), one per window")
      starts = f.get_tensor("window_timestamps")
      if len(np.unique(starts)) != starts.size:
        raise _Fail("E008", "window_timestamps has duplicate window starts")
      if not np.isfinite(f.get_tensor("predictions")).all():
        raise _Fail("E107", "predictions contain NaN or inf")
      if gt_dir is not None:
        with _ground_truth(gt_dir, task, recording) as gt:
          truth_starts = set(gt.get_tensor("window_timestamps").tolist())
          truth_units = set(tasks.decode_ids(gt.get_tensor("unit_ids")))
        _match(set(starts.tolist()), truth_starts, True, "window starts")
        _match(set(tasks.decode_ids(f.get_tensor("unit_ids"))), truth_units, True, "unit ids")
    else:
      _require(meta, ("label_names",), "metadata field(s)")
      _require(keys, ("pred_proba", "entity_ids"), "tensor(s)")
      names = tuple(meta["label_names"].split(","))
      if names != tasks.COSMOS_LABELS:
        raise _Fail("E010", f"label_names {names}: expected {tasks.COSMOS_LABELS}, in this order")
      proba_shape, id_shape = shape("pred_proba"), shape("entity_ids")
      if len(proba_shape) != 2 or proba_shape[1] != len(names):
        raise _Fail("E009", f"pred_proba {proba_shape}: expected (units, {len(names)})")
      if len(id_shape) != 2 or id_shape[0] != proba_shape[0]:
        raise _Fail("E009", f"entity_ids {id_shape}: expected ({proba_shape[0]}, width), one row per unit")
      try:
        ids = set(tasks.decode_ids(f.get_tensor("entity_ids")))
      except ValueError as error:
        raise _Fail("E009", f"entity_ids: {error}") from error
      if not np.isfinite(f.get_tensor("pred_proba")).all():
        raise _Fail("E107", "pred_proba contains NaN or inf")
      if gt_dir is not None:
        with _ground_truth(gt_dir, task) as gt:
          truth = set(tasks.decode_ids(gt.get_tensor("entity_ids")))
        _match(ids, truth, False, "entity ids")


def validate(
  folder, gt_dir=None, min_dataset_version=None, max_dataset_version=None, is_deterministic=False
) -> list[Finding]:
  """The upload check's findings on the extracted submission `folder` (the folder holding
  `<label>/`); empty when it passes. gt_dir: a ground-truth folder (`<task>/<recording>/
  ground_truth.safetensors`) for E011, E012, E104; None skips them. is_deterministic skips
  the seed checks (E101-E103), as the submitter may declare on the leaderboard."""
  folder = os.fspath(folder)
  entries = sorted(
    os.path.relpath(os.path.join(d, n), folder).replace(os.sep, "/") for d, _, names in os.walk(folder) for n in names
  )
  if not any(e.split("/")[-1].startswith("seed_") and e.endswith(".safetensors") for e in entries):
    return [Finding(".", "E000", f"no seed_*.safetensors file under {folder}")]
  findings, parsed, seen, labels, coverage = [], {}, {}, set(), {}
  for entry in entries:
    name = entry.split("/")[-1]
    if any(p in IGNORED_DIRS for p in entry.split("/")) or name in IGNORED_FILES:
      continue
    if not (name.startswith("seed_") and name.endswith(".safetensors")):
      findings.append(
        Finding(".", "E014", f"unexpected file {entry}: a submission holds only seed_<N>.safetensors files")
      )
      continue
    try:
      key = _parse(entry)
    except _Fail as fail:
      findings.append(Finding(entry, fail.code, fail.detail))
      continue
    if key in seen:
      findings.append(Finding(entry, "E105", f"same (label, task, recording, seed) as {seen[key]}"))
      continue
    seen[key], parsed[entry] = entry, key
    labels.add(key[0])
    coverage.setdefault((key[1], key[2]), set()).add(key[3])
  if len(labels) > 1:
    findings.append(Finding(".", "E106", f"several labels {sorted(labels)}: expected exactly one"))
  if not is_deterministic:
    findings += _seed_checks(coverage)
  if gt_dir is not None:
    findings += _coverage_checks(coverage, os.fspath(gt_dir))
  for entry, key in parsed.items():
    try:
      _check_file(os.path.join(folder, entry), key, gt_dir, min_dataset_version, max_dataset_version)
    except _Fail as fail:
      findings.append(Finding(entry, fail.code, fail.detail))
    except Exception as error:  # an unreadable file, as the server's E999
      findings.append(Finding(entry, "E999", f"cannot be read as a submission file: {error!r}"))
  return findings
