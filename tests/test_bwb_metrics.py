"""mtm_jax.bwb.metrics: BWB's metrics against hand-computed values and independent formulations
(scipy's Poisson likelihood, sklearn's r2, D^2, balanced accuracy, F1)."""

import math

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from mtm_jax.bwb import metrics


def _poisson_case(seed=0, t=200, n=5):
  rng = np.random.default_rng(seed)
  rates = rng.gamma(1.0, 0.5, (t, n))
  counts = rng.poisson(rates).astype(np.float64)
  counts[:, 0] = 0  # a silent unit
  log_rates = np.log(rates * rng.uniform(0.5, 1.5, rates.shape) + 0.01)
  return log_rates, counts


def test_bits_per_spike_by_hand():
  # One unit, two bins: counts (1, 0), log-rates (0, 0) (rate 1). S = 1, null rate 1/2.
  # null term: 1 * (1 - log 0.5); prediction term: (e^0 - 0) + (e^0 - 0) = 2.
  expected = (1 - math.log(0.5) - 2) / math.log(2)
  assert metrics.bits_per_spike([[0.0], [0.0]], [[1.0], [0.0]]) == pytest.approx(expected, rel=1e-12)


def test_bits_per_spike_is_the_poisson_likelihood_gain_pooled_over_spikes():
  log_rates, counts = _poisson_case()
  keep = counts.mean(0) >= 1e-9
  model = stats.poisson.logpmf(counts, np.exp(log_rates))[:, keep].sum()
  null = stats.poisson.logpmf(counts, counts.mean(0))[:, keep].sum()
  expected = (model - null) / counts.sum() / np.log(2)
  assert metrics.bits_per_spike(log_rates, counts) == pytest.approx(expected, rel=1e-10)
  # leading axes (windows x bins) are flattened
  assert metrics.bits_per_spike(log_rates.reshape(20, 10, 5), counts.reshape(20, 10, 5)) == pytest.approx(expected)
  # pooled, not MtM's mean of per-unit values
  per_unit = [
    (
      stats.poisson.logpmf(counts[:, i], np.exp(log_rates[:, i]))
      - stats.poisson.logpmf(counts[:, i], counts[:, i].mean())
    ).sum()
    / counts[:, i].sum()
    / np.log(2)
    for i in range(1, 5)
  ]
  assert abs(np.mean(per_unit) - expected) > 1e-4


def test_poisson_d2_by_hand():
  # One unit, counts (2, 0), log-rates (log 1, log 1). S = 2, T = 2, null rate 1.
  # L_pred - L_sat = (1 + 1 - 0) - (2 - 2 log 2) = 2 log 2; L_null - L_sat = 2 log 2 - 2 log 1.
  assert metrics.poisson_d2([0.0, 0.0], [2.0, 0.0]) == pytest.approx(0.0, abs=1e-12)
  # the saturated model scores 1
  assert metrics.poisson_d2(np.log([2.0, 1.0]), [2.0, 1.0]) == pytest.approx(1.0)


def test_poisson_d2_is_sklearns_d2_tweedie_per_unit():
  log_rates, counts = _poisson_case(seed=1)
  expected = np.mean([skm.d2_tweedie_score(counts[:, i], np.exp(log_rates[:, i]), power=1) for i in range(1, 5)])
  assert metrics.poisson_d2(log_rates, counts) == pytest.approx(expected, rel=1e-10)


def test_poisson_degenerate_cases_are_nan():
  zeros = np.zeros((4, 2))
  assert math.isnan(metrics.bits_per_spike(zeros, zeros))
  assert math.isnan(metrics.poisson_d2(zeros, zeros))
  # constant counts: L_null == L_sat, the unit is dropped
  assert math.isnan(metrics.poisson_d2(np.zeros(3), np.ones(3)))


@pytest.mark.parametrize(
  "log_rates, counts, match",
  [
    (np.zeros((3, 2)), np.zeros((3, 3)), "same shape"),
    (np.zeros((3, 2)), -np.ones((3, 2)), "non-negative"),
    (np.full((3, 2), np.nan), np.ones((3, 2)), "NaN or inf"),
  ],
)
def test_poisson_metrics_refuse_bad_input(log_rates, counts, match):
  for fn in (metrics.bits_per_spike, metrics.poisson_d2):
    with pytest.raises(ValueError, match=match):
      fn(log_rates, counts)


def test_r2_is_pooled_over_trials_and_bins():
  rng = np.random.default_rng(2)
  targets = rng.normal(1.0, 2.0, (12, 50, 1))
  predictions = targets + rng.normal(0, 1.0, targets.shape)
  expected = skm.r2_score(targets.reshape(-1), predictions.reshape(-1))
  assert metrics.r2(predictions, targets) == pytest.approx(expected, rel=1e-10)
  assert metrics.r2(predictions[..., 0], targets[..., 0]) == pytest.approx(expected, rel=1e-10)
  mask = rng.random((12, 50)) > 0.4
  expected = skm.r2_score(targets[..., 0][mask], predictions[..., 0][mask])
  assert metrics.r2(predictions, targets, mask) == pytest.approx(expected, rel=1e-10)
  # not the mean of per-trial R^2
  per_trial = np.mean([skm.r2_score(targets[i, :, 0], predictions[i, :, 0]) for i in range(12)])
  assert abs(per_trial - metrics.r2(predictions, targets)) > 1e-3


def test_r2_near_constant_rule_and_errors():
  assert metrics.r2([1.0, 2.0], [3.0, 3.0]) == 0.0  # constant target, wrong predictions
  assert metrics.r2([3.0, 3.0], [3.0, 3.0]) == 1.0  # rss = 0
  with pytest.raises(ValueError, match="no sample"):
    metrics.r2(np.zeros((2, 3)), np.ones((2, 3)), np.zeros((2, 3), bool))
  with pytest.raises(ValueError, match="at least two"):
    metrics.r2([1.0], [2.0])


def test_balanced_accuracy_and_f1_by_hand():
  # true (0, 0, 1, 1), predicted (0, 2, 1, 1) of 3 classes. Recalls: 1/2, 1, and class 2
  # (predicted, absent from the truth) counts as 0 in torchmetrics' macro average.
  logits = np.eye(3)[[0, 2, 1, 1]]
  labels = np.array([0, 0, 1, 1])
  assert metrics.balanced_accuracy(logits, labels, 3) == pytest.approx((0.5 + 1 + 0) / 3)
  assert skm.balanced_accuracy_score(labels, [0, 2, 1, 1]) == pytest.approx(0.75)  # sklearn leaves class 2 out
  # F1 per class: 2/3, 1, 0 (class 2: tp 0, fp 1)
  assert metrics.macro_f1(logits, labels, 3) == pytest.approx((2 / 3 + 1 + 0) / 3)
  # class absent from both sides: left out of both means; ties take the first maximum
  assert metrics.balanced_accuracy(np.zeros((2, 4)), [0, 0], 4) == 1.0
  assert metrics.macro_f1(np.zeros((2, 1, 4)), [0, 0], 4) == 1.0


@pytest.mark.parametrize("seed", range(4))
def test_classification_matches_sklearn(seed):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 5, 60)
  logits = rng.normal(0, 1, (60, 1, 5))
  logits[np.arange(60), 0, labels] += 1.0
  predicted = logits[:, 0].argmax(1)
  assert set(predicted) <= set(labels)  # where sklearn's balanced accuracy is the same definition
  assert metrics.balanced_accuracy(logits, labels, 5) == pytest.approx(skm.balanced_accuracy_score(labels, predicted))
  assert metrics.macro_f1(logits, labels, 5) == pytest.approx(skm.f1_score(labels, predicted, average="macro"))


def test_classification_report_matches_sklearn_with_pinned_labels():
  rng = np.random.default_rng(5)
  names = ("A", "B", "C", "D", "E")
  true, predicted = rng.integers(0, 3, 40), rng.integers(0, 4, 40)  # E absent from both sides
  report = metrics.classification_report(true, predicted, names)
  kwargs = {"labels": list(range(5)), "zero_division": 0}
  assert report["macro/f1-score"] == pytest.approx(skm.f1_score(true, predicted, average="macro", **kwargs))
  assert report["macro/precision"] == pytest.approx(skm.precision_score(true, predicted, average="macro", **kwargs))
  assert report["macro/recall"] == pytest.approx(skm.recall_score(true, predicted, average="macro", **kwargs))
  per_class = skm.f1_score(true, predicted, average=None, **kwargs)
  assert [report[f"{c}/f1-score"] for c in names] == pytest.approx(per_class)
  assert report["E/f1-score"] == 0.0


def test_aggregate_clips_averages_recordings_then_seeds():
  raw = {
    ("m", "ts2-forecasting", "r1", 43): {"poisson_d2": -0.2, "bps": 0.4},
    ("m", "ts2-forecasting", "r2", 43): {"poisson_d2": 0.2, "bps": 0.6},
    ("m", "ts2-forecasting", "r1", 44): {"poisson_d2": 0.3, "bps": 0.2},
    ("m", "ts2-forecasting", "r2", 44): {"poisson_d2": 0.1, "bps": -1.0},
    ("m", "ts1-choice", "r1", 43): {"bacc": 0.4},  # bacc is not clipped
    ("m", "ts3-unit_cosmos", 43): {"macro/f1-score": 0.3},
    ("m", "ts3-unit_cosmos", 44): {"macro/f1-score": 0.5},
  }
  out = metrics.aggregate(raw)
  d2 = out[("m", "ts2-forecasting")]["poisson_d2"]  # seeds: (0 + 0.2) / 2 = 0.1, (0.3 + 0.1) / 2 = 0.2
  assert d2[0] == pytest.approx(0.15) and d2[2] == 2
  assert d2[1] == pytest.approx(np.std([0.1, 0.2], ddof=1) / np.sqrt(2))
  assert out[("m", "ts2-forecasting")]["bps"][0] == pytest.approx((0.5 + 0.1) / 2)
  assert out[("m", "ts1-choice")]["bacc"] == (0.4, None, 1)
  assert out[("m", "ts3-unit_cosmos")]["macro/f1-score"][0] == pytest.approx(0.4)
  with pytest.raises(ValueError, match="key must be"):
    metrics.aggregate({("m", 43): {}})
