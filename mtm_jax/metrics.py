"""Bits per spike, with the Neural Latents Benchmark contract (NumPy, host side).

`rates` are expected spike counts per bin (not log-rates, not Hz); `rates` and `spikes`
are [trials, time, neurons]. The Poisson negative log-likelihood is the full one
(including log k!); predicted rates below 1e-9 are raised to 1e-9; entries where
`spikes` is NaN are ignored. The null model of a neuron is its mean count over the
scored entries.
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln

_MIN_RATE = 1e-9


class Undecodable(ValueError):
  """The trials cannot score this metric (too few trials of a class, a single class, a
  constant target): a property of a small split, not malformed input. Evaluation records
  the metric as skipped with this message as the reason. (Here, not with the decoders,
  so that scoring code can raise it without importing scikit-learn.)"""


def _check(rates, spikes):
  rates = np.asarray(rates, np.float64)
  spikes = np.asarray(spikes, np.float64)
  if rates.shape != spikes.shape or rates.ndim != 3:
    raise ValueError(
      f"bits_per_spike: rates and spikes must both be [trials, time, neurons]; got {rates.shape} and {spikes.shape}"
    )
  if np.isnan(rates[~np.isnan(spikes)]).any():
    raise ValueError("bits_per_spike: rates contain NaN where spikes are observed")
  if (rates < 0).any():
    raise ValueError("bits_per_spike: rates must be expected counts per bin (>= 0); got negative values")
  return np.maximum(rates, _MIN_RATE), spikes


def _nll_per_neuron(rates, spikes):
  """[neurons] summed Poisson NLL over the observed (non-NaN) entries."""
  observed = ~np.isnan(spikes)
  y = np.where(observed, spikes, 0.0)
  nll = rates - y * np.log(rates) + gammaln(y + 1)
  return np.where(observed, nll, 0.0).sum(axis=(0, 1))


def _null_rates(spikes):
  return np.broadcast_to(np.nanmean(spikes, axis=(0, 1), keepdims=True), spikes.shape)


def bits_per_spike(rates, spikes) -> float:
  """Pooled over neurons: (NLL_null - NLL_model) / (total spikes * ln 2)."""
  rates, spikes = _check(rates, spikes)
  null = np.maximum(_null_rates(spikes), _MIN_RATE)
  gain = (_nll_per_neuron(null, spikes) - _nll_per_neuron(rates, spikes)).sum()
  return float(gain / np.nansum(spikes) / np.log(2))


def bits_per_spike_per_neuron(rates, spikes) -> np.ndarray:
  """[neurons] bits per spike of each neuron on its own; NaN for neurons with no spike."""
  rates, spikes = _check(rates, spikes)
  null = np.maximum(_null_rates(spikes), _MIN_RATE)
  total = np.nansum(spikes, axis=(0, 1))
  gain = _nll_per_neuron(null, spikes) - _nll_per_neuron(rates, spikes)
  with np.errstate(divide="ignore", invalid="ignore"):
    bps = gain / total / np.log(2)
  return np.where(np.isfinite(bps), bps, np.nan)
