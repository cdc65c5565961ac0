"""The batched evaluation against the one-neuron-at-a-time definition of the metrics."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtm_jax import masking, metrics
from mtm_jax.evaluation import tasks
from mtm_jax.models import ndt1


def _definition(model, spikes, region_ids, *, session, n_model):
  """{task: [N] bits per spike}: one full forward pass per mask, the scored neuron's
  prediction kept, each neuron scored on its own (the reference's loop)."""
  k, t, n = spikes.shape
  padded = jnp.asarray(np.pad(spikes, ((0, 0), (0, 0), (0, n_model - n))))
  forward = jax.jit(lambda x, prompt, causal: model(x, prompt=prompt, session=session, causal=causal))
  out = {}
  for task in masking.evaluation_tasks(region_ids, t):
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
  got = tasks.evaluate(graphdef, params, spikes, region_ids, causal_trained=True, max_batch=12, session=1,
                       n_neurons=10)
  want = _definition(model, spikes, region_ids, session=1, n_model=10)
  for name, expected in want.items():
    np.testing.assert_allclose(got["per_neuron"][name], expected, rtol=1e-5, atol=0, err_msg=name)
    assert np.isclose(got[f"{name}_bps"], np.nanmean(expected), rtol=1e-5, atol=0), name


def test_single_neuron_groups_decompose_the_masks():
  region_ids = np.array([0, 0, 1, 1, 1, 2])
  co, forward, inter, intra = masking.evaluation_tasks(region_ids, 100)
  (shared, neurons), = tasks.single_neuron_groups(co)
  assert not shared.any() and list(neurons) == list(range(6))
  groups = tasks.single_neuron_groups(intra)
  assert len(groups) == 3  # one shared hide set (the other regions) per region
  for shared, neurons in groups:
    r = region_ids[neurons[0]]
    assert (region_ids[neurons] == r).all() and (shared == (region_ids != r)).all()
  assert tasks.single_neuron_groups(inter) is None and tasks.single_neuron_groups(forward) is None
