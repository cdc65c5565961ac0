"""Spike counts of any event session in regular bins of given intervals (host only, NumPy)."""

from __future__ import annotations

import numpy as np

from mtm_jax.datasets.events import session as session_lib

_CHUNK_CELLS = 1 << 22  # intervals x bins x units counted at once (bounds the host memory)


def bin_spikes(session: session_lib.EventSession, intervals, width: float, n_bins: int) -> np.ndarray:
  """[K, n_bins, U] int32 spike counts of every unit in n_bins bins of `width` seconds from
  the start of each of the K `intervals` ([K, 2] seconds, (start, end)).

  Bin j of interval k is [j * width, (j + 1) * width) in the time relative to the start,
  computed in float64 (t - start): a spike exactly on an inner edge counts in the later
  bin; spikes before the start or at or after start + n_bins * width are ignored. The bins
  must fit in each interval (n_bins * width <= end - start); intervals may overlap."""
  if not np.isscalar(width) or not np.isfinite(width) or width <= 0:
    raise ValueError(f"bin_spikes: width must be a positive number of seconds, got {width!r}")
  if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
    raise ValueError(f"bin_spikes: n_bins must be a positive integer, got {n_bins!r}")
  try:
    iv = np.asarray(intervals, np.float64)
  except (TypeError, ValueError) as e:
    raise ValueError(f"bin_spikes: intervals must be a [K, 2] array of (start, end) seconds ({e})") from e
  if iv.ndim != 2 or iv.shape[1] != 2:
    raise ValueError(f"bin_spikes: intervals must be [K, 2] (start, end) seconds, got shape {iv.shape}")
  if not np.all(np.isfinite(iv)):
    raise ValueError("bin_spikes: intervals has non-finite bounds")
  span = n_bins * float(width)
  short = np.flatnonzero(iv[:, 1] - iv[:, 0] < span * (1 - 1e-9))
  if len(short):
    k = short[0]
    raise ValueError(
      f"bin_spikes: intervals {k} [{iv[k, 0]}, {iv[k, 1]}) is shorter than n_bins * width = {n_bins} x {width} s"
    )
  n_units = len(session.unit_ids)
  times = np.asarray(session.spike_times, np.float64)
  units = np.asarray(session.spike_units, np.int64)
  edges = np.arange(n_bins + 1, dtype=np.float64) * float(width)  # relative to each start
  out = np.zeros((len(iv), n_bins, n_units), np.int32)
  chunk = max(1, _CHUNK_CELLS // max(1, n_bins * n_units))
  for first in range(0, len(iv), chunk):
    starts = iv[first : first + chunk, 0]
    lo = np.searchsorted(times, starts, side="left")
    hi = np.searchsorted(times, starts + span, side="right")  # a little past: cut exactly below
    counts = hi - lo
    which = np.repeat(np.arange(len(starts)), counts)  # interval of each candidate spike
    index = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(lo, counts)
    rel = times[index] - starts[which]
    bins = np.searchsorted(edges, rel, side="right") - 1
    keep = (rel >= 0) & (bins >= 0) & (bins < n_bins)
    cell = (which[keep] * n_bins + bins[keep]) * n_units + units[index[keep]]
    size = len(starts) * n_bins * n_units
    out[first : first + chunk] = np.bincount(cell, minlength=size).reshape(len(starts), n_bins, n_units)
  return out
