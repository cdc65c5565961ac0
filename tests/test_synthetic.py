"""The synthetic brain has the structure MtM exploits."""

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from mtm_jax.datasets import schema, synthetic


@pytest.fixture(scope="module")
def brain():
  return synthetic.Brain()


@pytest.fixture(scope="module")
def session(brain):
  return brain.simulate_session(brain.session_spec(0, max_trials=320))


def test_session_follows_schema(session):
  schema.validate_session(session, where="synthetic")
  k, t, n = session["spikes"].shape
  assert t == 100 and 100 <= n <= 1000
  assert set(session["regions"]) <= set(synthetic.REGIONS)
  assert set(np.unique(session["choice"])) <= {-1, 1}
  assert set(np.round(np.unique(session["block"]).astype(float), 6).tolist()) <= {0.2, 0.5, 0.8}
  assert ((session["reaction_time"] >= 0.08) & (session["reaction_time"] <= 2)).all()


def test_rates_are_lognormal_few_hz_and_spikes_poisson(session):
  rates_hz = session["rates"].mean(axis=(0, 1)) / schema.BIN_SIZE
  assert 1.0 < np.median(rates_hz) < 15.0
  # Poisson: mean count equals the true rate; variance too (over a large sample).
  np.testing.assert_allclose(session["spikes"].mean(), session["rates"].mean(), rtol=0.02)
  resid = session["spikes"] - session["rates"]
  np.testing.assert_allclose(np.mean(resid**2), session["rates"].mean(), rtol=0.03)


def test_sessions_differ_but_share_the_brain(brain):
  specs = [brain.session_spec(i) for i in range(8)]
  sizes = [len(s.neuron_ids) for s in specs]
  assert min(sizes) >= 100 and max(sizes) <= 1000 and len(set(sizes)) == 8
  assert len({s.n_trials for s in specs}) > 1
  assert len({tuple(np.unique(brain.neuron_region[s.neuron_ids])) for s in specs}) > 1
  # Sessions sample the same pool: different neurons, shared parameters.
  assert not np.array_equal(specs[0].neuron_ids, specs[1].neuron_ids)
  # Deterministic given the seed.
  again = synthetic.Brain().session_spec(3)
  np.testing.assert_array_equal(again.neuron_ids, specs[3].neuron_ids)


def test_regions_are_partly_predictable_from_each_other(session):
  """Single-trial region activity is predictable from other regions, but not fully."""
  log_rates = np.log(session["rates"])
  residual = log_rates - log_rates.mean(axis=0, keepdims=True)  # single-trial part
  regions = session["regions"]
  scores = []
  for r in np.unique(regions):
    inside = residual[:, :, regions == r].reshape(-1, (regions == r).sum())
    outside = residual[:, :, regions != r].reshape(-1, (regions != r).sum())
    half = len(inside) // 2
    model = Ridge(alpha=1.0).fit(outside[:half], inside[:half])
    scores.append(model.score(outside[half:], inside[half:]))
  assert 0.2 < np.mean(scores) < 0.98, scores


def test_behaviour_is_driven_by_latents(session):
  wheel = session["wheel_speed"]
  assert wheel.shape == session["spikes"].shape[:2]
  # Wheel speed rises after the reaction time (movement), on average.
  t = -0.5 + 0.02 * (np.arange(100) + 0.5)
  before = wheel[:, t < 0].mean()
  after = np.mean([wheel[k, (t > rt) & (t < rt + 0.3)].mean() for k, rt in enumerate(session["reaction_time"])])
  assert after > before + 0.1
