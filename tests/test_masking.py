"""The masking schemes mean what the reference says (property tests)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mtm_jax import masking

CONFIG = masking.MaskConfig(ratio=0.3, causal_ratio=0.6)


SHAPE = (3, 8, 12)  # [batch, time, neurons]: one shape, so one compilation


@st.composite
def batches(draw):
  """Random region labels (ids 0-6, any subset present) and keys; spikes all >= 1."""
  regions = np.array(draw(st.lists(st.integers(0, 6), min_size=SHAPE[2], max_size=SHAPE[2])), np.int32)
  spikes = np.random.default_rng(draw(st.integers(0, 2**16))).poisson(1.0, SHAPE).astype(np.float32) + 1
  return spikes, regions, draw(st.integers(0, 2**30))


_apply_jit = jax.jit(lambda key, spikes, regions, scheme: masking.apply_scheme(key, spikes, regions, scheme, CONFIG))


def _apply(spikes, regions, seed, scheme):
  m = _apply_jit(
    jax.random.key(seed), jnp.asarray(spikes), jnp.asarray(regions), jnp.asarray(masking.scheme_index(scheme))
  )
  return np.asarray(m.inputs), np.asarray(m.targets), bool(m.causal), int(m.scheme)


def _hidden(spikes, inputs):
  # spikes are >= 1 everywhere, so a zero input means hidden.
  return inputs == 0


# scheme -> (axis along which a hidden block extends: 2 = all neurons of a bin,
# 1 = all bins of a neuron; whether attention is causal)
_BLOCK_SCHEMES = {"temporal": (2, False), "causal": (2, True), "neuron": (1, False)}


@pytest.mark.parametrize("scheme", sorted(_BLOCK_SCHEMES))
@settings(max_examples=40, deadline=None)
@given(batch=batches())
def test_bin_and_neuron_schemes_hide_whole_blocks(scheme, batch):
  spikes, regions, seed = batch
  inputs, targets, causal, index = _apply(spikes, regions, seed, scheme)
  axis, expect_causal = _BLOCK_SCHEMES[scheme]
  hidden = _hidden(spikes, inputs)
  first = hidden[:, :, :1] if axis == 2 else hidden[:, :1, :]
  assert (hidden == first).all()  # whole bins (temporal, causal) or whole neurons
  np.testing.assert_array_equal(targets, hidden)
  np.testing.assert_array_equal(inputs[~hidden], spikes[~hidden])
  assert causal == expect_causal and index == masking.scheme_index(scheme)


@settings(max_examples=40, deadline=None)
@given(batches())
def test_inter_region_hides_exactly_one_present_region(batch):
  spikes, regions, seed = batch
  inputs, targets, _, _ = _apply(spikes, regions, seed, "inter-region")
  hidden = _hidden(spikes, inputs)
  neurons = hidden.all(axis=(0, 1))
  assert (hidden == neurons[None, None]).all()  # same neurons, every trial and bin
  hidden_regions = set(regions[neurons].tolist())
  assert len(hidden_regions) == 1
  region = hidden_regions.pop()
  np.testing.assert_array_equal(neurons, regions == region)  # all of that region
  np.testing.assert_array_equal(targets, hidden)


@settings(max_examples=40, deadline=None)
@given(batches())
def test_intra_region_hides_outside_and_targets_hidden_inside(batch):
  spikes, regions, seed = batch
  inputs, targets, _, _ = _apply(spikes, regions, seed, "intra-region")
  hidden = _hidden(spikes, inputs)
  assert (hidden == hidden[:, :1]).all()  # whole neurons
  # The chosen region: the one of the targets and visible neurons (one region only).
  involved = (~hidden | targets).any(axis=(0, 1))
  chosen = set(regions[involved].tolist())
  assert len(chosen) <= 1
  candidates = chosen or set(regions.tolist())  # all of it hidden and no target drawn
  ok = False
  for region in candidates:
    inside = regions == region
    ok |= bool(hidden[:, :, ~inside].all() and np.array_equal(targets, hidden & inside[None, None]))
  assert ok


def test_mtm_draws_each_scheme_uniformly():
  keys = jax.random.split(jax.random.key(0), 4000)
  draws = np.asarray(jax.vmap(lambda k: masking.sample_scheme(k, masking.MTM))(keys))
  counts = np.bincount(draws, minlength=len(masking.SCHEMES))
  assert len(counts) == len(masking.SCHEMES)  # temporal (index 4) never drawn
  np.testing.assert_allclose(counts / len(draws), 0.25, atol=0.03)


def test_ratios_are_respected():
  spikes = jnp.ones((64, 100, 50))
  regions = jnp.zeros(50, jnp.int32)
  for scheme, ratio in (("temporal", 0.3), ("neuron", 0.3), ("causal", 0.6)):
    m = masking.apply_scheme(jax.random.key(1), spikes, regions, jnp.asarray(masking.scheme_index(scheme)), CONFIG)
    assert abs(float(np.mean(np.asarray(m.targets))) - ratio) < 0.03, scheme


def test_padding_neurons_are_hidden_and_never_targets():
  spikes = np.ones(SHAPE, np.float32)
  regions = np.array([0, 0, 1, 1, -1, -1] * 2, np.int32)[[0, 1, 2, 3, 6, 7, 8, 9, 4, 5, 10, 11]]
  for scheme in masking.SCHEMES + (masking.TEMPORAL,):
    for seed in range(5):
      inputs, targets, _, _ = _apply(spikes, regions, seed, scheme)
      assert (inputs[:, :, 8:] == 0).all()
      assert not targets[:, :, 8:].any()


def test_unknown_scheme_is_a_clear_error():
  with pytest.raises(ValueError, match="unknown 'space'"):
    masking.scheme_index("space")


def test_evaluation_tasks():
  regions = np.array([0, 0, 1, 2, 2, 2])
  co, fwd, inter, intra = masking.evaluation_masks(regions, 100)
  # co-smoothing: neuron i alone hidden and scored, every bin
  np.testing.assert_array_equal(co.hide_neurons, np.eye(6, dtype=bool))
  assert co.hide_bins.all() and co.prompt == "neuron"
  # forward prediction: bins 90-99 of all neurons
  assert np.flatnonzero(fwd.hide_bins).tolist() == list(range(90, 100))
  assert fwd.hide_neurons.all() and fwd.prompt == "causal"
  # inter-region: one mask per region, hiding and scoring exactly it
  assert inter.hide_neurons.tolist() == [[r == k for r in regions] for k in (0, 1, 2)]
  # intra-region: for neuron i, everything outside its region plus i hidden; i scored
  for m, i in enumerate(range(6)):
    expected = regions != regions[i]
    expected[i] = True
    np.testing.assert_array_equal(intra.hide_neurons[m], expected)
    assert np.flatnonzero(intra.score_neurons[m]).tolist() == [i]
  for task in (co, fwd, inter, intra):
    assert (task.score_neurons.sum(0) == 1).all()  # every neuron scored exactly once


_suffix_jit = jax.jit(
  lambda key, spikes, regions: masking.apply_scheme(
    key,
    spikes,
    regions,
    jnp.asarray(masking.scheme_index("causal")),
    masking.MaskConfig(causal_ratio=0.6, causal_suffix=True),
  )
)


@settings(max_examples=30, deadline=None)
@given(batch=batches())
def test_causal_suffix_hides_every_bin_from_a_cut_in_the_last_causal_ratio(batch):
  spikes, regions, seed = batch
  m = _suffix_jit(jax.random.key(seed), jnp.asarray(spikes), jnp.asarray(regions))
  hidden = _hidden(spikes, np.asarray(m.inputs))
  assert bool(m.causal)
  np.testing.assert_array_equal(np.asarray(m.targets), hidden)
  bins = hidden.all(axis=2)  # whole bins
  assert (hidden == bins[:, :, None]).all()
  t = SHAPE[1]
  for row in bins:
    cut = int(np.argmax(row))
    assert row[cut:].all() and not row[:cut].any()  # a suffix
    assert round(t * 0.4) <= cut <= t - 1  # drawn in the last causal_ratio of the bins, the first bin kept
