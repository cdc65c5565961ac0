"""Behaviour decoding against a direct scikit-learn computation on synthetic known data."""

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import r2_score
from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from mtm_jax.evaluation import decoding


def _direct_accuracy(x, y, folds, seed):
  """Fold by fold, written out: fit on the training trials, count correct test trials."""
  correct = 0
  outer = StratifiedKFold(folds, shuffle=True, random_state=seed)
  with threadpool_limits(limits=1):  # as decoding does, only for speed
    for train, test in outer.split(x, y):
      inner_folds = min(decoding.INNER_FOLDS, min(np.unique(y[train], return_counts=True)[1]))
      search = GridSearchCV(
        LogisticRegression(max_iter=decoding.LOGISTIC_MAX_ITER),
        {"C": list(decoding.LOGISTIC_C_GRID)},
        scoring="accuracy",
        cv=StratifiedKFold(inner_folds, shuffle=True, random_state=seed),
      )
      model = make_pipeline(StandardScaler(), search).fit(x[train], y[train])
      correct += int((model.predict(x[test]) == y[test]).sum())
  return correct / len(y)


def _direct_r2(x, target, folds, seed):
  predicted = np.zeros_like(target)
  for train, test in KFold(folds, shuffle=True, random_state=seed).split(x):
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=list(decoding.RIDGE_ALPHA_GRID)))
    predicted[test] = model.fit(x[train], target[train]).predict(x[test])
  return r2_score(target.ravel(), predicted.ravel())


def test_rotation_into_the_trials_span_leaves_the_logistic_decoder_unchanged():
  """With fewer trials than features, fitting on PCA coordinates gives the same decision
  function as fitting on the features (the speed-up choice_model relies on)."""
  rng = np.random.default_rng(3)
  x, x_new = rng.normal(size=(40, 500)), rng.normal(size=(25, 500))
  y = (x[:, :5].sum(1) + rng.normal(size=40) > 0).astype(int)
  for c in (1e-3, 1e-1, 10.0):
    plain = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000, tol=1e-10)).fit(x, y)
    rotated = make_pipeline(
      StandardScaler(), PCA(svd_solver="full"), LogisticRegression(C=c, max_iter=5000, tol=1e-10)
    ).fit(x, y)
    np.testing.assert_allclose(rotated.decision_function(x_new), plain.decision_function(x_new), rtol=1e-4, atol=1e-5)


@pytest.fixture
def choice_data():
  """60 trials, 8 features; choice = sign of a noisy linear read-out of the features."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(60, 8))
  w = rng.normal(size=8)
  y = np.where(x @ w + 0.8 * rng.normal(size=60) > 0, 1, -1)
  return x, y


@pytest.fixture
def trace_data():
  """50 trials, 12 features; a 6-bin trace that is a linear map of the features plus noise."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(50, 12))
  target = x @ rng.normal(size=(12, 6)) + 0.3 * rng.normal(size=(50, 6))
  return x, target


def test_choice_matches_direct_sklearn(choice_data):
  x, y = choice_data
  got = decoding.choice_accuracy(x, y, folds=4, seed=3)
  assert got == pytest.approx(_direct_accuracy(x, y, 4, 3), abs=1e-9)
  assert 0.7 < got < 1.0  # noisy labels: clearly above chance, not perfect


def test_choice_separable_and_random():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(80, 5))
  separable = np.where(x[:, 0] - 0.5 * x[:, 3] > 0, "right", "left")
  assert decoding.choice_accuracy(x, separable) >= 0.95
  chance = [decoding.choice_accuracy(x, rng.permutation(separable), seed=s) for s in range(2)]
  assert 0.3 < np.mean(chance) < 0.7


def test_choice_errors(choice_data):
  x, y = choice_data
  with pytest.raises(ValueError, match="exactly two classes"):
    decoding.choice_accuracy(x, np.ones(60))
  with pytest.raises(ValueError, match="exactly two classes"):
    decoding.choice_accuracy(x, np.arange(60) % 3)
  with pytest.raises(ValueError, match=r"choice must be \[trials\]"):
    decoding.choice_accuracy(x, y[:50])
  with pytest.raises(ValueError, match=r"features must be \[trials, F\]"):
    decoding.choice_accuracy(x[:, :, None], y)
  with pytest.raises(ValueError, match="non-finite"):
    decoding.choice_accuracy(np.where(x > 2, np.nan, x), y)
  few = np.array([1] * 4 + [-1] * 56)  # 4 trials of one class for 5 folds
  with pytest.raises(ValueError, match="each class needs at least"):
    decoding.choice_accuracy(x, few)
  with pytest.raises(ValueError, match="folds must be"):
    decoding.choice_accuracy(x, y, folds=1)


def test_r2_matches_direct_sklearn(trace_data):
  x, target = trace_data
  for folds, seed in ((5, 0), (3, 7)):
    got = decoding.continuous_r2(x, target, folds=folds, seed=seed)
    assert got == pytest.approx(_direct_r2(x, target, folds, seed), abs=1e-9)
  assert 0.9 < got < 1.0


def test_r2_is_pooled_over_bins():
  """Bins of very different scale: pooled R^2 is dominated by the large bin, unlike the mean."""
  rng = np.random.default_rng(3)
  x = rng.normal(size=(40, 3))
  target = np.stack([10.0 * x[:, 0], rng.normal(size=40)], axis=1)  # decodable, pure noise
  pooled = decoding.continuous_r2(x, target)
  assert pooled > 0.95
  # the mean over bins would be about (1 + <=0) / 2
  per_bin = [decoding.continuous_r2(x, target[:, b]) for b in range(2)]
  assert per_bin[0] > 0.99 and per_bin[1] < 0.05


def test_r2_noise_is_not_above_zero():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(50, 20))
  noise = rng.normal(size=(50, 5))
  assert decoding.continuous_r2(x, noise) < 0.05


def test_r2_errors(trace_data):
  x, target = trace_data
  with pytest.raises(ValueError, match=r"target must be \[trials, T\]"):
    decoding.continuous_r2(x, target[:40])
  with pytest.raises(ValueError, match=r"target must be \[trials, T\]"):
    decoding.continuous_r2(x, target[:, :, None])
  with pytest.raises(ValueError, match="non-finite"):
    decoding.continuous_r2(x, np.where(target > 1, np.inf, target))
  with pytest.raises(ValueError, match="at least 5 trials"):
    decoding.continuous_r2(x[:4], target[:4])
  with pytest.raises(ValueError, match="at least 4 trials"):  # 2 folds of 3 trials: 1 left to train
    decoding.continuous_r2(x[:3], target[:3], folds=2)
  with pytest.raises(ValueError, match="constant"):
    decoding.continuous_r2(x, np.zeros_like(target))


def test_decode_behaviour():
  rng = np.random.default_rng(5)
  trials, time, neurons = 40, 4, 3
  log_rates = rng.normal(size=(trials, time, neurons))
  flat = log_rates.reshape(trials, -1)
  choice = np.where(flat[:, 0] + flat[:, 5] > 0, 1, -1)
  whisker = flat[:, :time] * 2.0 + 0.1 * rng.normal(size=(trials, time))
  wheel = rng.normal(size=(trials, time))
  behaviour = {"choice": choice, "whisker_motion_energy": whisker, "wheel_speed": wheel, "block": np.zeros(trials)}
  out = decoding.decode_behaviour(log_rates, behaviour, folds=4, seed=2)
  assert tuple(out) == decoding.BEHAVIOUR_METRICS
  assert out["choice_accuracy"] == decoding.choice_accuracy(flat, choice, folds=4, seed=2)
  assert out["whisker_motion_energy_r2"] == decoding.continuous_r2(flat, whisker, folds=4, seed=2)
  assert out["whisker_motion_energy_r2"] > 0.9
  assert out["wheel_speed_r2"] < 0.1
  # missing fields are skipped
  assert list(decoding.decode_behaviour(log_rates, {"wheel_speed": wheel})) == ["wheel_speed_r2"]
  assert decoding.decode_behaviour(log_rates, {}) == {}
  with pytest.raises(ValueError, match=r"behaviour\['wheel_speed'\] must have 40 trials"):
    decoding.decode_behaviour(log_rates, {"wheel_speed": wheel[:30]})
  with pytest.raises(ValueError, match=r"log_rates must be \[trials, time, neurons\]"):
    decoding.decode_behaviour(flat, behaviour)


def _small_split(choice, rng):
  """log_rates [K, 4, 3] of K = len(choice) trials, the choice readable from the first
  value, a decodable whisker trace and a constant wheel speed."""
  choice = np.asarray(choice)
  log_rates = rng.normal(size=(len(choice), 4, 3))
  log_rates[:, 0, 0] += 2.0 * choice
  whisker = log_rates[:, :, 1] * 3.0 + 0.1 * rng.normal(size=(len(choice), 4))
  return log_rates, {"choice": choice, "whisker_motion_energy": whisker, "wheel_speed": np.full((len(choice), 4), 2.0)}


def test_decode_split_skips_what_the_split_cannot_score():
  """8 trials, choice counts {-1: 1, 1: 7} (the user's session): one -1 trial cannot fill
  even 2 folds, a constant trace has no R^2; the whisker trace still gets its 5 folds."""
  log_rates, behaviour = _small_split([-1] + [1] * 7, np.random.default_rng(6))
  with pytest.raises(ValueError, match="each class needs at least 5 trials for 5 folds"):
    decoding.decode_behaviour(log_rates, behaviour)  # the strict form: exactly the folds asked
  scores, folds, skipped = decoding.decode_split(log_rates, behaviour, folds=5, seed=1)
  flat = log_rates.reshape(8, -1)
  assert scores == {
    "whisker_motion_energy_r2": decoding.continuous_r2(flat, behaviour["whisker_motion_energy"], folds=5, seed=1)
  }
  assert folds == {"whisker_motion_energy_r2": 5}
  assert list(skipped) == ["choice_accuracy", "wheel_speed_r2"]
  assert "each class needs at least 4 trials for 2 folds" in skipped["choice_accuracy"]
  assert "{-1: 1, 1: 7}" in skipped["choice_accuracy"]
  assert "constant" in skipped["wheel_speed_r2"]


def test_decode_split_uses_fewer_folds_where_they_are_valid():
  rng = np.random.default_rng(7)
  log_rates, behaviour = _small_split([-1] * 3 + [1] * 9, rng)  # smallest class 3: 3 folds
  scores, folds, skipped = decoding.decode_split(log_rates, behaviour, folds=5, seed=2)
  flat = log_rates.reshape(12, -1)
  assert folds == {"choice_accuracy": 3, "whisker_motion_energy_r2": 5}
  assert scores["choice_accuracy"] == decoding.choice_accuracy(flat, behaviour["choice"], folds=3, seed=2)
  assert list(skipped) == ["wheel_speed_r2"]
  # 4 trials of the trace: 4 folds (3 left to train in each).
  _, folds, _ = decoding.decode_split(
    log_rates[:4], {"whisker_motion_energy": behaviour["whisker_motion_energy"][:4]}, folds=5
  )
  assert folds == {"whisker_motion_energy_r2": 4}
  # Never more folds than asked: 2 folds of a 3-trial class leave 1 to train, too few.
  _, folds, skipped = decoding.decode_split(log_rates, behaviour, folds=2)
  assert folds == {"whisker_motion_energy_r2": 2}
  assert "each class needs at least 4 trials for 2 folds" in skipped["choice_accuracy"]
  # A single class: choice accuracy is undefined.
  _, _, skipped = decoding.decode_split(log_rates, {"choice": np.ones(12)})
  assert "exactly two classes; got 1" in skipped["choice_accuracy"]
  # Malformed input is still an error, not a skip.
  with pytest.raises(ValueError, match="exactly two classes; got 3"):
    decoding.decode_split(log_rates, {"choice": np.arange(12) % 3})
  with pytest.raises(ValueError, match="folds must be"):
    decoding.decode_split(log_rates, behaviour, folds=1)


def test_head_fit_learns_a_trace_and_a_choice_it_can_read():
  """heads.Fit (every family's fine-tuned heads): a linear readout of per-bin features
  learns a linear trace (R^2 > 0.9 on held-out trials, in the targets' own units) and a
  choice that is the sign of the features' mean (accuracy > 0.9)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from mtm_jax.evaluation import heads  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  x = rng.normal(size=(120, 10, 4)).astype(np.float32)  # [K, T, D]
  w = np.array([1.5, -2.0, 0.5, 0.0], np.float32)
  trace = 3.0 + 2.0 * (x @ w)  # [K, T], not standardised
  choice = (x.mean(axis=1) @ w > 0).astype(np.float32)
  for y, per_bin, floor in ((trace, True, 0.9), (choice, False, 0.9)):
    fit = heads.Fit(y[:100], 400, 3e-2, 32, 0)
    assert fit.per_bin == per_bin

    def predict(params, inputs, key, per_bin=per_bin):
      out = inputs @ params["w"] + params["b"]
      return out if per_bin else out.mean(axis=1)

    params = fit.train(predict, dict(w=jnp.zeros(4), b=jnp.zeros(())), lambda idx: jnp.asarray(x[idx]))
    assert fit.score(np.asarray(predict(params, jnp.asarray(x[100:]), None)), y[100:]) > floor
