"""POYO evaluation: behaviour R^2 from sliding windows, and a ridge (Wiener filter) baseline.

Windows of 1 s slide in 0.5 s steps over each interval of the split
(batches.evaluation_batches); the predictions of overlapping windows are averaged per
behaviour timestamp and rescaled to the original units (stitching.stitch_predictions).
R^2 is computed per session and output dimension over the covered timestamps, averaged
over dimensions (a session's R^2), then over sessions.

The baseline is a ridge regression (scikit-learn RidgeCV, standardised features) of the
behaviour on the spike counts of every unit in `lags` bins of `bin` seconds up to the
sample (the newest bin centred on it), fitted per session on the training split and
scored on the same timestamps as the model.

A session whose split is too small to score (fewer than 2 covered behaviour samples, or
fewer than 2 training samples for the baseline) is left out of that score's means, its
reason under the session's "skipped"; a score no session has is under the top-level
"skipped". The other sessions' scores are still written.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from flax import nnx

from mtm_jax import metrics, progress
from mtm_jax.datasets.events import batches
from mtm_jax.datasets.events import session as session_lib
from mtm_jax.datasets.events import stitching
from mtm_jax.datasets.events import windows as windows_lib
from mtm_jax.parallel import mesh as mesh_lib


def r2_per_dim(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
  """[D] coefficient of determination 1 - SS_res / SS_tot of each column of [T, D] arrays.
  Raises metrics.Undecodable for T < 2 (R^2 undefined), ValueError for other shapes."""
  prediction, target = np.asarray(prediction, np.float64), np.asarray(target, np.float64)
  if prediction.shape != target.shape or prediction.ndim != 2:
    raise ValueError(f"r2: expected two [T >= 2, D] arrays of one shape, got {prediction.shape} and {target.shape}")
  if len(target) < 2:
    raise metrics.Undecodable(f"r2: needs at least 2 behaviour samples, got {len(target)}")
  ss_res = np.sum((target - prediction) ** 2, axis=0)
  ss_tot = np.sum((target - target.mean(axis=0)) ** 2, axis=0)
  return 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0)


def summarise(
  per_session: dict[str, np.ndarray], key: str = "behaviour_r2", skipped: dict[str, str] | None = None, names=None
) -> dict:
  """{session id: [D] R^2} -> {key: mean over sessions of the dimension mean,
  f"{key}_{names[d]}": mean over sessions of dimension d, "sessions": {id: {key, ...}}}.
  names: the D output names (events.session.output_names; default dim0 ... dim{D-1}).
  skipped {session id: reason} (sessions without a score) become {"skipped": {key: reason}}
  under "sessions", and the top-level "skipped" {key: reasons} when no session has a score."""
  out = {}
  dims = len(next(iter(per_session.values()))) if per_session else 0
  names = [f"dim{d}" for d in range(dims)] if names is None else list(names)
  if per_session:
    table = np.stack(list(per_session.values()))  # [S, D]
    out = {key: float(np.mean(table.mean(axis=1)))}
    out.update({f"{key}_{n}": float(v) for n, v in zip(names, table.mean(axis=0))})
  elif skipped:
    out["skipped"] = {key: "; ".join(f"{sid}: {reason}" for sid, reason in skipped.items())}
  out["sessions"] = {
    sid: {key: float(np.mean(r)), **{f"{key}_{n}": float(v) for n, v in zip(names, r)}}
    for sid, r in per_session.items()
  }
  out["sessions"].update({sid: {"skipped": {key: reason}} for sid, reason in (skipped or {}).items()})
  return out


def scored_sessions(score, sessions: Sequence) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """({session id: score(item)}, {session id: reason}) over (session id, item) pairs; an
  item whose score raises metrics.Undecodable is skipped with its reason."""
  scores, skipped = {}, {}
  for sid, item in sessions:
    try:
      scores[sid] = score(item)
    except metrics.Undecodable as e:
      skipped[sid] = str(e)
  return scores, skipped


# ------------------------------------------------------------------------------------------
# Model predictions
# ------------------------------------------------------------------------------------------


def make_predictor(graphdef, task: str):
  """jitted (params, batch) -> [B, Q, d] predictions of `task` (scaled units)."""
  return jax.jit(lambda params, batch: nnx.merge(graphdef, params)(batch)[task])


def predict_windows(
  predictor, params, data: windows_lib.EventData, batch_size: int, mesh, stage: progress.Stage | None = None
) -> tuple[list, list]:
  """(metas, predictions) over the sliding evaluation windows of `data`, every window's
  on every process: each process builds and feeds only its rows of each batch (the
  predictions and the window metadata are then gathered from all processes). stage: told
  the batches done of all (counted from the windows first), for its time-left lines."""
  mesh_lib.check_batch_size(batch_size, mesh)
  rows = mesh_lib.process_rows(batch_size, mesh)  # this process's rows of every batch
  metas, predictions = [], []
  evaluation = batches.evaluation_batches(data, batch_size, rows=rows)
  with jax.set_mesh(mesh):
    for i, (batch, meta) in enumerate(evaluation):
      out = predictor(params, mesh_lib.shard_batch(batch, mesh, batch_size))
      predictions.append(np.asarray(multihost_utils.process_allgather(out, tiled=True)))  # [B, Q, d], all rows
      metas.append(gathered_rows(meta, rows))
      if stage is not None:
        stage.update(i + 1, len(evaluation), "batches")
  return metas, predictions


def gathered_rows(local: dict[str, np.ndarray], rows: slice) -> dict[str, np.ndarray]:
  """Host arrays of this process's `rows` of a batch -> those of the whole batch, every
  process's rows in their order in the batch (itself with one process)."""
  if jax.process_count() == 1:
    return local
  starts = np.asarray(multihost_utils.process_allgather(np.array([rows.start], np.int64), tiled=True))
  parts = multihost_utils.process_allgather(local, tiled=False)  # [process, rows, ...] each
  order = np.argsort(starts)
  return {k: np.concatenate([np.asarray(v)[p] for p in order]) for k, v in parts.items()}


def stitched_r2(data: windows_lib.EventData, metas, predictions) -> tuple[dict[str, np.ndarray], list[dict]]:
  """({session id: [D] R^2}, stitched per session) of window predictions (every session;
  see stitched_scores to skip those too small to score)."""
  per_session, skipped, stitched = stitched_scores(data, metas, predictions)
  if skipped:
    raise metrics.Undecodable("; ".join(f"session {sid!r}: {r}" for sid, r in skipped.items()))
  return per_session, stitched


def stitched_scores(data: windows_lib.EventData, metas, predictions) -> tuple[dict, dict, list[dict]]:
  """({session id: [D] R^2}, {session id: reason it has none}, stitched per session)."""
  stitched = stitching.stitch_predictions(data, metas, predictions)
  pairs = [(s.session_id, st) for s, st in zip(data.sessions, stitched)]
  per_session, skipped = scored_sessions(lambda st: r2_per_dim(st["prediction"], st["target"]), pairs)
  return per_session, skipped, stitched


def evaluate_data(
  graphdef, params, data: windows_lib.EventData, *, task: str, batch_size: int, mesh, predictor=None, stage=None
) -> tuple[dict, list[dict]]:
  """(summarise(...) of the model's R^2 on `data`, the stitched per-session predictions);
  stage: a progress.Stage told the batches done (predict_windows)."""
  predictor = make_predictor(graphdef, task) if predictor is None else predictor
  metas, predictions = predict_windows(predictor, params, data, batch_size, mesh, stage)
  per_session, skipped, stitched = stitched_scores(data, metas, predictions)
  return summarise(per_session, skipped=skipped, names=session_lib.output_names(data.sessions)), stitched


# ------------------------------------------------------------------------------------------
# Ridge / Wiener-filter baseline
# ------------------------------------------------------------------------------------------


def lagged_counts(session: session_lib.EventSession, timestamps: np.ndarray, bin_size: float, lags: int) -> np.ndarray:
  """[T, lags * U] float32 spike counts of each unit in bins [t + bin/2 - (k+1) bin,
  t + bin/2 - k bin), k = 0 ... lags - 1, around each timestamp t (lag-major order)."""
  times, units = session.spike_times, session.spike_units
  n_units = len(session.unit_ids)
  t = np.asarray(timestamps, np.float64)
  edges = t[:, None] + bin_size / 2 - bin_size * np.arange(lags + 1)[None, :]  # [T, lags + 1], newest first
  out = np.zeros((len(t), lags, n_units), np.float32)
  order = np.argsort(units, kind="stable")
  bounds = np.searchsorted(units[order], np.arange(n_units + 1))
  for u in range(n_units):
    mine = times[order[bounds[u] : bounds[u + 1]]]  # this unit's spikes, sorted
    cum = np.searchsorted(mine, edges, side="left")  # spikes before each edge
    out[:, :, u] = cum[:, :-1] - cum[:, 1:]
  return out.reshape(len(t), lags * n_units)


def ridge_baseline(
  session: session_lib.EventSession,
  test_timestamps: np.ndarray,
  *,
  split: str = "test",
  bin_size: float = 0.02,
  lags: int = 10,
  train_split: str = "train",
) -> tuple[np.ndarray, np.ndarray]:
  """Fits RidgeCV on the training split of `session` and predicts at `test_timestamps`
  (which must be behaviour timestamps of `split`). Each split sees only its own spikes.
  Returns ([T, D] prediction, [T, D] target)."""
  from sklearn.linear_model import RidgeCV  # pylint: disable=g-import-not-at-top
  from sklearn.pipeline import make_pipeline  # pylint: disable=g-import-not-at-top
  from sklearn.preprocessing import StandardScaler  # pylint: disable=g-import-not-at-top

  train = session_lib.restrict_to_splits(session, [train_split])
  test = session_lib.restrict_to_splits(session, [split])
  if len(test_timestamps) == 0:
    raise metrics.Undecodable(f"ridge baseline: no {split} timestamps of session {session.session_id!r} to predict")
  if len(train.behaviour_timestamps) < 2:
    raise metrics.Undecodable(
      f"ridge baseline: the {train_split} split of session {session.session_id!r} "
      f"has {len(train.behaviour_timestamps)} behaviour samples; fitting needs 2"
    )
  x_train = lagged_counts(train, train.behaviour_timestamps, bin_size, lags)
  model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-1, 5, 13)))
  model.fit(x_train, np.asarray(train.behaviour_values, np.float64))
  idx = np.searchsorted(test.behaviour_timestamps, test_timestamps)
  if np.any(idx >= len(test.behaviour_timestamps)) or not np.allclose(test.behaviour_timestamps[idx], test_timestamps):
    raise ValueError(f"ridge baseline: the timestamps are not behaviour samples of split {split!r}")
  prediction = model.predict(lagged_counts(test, test_timestamps, bin_size, lags))
  return prediction.astype(np.float32), np.asarray(test.behaviour_values[idx], np.float32)


def baseline_scores(data: windows_lib.EventData, stitched: Sequence[dict], *, bin_size: float, lags: int) -> dict:
  """summarise(...) of the ridge baseline under the key "baseline_r2", on the timestamps
  the model was scored on; one line (progress.Stage) with its mean R^2 and the time."""

  def score(pair):
    s, st = pair
    return r2_per_dim(*ridge_baseline(s, st["timestamps"], split=data.split, bin_size=bin_size, lags=lags))

  with progress.Stage("ridge baseline R^2") as stage:
    pairs = [(s.session_id, (s, st)) for s, st in zip(data.sessions, stitched)]
    per_session, skipped = scored_sessions(score, pairs)
    out = summarise(per_session, "baseline_r2", skipped, names=session_lib.output_names(data.sessions))
    stage.note = f"{out['baseline_r2']:.4f}" if "baseline_r2" in out else "skipped"
  return out
