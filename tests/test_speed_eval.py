"""The batched evaluation against the one-neuron-at-a-time definition of the metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mtm_jax import masking, metrics
from mtm_jax.evaluation import activity
from mtm_jax.models import ndt1
from mtm_jax.parallel import mesh as mesh_lib


def _definition(model, spikes, region_ids, *, session, n_model):
  """{task: [N] bits per spike}: one full forward pass per mask, the scored neuron's
  prediction kept, each neuron scored on its own (the reference's loop)."""
  k, t, n = spikes.shape
  padded = jnp.asarray(np.pad(spikes, ((0, 0), (0, 0), (0, n_model - n))))
  forward = jax.jit(lambda x, prompt, causal: model(x, prompt=prompt, session=session, causal=causal))
  out = {}
  for task in masking.evaluation_masks(region_ids, t):
    causal = task.prompt == "causal"
    rates = np.zeros(spikes.shape)
    for m in range(task.hide_neurons.shape[0]):
      hide = np.pad(task.hide_neurons[m], (0, n_model - n))
      hidden = hide[None, None, :] & task.hide_bins[None, :, None]
      log_rates = np.asarray(forward(jnp.where(hidden, 0.0, padded), masking.SCHEMES.index(task.prompt), causal))
      scored = task.score_neurons[m]
      rates[:, :, scored] = np.exp(log_rates[:, :, :n][:, :, scored].astype(np.float64))
    bins = task.score_bins
    bps = metrics.bits_per_spike_per_neuron(rates[:, bins], spikes[:, bins].astype(np.float64))
    out[task.name] = np.where(task.scored, bps, np.nan)
  return out


def test_batched_evaluation_matches_one_neuron_at_a_time():
  # Two sessions (10 and 7 neurons), scoring the smaller one: stitch tables, session row
  # 1 and zero-padded neurons are all exercised.
  model = ndt1.NDT1([10, 7], width=16, n_layers=1, n_heads=2, mlp_width=32, stitch_dim=8, rngs=nnx.Rngs(5))
  graphdef, params = nnx.split(model, nnx.Param)
  rng = np.random.default_rng(2)
  spikes = rng.poisson(0.8, (6, 100, 7)).astype(np.float32)
  region_ids = np.array([0, 0, 1, 1, 1, 2, 2])
  # 6 trials, max_batch 12: chunks of 2 masks, the last chunk of co-smoothing padded.
  got = activity.evaluate(
    graphdef, params, spikes, region_ids, causal_trained=True, max_batch=12, session=1, n_neurons=10
  )
  want = _definition(model, spikes, region_ids, session=1, n_model=10)
  for name, expected in want.items():
    np.testing.assert_allclose(got["per_neuron"][name], expected, rtol=1e-5, atol=0, err_msg=name)
    assert np.isclose(got[f"{name}_bps"], np.nanmean(expected), rtol=1e-5, atol=0), name


def test_evaluation_over_a_mesh_matches_one_device():
  # The masked copies of a chunk split over a 2-device data axis (params replicated).
  model = ndt1.NDT1([10, 7], width=16, n_layers=1, n_heads=2, mlp_width=32, stitch_dim=8, rngs=nnx.Rngs(5))
  graphdef, params = nnx.split(model, nnx.Param)
  spikes = np.random.default_rng(3).poisson(0.5, (6, 100, 7)).astype(np.float32)
  region_ids = np.array([0, 0, 1, 1, 1, 2, 2])
  mesh = mesh_lib.make_mesh(2, 1, devices=jax.devices()[:2])
  kwargs = dict(causal_trained=True, max_batch=12, session=1, n_neurons=10)
  one = activity.evaluate(graphdef, params, spikes, region_ids, **kwargs)
  two = activity.evaluate(
    graphdef, jax.device_put(params, mesh_lib.replicated(mesh)), spikes, region_ids, mesh=mesh, **kwargs
  )
  for name, expected in one["per_neuron"].items():
    np.testing.assert_allclose(two["per_neuron"][name], expected, rtol=1e-6, atol=0, err_msg=name)


def test_single_neuron_groups_decompose_the_masks():
  region_ids = np.array([0, 0, 1, 1, 1, 2])
  co, forward, inter, intra = masking.evaluation_masks(region_ids, 100)
  ((shared, neurons),) = activity.single_neuron_groups(co)
  assert not shared.any() and list(neurons) == list(range(6))
  groups = activity.single_neuron_groups(intra)
  assert len(groups) == 3  # one shared hide set (the other regions) per region
  for shared, neurons in groups:
    r = region_ids[neurons[0]]
    assert (region_ids[neurons] == r).all() and (shared == (region_ids != r)).all()
  assert activity.single_neuron_groups(inter) is None and activity.single_neuron_groups(forward) is None


def test_fired_bins_lists_each_copys_spiking_hidden_bins_padded_to_a_bucket():
  rng = np.random.default_rng(0)
  spikes = rng.poisson(0.3, (4, 10, 6)).astype(np.float32)  # [K, T, N]
  neurons = np.array([5, 2, 2])  # a chunk's copies (the last one padding-duplicated)
  hide_bins = np.arange(10) >= 3
  fired = activity.fired_bins(spikes, neurons, hide_bins, buckets=8)
  assert fired.dtype == np.int32 and fired.shape[0] == 3
  step = -(-4 * 10 * 3 // 8)
  assert fired.shape[1] % step == 0
  real = fired[:, fired[0] < len(neurons)]
  assert (fired[0][real.shape[1] :] == len(neurons)).all()  # the padding comes last, marked copy = C
  got = {tuple(x) for x in real.T}
  want = {
    (c, k, t)
    for c, n in enumerate(neurons)
    for k in range(4)
    for t in range(10)
    if spikes[k, t, n] != 0 and hide_bins[t]
  }
  assert got == want and real.shape[1] == len(want)
  # No spikes at all: one bucket of padding only.
  empty = activity.fired_bins(np.zeros_like(spikes), neurons, hide_bins, buckets=8)
  assert empty.shape == (3, step) and (empty[0] == len(neurons)).all()


def test_a_subsample_of_masks_scores_the_same_neurons_the_same():
  """eval.max_masks: the four tasks score one fixed random sample of the neurons (the same
  for every task and any model of the session), each exactly as the full evaluation does."""
  model = ndt1.NDT1([10, 7], width=16, n_layers=1, n_heads=2, mlp_width=32, stitch_dim=8, rngs=nnx.Rngs(5))
  graphdef, params = nnx.split(model, nnx.Param)
  rng = np.random.default_rng(3)
  spikes = rng.poisson(0.5, (5, 20, 7)).astype(np.float32)
  region_ids = np.array([0, 0, 1, 1, 1, 2, 2])
  kwargs = dict(causal_trained=True, max_batch=12, session=1, n_neurons=10)
  full = activity.evaluate(graphdef, params, spikes, region_ids, **kwargs)
  part = activity.evaluate(graphdef, params, spikes, region_ids, max_masks=3, **kwargs)
  sample = masking.neuron_sample(7, 3)
  assert sample.sum() == 3
  for name in ("co_smoothing", "forward_prediction", "inter_region", "intra_region"):
    scored = np.isfinite(part["per_neuron"][name])
    np.testing.assert_array_equal(scored, sample, err_msg=name)
    np.testing.assert_allclose(part["per_neuron"][name][scored], full["per_neuron"][name][scored], rtol=1e-5)
    assert part[f"{name}_bps"] == pytest.approx(float(np.mean(full["per_neuron"][name][scored])), rel=1e-6)
  # inter-region hides every region holding a sampled neuron, whole, and no other
  inter = masking.evaluation_masks(region_ids, 20, max_masks=3)[2]
  assert {tuple(m) for m in inter.hide_neurons.tolist()} == {
    tuple((region_ids == r).tolist()) for r in np.unique(region_ids[sample])
  }
  again = masking.evaluation_masks(region_ids, 20, max_masks=3)
  assert [t.score_neurons.tolist() for t in again] == [
    t.score_neurons.tolist() for t in masking.evaluation_masks(region_ids, 20, max_masks=3)
  ]
  with_all = masking.evaluation_masks(region_ids, 20, max_masks=0)
  assert [t.score_neurons.shape[0] for t in with_all] == [7, 1, 3, 7]
