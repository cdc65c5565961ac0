"""Stitching: evaluation predictions of overlapping windows put back on each session's timeline."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mtm_jax.datasets.events import windows as windows_lib


def stitch_predictions(
  data: windows_lib.EventData, metas: Sequence[dict], predictions: Sequence[np.ndarray]
) -> list[dict]:
  """Averages overlapping window predictions per behaviour timestamp, per session.

  predictions: one [B, Q, D] array per evaluation batch (in scaled units, as the model
  outputs them). Returns, per session of data.sessions, a dict with timestamps [T] float64,
  prediction [T, D] float32 (rescaled to the original units), target [T, D] float32 and
  weights [T] float32 over the behaviour samples the windows covered."""
  sums = [np.zeros((len(s.behaviour_timestamps), data.n_dims)) for s in data.sessions]
  counts = [np.zeros(len(s.behaviour_timestamps), np.int64) for s in data.sessions]
  for meta, pred in zip(metas, predictions):
    pred = np.asarray(pred, np.float64)
    for j, s in enumerate(meta["session_position"]):
      if s < 0:
        continue
      idx = meta["behaviour_index"][j]
      valid = idx >= 0
      np.add.at(sums[s], idx[valid], pred[j][valid])
      np.add.at(counts[s], idx[valid], 1)
  out = []
  for s, total, count in zip(data.sessions, sums, counts):
    seen = count > 0
    out.append(
      dict(
        timestamps=s.behaviour_timestamps[seen],
        prediction=(total[seen] / count[seen][:, None] * data.scale).astype(np.float32),
        target=np.asarray(s.behaviour_values[seen], np.float32),
        weights=np.asarray(s.behaviour_weights[seen], np.float32),
      )
    )
  return out
