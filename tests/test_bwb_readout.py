"""TS1 readouts and TS3's probe (mtm_jax.bwb.readout) on features that carry the targets."""

import numpy as np
import pytest

from mtm_jax.bwb import metrics, readout, tasks


def _class_split(rng, n, dim, signal=3.0, f=6):
  y = rng.integers(0, dim, n)
  x = rng.normal(0, 1, (n, tasks.TIMESTEPS, f))
  x[:, :, 0] += signal * y[:, None]
  return readout.Split(x, y)


@pytest.mark.parametrize("task,dim", [("choice", 2), ("stimulus_contrast", 5)])
def test_class_readout_decodes_and_keeps_every_class(task, dim):
  rng = np.random.default_rng(0)
  train, val, test = (_class_split(rng, 80, dim) for _ in range(3))
  fitted = readout.fit_ts1(task, train, val, test.features)
  assert fitted.predictions.shape == (80, dim) and np.all(np.isfinite(fitted.predictions))
  assert metrics.balanced_accuracy(fitted.predictions, test.values, dim) > 0.9
  assert fitted.chosen in readout.C_GRID and set(fitted.val_scores) == set(readout.C_GRID)


def test_class_absent_from_train_gets_the_floor_logit():
  rng = np.random.default_rng(1)
  train = _class_split(rng, 60, 4)  # classes 0-3 of stimulus_contrast's 5
  fitted = readout.fit_ts1("stimulus_contrast", train, _class_split(rng, 30, 4), train.features)
  assert np.all(fitted.predictions[:, 4] == readout.LOG_ABSENT)


def _bin_split(rng, n, masked=False, poisson=False, f=5):
  x = rng.normal(0, 1, (n, tasks.TIMESTEPS, f))
  y = 2.0 * x[..., 1] - x[..., 2]
  if poisson:
    y = rng.poisson(np.exp(0.5 * x[..., 1])).astype(np.float64)
  mask = rng.random((n, tasks.TIMESTEPS)) > 0.3 if masked else None
  if masked:
    y = np.where(mask, y, 1e3)  # unconfident bins hold garbage the fit must not read
  return readout.Split(x, y, mask)


def test_per_bin_readouts():
  rng = np.random.default_rng(2)
  fitted = readout.fit_ts1("wheel_speed", *(_bin_split(rng, 40) for _ in range(2)), _bin_split(rng, 40).features)
  assert fitted.predictions.shape == (40, tasks.TIMESTEPS)
  test = _bin_split(np.random.default_rng(9), 40, masked=True)
  train, val = _bin_split(rng, 40, masked=True), _bin_split(rng, 40, masked=True)
  paw = readout.fit_ts1("left_paw_speed", train, val, test.features)
  assert metrics.r2(paw.predictions.reshape(-1), test.values.reshape(-1), test.mask.reshape(-1)) > 0.95
  train, val, test = (_bin_split(rng, 60, poisson=True) for _ in range(3))
  lick = readout.fit_ts1("licking_rate", train, val, test.features)
  assert metrics.poisson_d2(lick.predictions.reshape(-1, 1), test.values.reshape(-1, 1)) > 0.1


def test_ts1_refuses_bad_shapes():
  rng = np.random.default_rng(3)
  good = _class_split(rng, 10, 2)
  with pytest.raises(ValueError, match="ts1-choice val: values"):
    readout.fit_ts1("choice", good, readout.Split(good.features, good.values[:5]), good.features)
  with pytest.raises(ValueError, match="paw tasks need a mask"):
    readout.fit_ts1("left_paw_speed", _bin_split(rng, 5), _bin_split(rng, 5), _bin_split(rng, 5).features)


def test_ts3_probe_columns_follow_cosmos_labels():
  rng = np.random.default_rng(4)
  labels = rng.choice([1, 3, 6], 300)  # CNU, HB, Isocortex only
  emb = rng.normal(0, 1, (300, 8))
  emb[:, 0] += 4 * labels
  proba = readout.fit_ts3(emb, labels, emb[:50])
  assert proba.shape == (50, len(tasks.COSMOS_LABELS))
  np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
  assert np.all(proba[:, [0, 2, 4, 5, 7, 8, 9]] == 0)
  assert np.mean(proba.argmax(1) == labels[:50]) > 0.9
  with pytest.raises(ValueError, match="train_labels"):
    readout.fit_ts3(emb, labels[:10], emb)
