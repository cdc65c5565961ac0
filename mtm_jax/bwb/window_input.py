"""The input of BrainWideBench windows as the models read it, and BWB's TS2 corruption of it.

A window is [start, start + 1 s) in 50 bins of 20 ms; a spike at time t is in bin i when
i * 0.02 <= t - start < (i + 1) * 0.02, t - start computed in float64
(mtm_jax.datasets.events.binning, whose counts these are). BWB corrupts a test window before
the model sees it: co-smoothing removes the held-out units' spikes over the whole window,
forecasting removes every spike of its last bins (`removed`, `corrupt_counts`).
"""

from __future__ import annotations

import numpy as np

from mtm_jax.bwb import tasks as bwb_tasks, windows
from mtm_jax.datasets.events import binning, session as session_lib

SPLIT = "bwb"  # the split name of a window session's windows
N_BINS = bwb_tasks.TIMESTEPS  # 50
BIN = bwb_tasks.BIN_SIZE  # 0.02 s
EDGES = np.arange(N_BINS + 1, dtype=np.float64) * BIN  # bin edges from the window start (binning.bin_spikes')


def intervals(starts: np.ndarray) -> np.ndarray:
  """[W, 2] float64 (start, start + 1 s) of window starts [W]."""
  return np.stack([starts, starts + windows.WINDOW], axis=1).reshape(-1, 2)


def window_session(session_id: str, unit_ids, times: np.ndarray, units: np.ndarray, starts: np.ndarray):
  """An EventSession (unchecked: its windows overlap) of the spikes whose split SPLIT is the
  windows of `starts`, without behaviour; unit_ids [N] (their regions "unknown")."""
  unit_ids = np.asarray([str(u) for u in unit_ids])
  iv = intervals(starts)
  return session_lib.EventSession(
    session_id=session_id,
    spike_times=times,
    spike_units=units,
    unit_ids=unit_ids,
    unit_regions=np.full(len(unit_ids), "unknown"),
    behaviour_name="none",
    behaviour_timestamps=np.zeros(0, np.float64),
    behaviour_values=np.zeros((0, 1), np.float32),
    behaviour_weights=np.zeros(0, np.float32),
    trial_starts=iv[:, 0],
    trial_ends=iv[:, 1],
    splits={SPLIT: iv},
  )


def counts(session, starts: np.ndarray) -> np.ndarray:
  """[W, 50, N] int32 spike counts of the windows."""
  return binning.bin_spikes(session, intervals(starts), BIN, N_BINS)


def corrupt_counts(counts: np.ndarray, hide: np.ndarray | None, forecast_bins: int) -> np.ndarray:
  """[W, 50, N] counts without the spikes BWB removes: units `hide` ([N] bool, or None) in
  every bin, every unit in the last `forecast_bins` bins (a copy; the counts unchanged)."""
  out = np.array(counts)
  if hide is not None:
    out[:, :, hide] = 0
  if forecast_bins:
    out[:, N_BINS - forecast_bins :, :] = 0
  return out


def removed(rel_times: np.ndarray, units: np.ndarray, hide: np.ndarray | None, forecast_bins: int) -> np.ndarray:
  """[s] bool: which spikes of a window (times from its start [s] float64, units [s]) BWB
  removes, by the bins `counts` puts them in."""
  out = np.zeros(len(rel_times), bool)
  if hide is not None:
    out |= hide[units]
  if forecast_bins:
    bins = np.searchsorted(EDGES, rel_times, side="right") - 1
    out |= bins >= N_BINS - forecast_bins
  return out
