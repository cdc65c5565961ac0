"""The synthetic species of many animals (mtm_jax.datasets.animals): animals own their
neurons, sessions of an animal share drifting neurons, the statistics are calibrated, the
event sessions bin back to the binned ones, the oracle is the exact mean, and the single
brain is unchanged."""

import hashlib

import numpy as np
import pytest

from data_builders.ibl_binned import ibl_binned
from data_builders.spike_events import spike_events
from mtm_jax.datasets import animals, animals_stats, schema, synthetic, synthetic_events

SMALL = synthetic.SessionSizes(min_neurons=60, max_neurons=90, min_trials=300, max_trials=320)
# sha256 of synthetic_000's arrays (_digest), recorded on main before the species was added.
SYNTHETIC_000_SHA256 = "46370f38533624f0e65c9b58b11142ffe536f63e7cdb664f2fc5264c01a8216d"


def _digest(session: dict) -> str:
  h = hashlib.sha256()
  for key in sorted(session):
    a = np.asarray(session[key])
    h.update(key.encode())
    h.update(str(a.dtype).encode())
    h.update(str(a.shape).encode())
    h.update(a.astype(str).tobytes() if a.dtype.kind in "UO" else np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


@pytest.fixture(scope="module")
def species():
  return animals.species(0)


@pytest.fixture(scope="module")
def small_session():
  animal, spec = animals.session(3, 0, sizes=SMALL)
  return animal.simulate_session(spec)


def test_the_single_brain_is_unchanged():
  brain, spec = synthetic.session(0)
  assert _digest(brain.simulate_session(spec)) == SYNTHETIC_000_SHA256


def test_no_neuron_is_shared_between_animals(species):
  specs = {(a, s): species.animal(a).session_spec(s) for a in range(animals.N_ANIMALS) for s in (0, 1)}
  owner = {}
  for (a, _), spec in specs.items():
    assert np.all(spec.neuron_ids // animals.ID_STRIDE == a)
    for i in spec.neuron_ids:
      assert owner.setdefault(int(i), a) == a
  # Nor any neuron's parameters: every pool neuron of every animal is distinct.
  params = np.concatenate(
    [
      np.column_stack([x.log_baseline, x.loadings, x.interaction, x.arousal, x.drive_gain, x.offset])
      for x in (species.animal(a) for a in range(animals.N_ANIMALS))
    ]
  )
  assert len(np.unique(params, axis=0)) == len(params)
  for column in params[:, [0, -1]].T:  # no shared scalar either
    assert len(np.unique(column)) == len(column)


def test_animals_perturb_a_shared_template(species):
  a, b = species.animal(0), species.animal(1)
  assert not np.allclose(a.dynamics, b.dynamics)
  same = np.corrcoef(a.dynamics.ravel(), b.dynamics.ravel())[0, 1]
  assert same > 0.8  # something to transfer
  assert np.abs(a.dynamics - species.dynamics).max() > 0.01  # something to adapt


def test_sessions_of_an_animal_share_drifting_neurons(species):
  for a in range(animals.N_ANIMALS):
    animal = species.animal(a)
    first, second = animal.session_spec(0), animal.session_spec(1)
    shared = np.intersect1d(first.neuron_ids, second.neuron_ids)
    assert 0 < len(shared) < min(len(first.neuron_ids), len(second.neuron_ids)), a
  animal = species.animal(0)
  local = np.intersect1d(animal.session_spec(0).neuron_ids, animal.session_spec(1).neuron_ids) % animals.ID_STRIDE
  s0, s1 = animal.session_neurons(0), animal.session_neurons(1)
  drift = s1["log_baseline"][local] - s0["log_baseline"][local]
  assert 0.1 < drift.std() < 0.6  # drifts, ...
  assert np.corrcoef(s0["log_baseline"][local], s1["log_baseline"][local])[0, 1] > 0.8  # ... but is the same neuron
  assert np.corrcoef(s0["loadings"][local].ravel(), s1["loadings"][local].ravel())[0, 1] > 0.8
  assert not np.allclose(s0["loadings"][local], s1["loadings"][local])


def test_calibration_within_documented_ranges(small_session):
  schema.validate_session(small_session, where="animals")
  cal = animals_stats.calibration(small_session)
  assert 1.5 < cal["median_rate_hz"] < 5.0, cal
  assert 0.3 < cal["log10_rate_sd"] < 0.6, cal
  assert 1.1 < cal["fano_pre"] < 1.7, cal
  assert 1.0 < cal["fano_post"] < cal["fano_pre"], cal
  assert 0.08 < cal["oracle_bps"] < 0.35, cal
  assert 0.62 < cal["choice_accuracy"] < 0.88, cal
  assert 0.1 < cal["wheel_r2"] < 0.65, cal


def test_oracle_is_the_exact_mean_of_the_counts(small_session):
  """The rates are E[counts] with the gamma gain and the refractory cap integrated out:
  checked by Monte Carlo on a session's own rates and on high rates where the cap bites."""
  c = animals.SpeciesConfig()
  share = animals.gain_share(c)
  rng = np.random.default_rng(0)
  lam_session = np.linspace(0.01, 0.6, 8)  # 0.5-30 Hz at 20 ms
  lam = np.concatenate([lam_session, [6.0, 10.0, 14.0]])  # up to 700 Hz: capped at c.cap
  lam = np.broadcast_to(lam[None, None, :], (1, schema.N_BINS, len(lam)))
  shape = np.array([0.5, 1.0, 1.5, 3.0, 0.7, 2.0, 1.2, 5.0, 0.5, 1.5, 3.0])
  expected = animals.expected_counts(lam, share, shape, c.cap)[0]  # [T, N]
  reps = 4000
  counts = animals.sample_counts(rng, np.broadcast_to(lam, (reps,) + lam.shape[1:]), share, shape, c.cap)
  mean, se = counts.mean(axis=0), counts.std(axis=0) / np.sqrt(reps) + 1e-4
  assert np.all(np.abs(mean - expected) < 5 * se)
  # Pooled over bins (a trial's bins share its gamma gain: the error of the mean over
  # bins is estimated across replicates), the error is far smaller than per bin.
  per_rep = counts.mean(axis=1)  # [reps, N]
  pooled_error = (per_rep.mean(axis=0) - expected.mean(axis=0)) / (per_rep.std(axis=0) / np.sqrt(reps))
  assert np.all(np.abs(pooled_error) < 5), pooled_error
  # The cap changes the mean of the high rates, and no bin holds more than it.
  assert np.all(expected[:, -3:] < lam[0, :, -3:] - 0.2) and np.all(counts <= c.cap)
  # On the session: counts average to the rates (mean over everything, Monte Carlo error ~0.3 %).
  spikes, rates = small_session["spikes"], small_session["rates"]
  np.testing.assert_allclose(spikes.mean(), rates.mean(), rtol=0.03)


def test_event_sessions_bin_to_the_binned_sessions_with_refractory_spikes():
  animal, spec = animals.session(5, 1, sizes=SMALL)
  binned = animal.simulate_session(spec)
  events = synthetic_events.simulate(1, 0, 0, SMALL, session_id="animal05_s1", animal=5)
  parts = schema.split_trials(len(binned["spikes"]), seed=0)
  for split, idx in parts.items():
    back = synthetic_events.binned_split(events, split)
    np.testing.assert_array_equal(back["spikes"], binned["spikes"][idx])
    np.testing.assert_array_equal(back["rates"], binned["rates"][idx])
  refractory = animals.SpeciesConfig().refractory
  for unit in range(len(events.unit_ids)):
    times = events.spike_times[events.spike_units == unit]
    assert np.all(np.diff(times) >= refractory - 1e-9)


def test_builder_configs_are_the_same_sessions_in_both_builders():
  binned = {c.name: c for c in ibl_binned.Builder.BUILDER_CONFIGS if c.name.startswith("animal")}
  events = {c.name: c for c in spike_events.Builder.BUILDER_CONFIGS if c.name.startswith("animal")}
  names = list(animals.POOL_NAMES + animals.HELDOUT_NAMES)
  assert sorted(binned) == sorted(events) == sorted(names) and len(names) == 32
  assert not {n[:8] for n in animals.POOL_NAMES} & {n[:8] for n in animals.HELDOUT_NAMES}
  assert len(animals.HELDOUT_ANIMALS) >= 3 and len(animals.POOL_ANIMALS) >= 12
  for name in names:
    a, b = binned[name], events[name]
    assert (a.animal, a.session_index, a.brain_seed, a.split_seed, a.sizes) == (
      b.animal,
      b.session_index,
      b.brain_seed,
      b.split_seed,
      b.sizes,
    )
    assert a.source == b.source == "synthetic"
