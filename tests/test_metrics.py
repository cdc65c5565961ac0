"""bits per spike against a direct computation of the Neural Latents Benchmark definition."""

import math

import numpy as np
import pytest
from scipy import stats

from mtm_jax import metrics


def _direct_bps(rates, spikes):
  """Element by element: sum of Poisson log-likelihoods, model vs per-neuron mean rate."""
  ll_model = ll_null = 0.0
  total = 0.0
  for n in range(spikes.shape[2]):
    y = spikes[:, :, n]
    mean = np.nanmean(y)
    for k in range(y.shape[0]):
      for t in range(y.shape[1]):
        if np.isnan(y[k, t]):
          continue
        ll_model += stats.poisson.logpmf(y[k, t], max(rates[k, t, n], 1e-9))
        ll_null += stats.poisson.logpmf(y[k, t], max(mean, 1e-9))
        total += y[k, t]
  return (ll_model - ll_null) / total / math.log(2)


@pytest.fixture
def data():
  rng = np.random.default_rng(0)
  rates = rng.gamma(2.0, 0.3, size=(5, 7, 4))
  spikes = rng.poisson(rates).astype(float)
  return rates, spikes


def test_pooled_matches_definition(data):
  rates, spikes = data
  assert metrics.bits_per_spike(rates, spikes) == pytest.approx(_direct_bps(rates, spikes), rel=1e-10)


def test_per_neuron_matches_definition(data):
  rates, spikes = data
  per = metrics.bits_per_spike_per_neuron(rates, spikes)
  for n in range(spikes.shape[2]):
    assert per[n] == pytest.approx(_direct_bps(rates[:, :, n : n + 1], spikes[:, :, n : n + 1]), rel=1e-10)


def test_true_rates_beat_null_and_null_scores_zero(data):
  rates, spikes = data
  assert metrics.bits_per_spike(rates, spikes) > 0
  null = np.broadcast_to(spikes.mean(axis=(0, 1), keepdims=True), spikes.shape)
  assert metrics.bits_per_spike(null, spikes) == pytest.approx(0.0, abs=1e-12)
  np.testing.assert_allclose(metrics.bits_per_spike_per_neuron(null, spikes), 0.0, atol=1e-12)


def test_nan_spikes_ignored_and_zero_rates_clipped(data):
  rates, spikes = data
  spikes = spikes.copy()
  spikes[0, 0, 0] = np.nan
  rates = rates.copy()
  rates[1, 1, 1] = 0.0
  assert metrics.bits_per_spike(rates, spikes) == pytest.approx(_direct_bps(rates, spikes), rel=1e-10)


def test_silent_neuron_is_nan_and_excluded():
  rates = np.full((3, 4, 2), 0.5)
  spikes = np.zeros((3, 4, 2))
  spikes[:, :, 1] = 1
  per = metrics.bits_per_spike_per_neuron(rates, spikes)
  assert np.isnan(per[0]) and np.isfinite(per[1])


def test_bad_inputs_are_clear_errors():
  with pytest.raises(ValueError, match="trials, time, neurons"):
    metrics.bits_per_spike(np.ones((2, 3)), np.ones((2, 3)))
  with pytest.raises(ValueError, match=">= 0"):
    metrics.bits_per_spike(-np.ones((2, 3, 1)), np.ones((2, 3, 1)))
