"""Spike-time sessions of the synthetic brain: the binned counts, fine rates, the builder, bin_spikes."""

import dataclasses

import numpy as np
import pytest

from tests.conftest import DATASET
from data_builders import prepare
from data_builders.ibl_binned import ibl_binned
from data_builders.spike_events import spike_events
from mtm_jax.datasets import pipeline, schema, synthetic
from mtm_jax.datasets import synthetic_events as se
from mtm_jax.datasets.events import binning
from mtm_jax.datasets.events import session as session_lib
from mtm_jax.datasets.events import tfds as tfds_lib

SMALL = synthetic.SessionSizes(min_neurons=20, max_neurons=30, min_trials=300, max_trials=320)


@pytest.fixture(scope="module")
def simulated():
  """A small session (20-30 neurons, 300-320 trials): brain, spec and its event session."""
  brain, spec = synthetic.session(0, sizes=SMALL)
  return brain, spec, se.event_session(brain, spec, split_seed=3)


def test_event_counts_are_the_binned_counts(simulated):
  brain, spec, ev = simulated
  sim = brain.simulate_session(spec)
  intervals = np.stack([ev.trial_starts, ev.trial_ends], axis=1)
  counts = binning.bin_spikes(ev, intervals, schema.BIN_SIZE, schema.N_BINS)
  assert counts.shape == sim["spikes"].shape and counts.sum() == len(ev.spike_times) > 10_000
  np.testing.assert_array_equal(counts, sim["spikes"])
  # The split is the binned builder's draw; binned_split gives the binned arrays of its trials.
  parts = schema.split_trials(spec.n_trials, seed=3)
  test = se.binned_split(ev, "test")
  np.testing.assert_array_equal(test["trial_index"], parts["test"])
  for key in ("spikes", "rates", "wheel_speed", "whisker_motion_energy") + schema.TRIAL_FIELDS:
    np.testing.assert_array_equal(test[key], sim[key][parts["test"]], err_msg=key)
  np.testing.assert_array_equal(test["regions"], sim["regions"])


def test_session_layout(simulated):
  _, spec, ev = simulated
  ev.validate("synthetic event session")
  k = spec.n_trials
  np.testing.assert_allclose(ev.trial_starts, np.arange(k) * 2.5)
  np.testing.assert_allclose(ev.trial_ends - ev.trial_starts, 2.0)
  times = ev.spike_times
  assert np.all(np.diff(times) >= 0)
  trial = np.searchsorted(ev.trial_starts, times, side="right") - 1
  assert np.all(times >= ev.trial_starts[trial]) and np.all(times < ev.trial_ends[trial])
  centres = ev.trial_starts[:, None] + 0.02 * (np.arange(100) + 0.5)
  np.testing.assert_allclose(ev.behaviour_timestamps, centres.reshape(-1), rtol=0, atol=1e-12)
  assert ev.behaviour_values.shape == (k * 100, 2) and np.all(ev.behaviour_weights == 1)
  assert ev.behaviour_name == "wheel_speed,whisker_motion_energy"
  assert ev.unit_ids[0] == f"{spec.name}/{spec.neuron_ids[0]}" and set(ev.unit_regions) <= set(synthetic.REGIONS)
  assert ev.extras["rates"].shape == (k, 100, len(spec.neuron_ids)) and ev.extras["rates"].dtype == np.float32
  for name in se.TRIAL_EXTRAS:
    assert ev.extras[name].shape == (k,), name
  for name, idx in schema.split_trials(k, seed=3).items():
    np.testing.assert_array_equal(ev.extras["split_trials"][name], idx)
    np.testing.assert_array_equal(ev.splits[name][:, 0], ev.trial_starts[idx])


def test_fine_rates_keep_the_bins_and_rates_at_any_width(simulated):
  rates = simulated[2].extras["rates"][:20]
  fine = se.fine_rates(rates)
  assert fine.shape == (20, 2000, rates.shape[2]) and np.all(fine > 0)
  np.testing.assert_allclose(se.rates_at(fine, 0.02), rates, rtol=1e-5)
  np.testing.assert_allclose(fine.reshape(20, 100, 20, -1).sum(2), rates, rtol=1e-5)
  r10, r5 = se.rates_at(fine, 0.01), se.rates_at(fine, 0.005)
  assert r10.shape[1] == 200 and r5.shape[1] == 400
  np.testing.assert_allclose(r5.reshape(20, 200, 2, -1).sum(2), r10, rtol=1e-10)
  # The within-bin profile follows the interpolated rate: a ramp rises inside every inner bin,
  # a constant rate stays flat (also before the first and after the last bin centre).
  ramp = se.fine_rates(np.arange(1.0, 6.0)[None, :, None])[0, :, 0].reshape(5, 20)
  assert np.all(np.diff(ramp[1:-1], axis=1) > 0)
  np.testing.assert_allclose(se.fine_rates(np.full((1, 5, 1), 0.1)), 0.005)
  with pytest.raises(ValueError, match="width"):
    se.rates_at(fine, 0.003)  # 1 ms multiple that does not divide the trial
  with pytest.raises(ValueError, match="width"):
    se.rates_at(fine, 0.0025)


def test_spikes_at_5ms_follow_the_oracle(simulated):
  """Counts per 5 ms bin, summed over trials, match rates_at(0.005) (Poisson: z-scores ~ N(0, 1)),
  and the within-bin placement is the fine density, distinguishable from a uniform one."""
  _, spec, ev = simulated
  k = spec.n_trials
  intervals = np.stack([ev.trial_starts, ev.trial_ends], axis=1)
  c5 = binning.bin_spikes(ev, intervals, 0.005, 400).astype(np.float64)
  r5 = se.rates_at(se.fine_rates(ev.extras["rates"]), 0.005)
  z = (c5.sum(0) - r5.sum(0)) / np.sqrt(r5.sum(0))  # [400, N]
  assert abs(z.mean()) < 0.1 and 0.85 < z.std() < 1.15, (z.mean(), z.std())
  assert np.mean(np.abs(z) > 4) < 0.002
  # Given the 20 ms counts, the quarters of a bin are multinomial with p = r5 / r20.
  c20 = c5.reshape(k, 100, 4, -1).sum(2, keepdims=True)
  p = r5.reshape(k, 100, 4, -1) / r5.reshape(k, 100, 4, -1).sum(2, keepdims=True)
  lean = p - 0.25  # how the density leans inside its bin
  observed = np.sum(lean * c5.reshape(k, 100, 4, -1))
  expected, uniform = np.sum(lean * c20 * p), np.sum(lean * c20 * 0.25)
  sd = np.sqrt(np.sum(lean**2 * c20 * p))  # an upper bound (multinomial covariances are negative)
  assert abs(observed - expected) < 4 * sd, (observed, expected, sd)
  assert abs(uniform - expected) > 8 * sd, (uniform, expected, sd)  # the check can tell them apart


def _tiny(times, units, n_units=2):
  order = np.argsort(times, kind="stable")
  return session_lib.EventSession(
    session_id="tiny",
    spike_times=np.asarray(times, np.float64)[order],
    spike_units=np.asarray(units, np.int32)[order],
    unit_ids=np.array([f"tiny/{u}" for u in range(n_units)], dtype=object),
    unit_regions=np.array(["CA1"] * n_units, dtype=object),
    behaviour_name="x",
    behaviour_timestamps=np.array([0.0]),
    behaviour_values=np.zeros((1, 1), np.float32),
    behaviour_weights=np.ones(1, np.float32),
    trial_starts=np.array([1.0]),
    trial_ends=np.array([2.0]),
    splits={"train": np.array([[1.0, 2.0]])},
  )


def test_bin_spikes_edges_and_arguments():
  # Exactly representable times: 1.25 and 1.5 are inner edges, 2.0 the end, 0.5 before.
  ev = _tiny([0.5, 1.0, 1.1, 1.25, 1.5, 1.5, 1.999, 2.0, 3.2], [0, 0, 1, 0, 1, 0, 1, 0, 0])
  counts = binning.bin_spikes(ev, [[1.0, 2.0], [1.5, 2.5], [3.0, 3.5]], 0.25, 2)
  assert counts.dtype == np.int32 and counts.shape == (3, 2, 2)
  np.testing.assert_array_equal(counts[0], [[1, 1], [1, 0]])  # [1, 1.5): 1.0, 1.1, 1.25 (later bin)
  np.testing.assert_array_equal(counts[1], [[1, 1], [0, 1]])  # overlapping interval: 1.5 x2, 1.999
  np.testing.assert_array_equal(counts[2], [[1, 0], [0, 0]])  # 3.2 is relative 0.2 < 0.25
  full = binning.bin_spikes(ev, [[1.0, 2.0]], 0.25, 4)
  np.testing.assert_array_equal(full[0].sum(1), [2, 1, 2, 1])  # 2.0 (the end) and 0.5 are left out
  assert binning.bin_spikes(_tiny([], []), [[1.0, 2.0]], 0.5, 2).sum() == 0
  assert binning.bin_spikes(ev, np.zeros((0, 2)), 0.5, 2).shape == (0, 2, 2)
  for kwargs, name in [
    (dict(width=0.0), "width"),
    (dict(width=-0.1), "width"),
    (dict(width=float("nan")), "width"),
    (dict(n_bins=0), "n_bins"),
    (dict(n_bins=2.5), "n_bins"),
    (dict(intervals=[1.0, 2.0]), "intervals"),
    (dict(intervals=[[1.0, 2.0, 3.0]]), "intervals"),
    (dict(intervals=[[1.0, np.nan]]), "intervals"),
    (dict(intervals=[[1.0, 1.4]]), "intervals"),  # shorter than n_bins * width
  ]:
    args = {**dict(intervals=[[1.0, 2.0]], width=0.25, n_bins=4), **kwargs}
    with pytest.raises(ValueError, match=name):
      binning.bin_spikes(ev, **args)


def test_builder_configs_are_the_binned_sessions():
  binned = {c.name: c for c in ibl_binned.Builder.BUILDER_CONFIGS if c.name.startswith("synthetic_")}
  events = {c.name: c for c in spike_events.Builder.BUILDER_CONFIGS if c.name.startswith("synthetic_")}
  assert sorted(events) == sorted(binned) == [f"synthetic_{i:03d}" for i in range(synthetic.N_SESSIONS)]
  for name, c in events.items():
    b = binned[name]
    assert (c.source, c.session_index, c.brain_seed, c.split_seed, c.sizes) == (
      b.source,
      b.session_index,
      b.brain_seed,
      b.split_seed,
      b.sizes,
    )
  assert dataclasses.asdict(events["synthetic_000"].sizes) == dict(
    min_neurons=100, max_neurons=1000, min_trials=300, max_trials=700
  )


def test_built_event_set_bins_to_the_binned_set(data_dir):
  """spike_events/synthetic_000 binned at 20 ms is ibl_binned/synthetic_000, trial for trial."""
  name = "spike_events/" + DATASET.split("/")[1]
  prepare.build([name], data_dir)
  binned = pipeline.load_split(DATASET, data_dir, "test")
  ev = tfds_lib.load_event_session(name, data_dir, splits=("test",))
  np.testing.assert_array_equal(ev.extras["split_trials"]["test"], binned["trial_index"])
  assert ev.extras["rates"].shape == binned["rates"].shape  # only the trials read
  events = se.binned_split(ev, "test")
  assert sorted(set(events) - {"regions"}) == sorted(binned)
  for key, value in binned.items():
    np.testing.assert_array_equal(events[key], value, err_msg=key)
  np.testing.assert_array_equal(events["regions"], pipeline.session_info(DATASET, data_dir).region_names)
  fine = se.binned_split(ev, "test", width=0.01)
  assert fine["spikes"].shape[1] == 200
  np.testing.assert_array_equal(fine["spikes"].reshape(len(fine["spikes"]), 100, 2, -1).sum(2), binned["spikes"])
