"""The four MtM activity evaluations, batched over held-out neurons.

Each task (mtm_jax.masking.EvalTask) is M masked copies of the test trials; instead of M
separate forward passes, chunks of masks run as one batch of [chunk * trials] sequences
and every neuron's prediction is taken from the pass that scores it. The numbers are
those of the one-mask-at-a-time definition: only the batching differs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtm_jax import masking, metrics
from mtm_jax.datasets import pipeline
from mtm_jax.training import mesh as mesh_lib


def make_predictor(graphdef):
  """Jitted (params, spikes [K,T,N], hide [C,N], score [C,N], hide_bins [T], prompt, causal,
  session) -> [K,T,N] log-rates, summed over the C passes of each entry's scoring mask.
  N is the model's input width (a smaller session is zero-padded)."""

  @jax.jit
  def predict_chunk(params, spikes, hide, score, hide_bins, prompt, causal, session):
    model = nnx.merge(graphdef, params)
    c, (k, t, n) = hide.shape[0], spikes.shape
    hidden = hide[:, None, None, :] & hide_bins[None, None, :, None]  # [C, 1, T, N]
    inputs = jnp.where(hidden, 0.0, spikes[None])  # [C, K, T, N]
    log_rates = model(inputs.reshape(c * k, t, n), prompt=prompt, causal=causal, session=session)
    return jnp.einsum("cktn,cn->ktn", log_rates.reshape(c, k, t, n), score.astype(log_rates.dtype))

  return predict_chunk


def predict_task(predictor, params, spikes: np.ndarray, task: masking.EvalTask, *, causal: bool,
                 max_batch: int = 2048, mesh=None, session: int = 0, n_neurons: int | None = None) -> np.ndarray:
  """[K, T, N] log-rates of each scored neuron under its own mask (0 where unscored).

  session: the model's row of this session; n_neurons: the model's input width (the
  session's N is zero-padded to it, and the padding is cut from the result). With a
  mesh, the masks of a chunk are split over its data axis (params replicated)."""
  n_trials, _, n_session = spikes.shape
  n_model = n_session if n_neurons is None else n_neurons
  n_data = 1 if mesh is None else mesh.shape[mesh_lib.DATA]
  chunk = max(1, max_batch // n_trials // n_data) * n_data
  n_masks = task.hide_neurons.shape[0]
  pad = -n_masks % chunk
  hide = np.pad(task.hide_neurons, ((0, pad), (0, n_model - n_session)))
  score = np.pad(task.score_neurons, ((0, pad), (0, n_model - n_session)))
  prompt = masking.SCHEMES.index(task.prompt)
  place = (lambda x: x) if mesh is None else (lambda x: jax.device_put(x, mesh_lib.batch_sharding(mesh)))
  spikes = jnp.asarray(pipeline.pad_neurons(np.asarray(spikes), n_model), jnp.float32)
  if mesh is not None:
    spikes = jax.device_put(spikes, mesh_lib.replicated(mesh))
  total = 0.0
  for start in range(0, n_masks + pad, chunk):
    total = total + predictor(params, spikes, place(hide[start : start + chunk]), place(score[start : start + chunk]),
                              task.hide_bins, prompt, causal, session)
  return np.asarray(total)[..., :n_session]


def score_task(rates: np.ndarray, spikes: np.ndarray, task: masking.EvalTask) -> np.ndarray:
  """[N] bits per spike of each scored neuron on the task's scored bins (NaN elsewhere).

  rates: expected counts per bin [K, T, N]."""
  bins = task.score_bins
  bps = metrics.bits_per_spike_per_neuron(rates[:, bins], spikes[:, bins].astype(np.float64))
  return np.where(task.scored, bps, np.nan)


def evaluate(graphdef, params, spikes: np.ndarray, region_ids: np.ndarray, *, causal_trained: bool,
             true_rates: np.ndarray | None = None, max_batch: int = 2048, mesh=None, session: int = 0,
             n_neurons: int | None = None, keep_predictions: bool = False) -> dict:
  """The four metrics of one session's trials.

  spikes [K, T, N] counts; region_ids [N]; causal_trained: whether the model learned
  causal attention (MtM, causal masking); the forward-prediction task uses it only then,
  as the reference does. `mesh`: split the masked copies over its data axis (params
  must be replicated on it). session, n_neurons: see predict_task. Returns {"<task>_bps": mean over neurons, "oracle_<task>_bps"
  (with true_rates), "per_neuron": {task: [N]}, and with keep_predictions
  "predictions": {task: [K, T, N] expected counts of the scored entries (0 elsewhere)}}.
  """
  predictor = make_predictor(graphdef)
  results, per_neuron, predictions = {}, {}, {}
  for task in masking.evaluation_tasks(region_ids, spikes.shape[1]):
    causal = causal_trained and task.prompt == "causal"
    log_rates = predict_task(predictor, params, spikes, task, causal=causal, max_batch=max_batch, mesh=mesh,
                             session=session, n_neurons=n_neurons)
    rates = np.exp(log_rates.astype(np.float64))
    bps = score_task(rates, spikes, task)
    if keep_predictions:
      scored = task.score_neurons.any(0)[None, None, :] & task.score_bins[None, :, None]
      predictions[task.name] = np.where(scored, rates, 0.0).astype(np.float32)
    per_neuron[task.name] = bps
    results[f"{task.name}_bps"] = float(np.nanmean(bps))
    if true_rates is not None:
      results[f"oracle_{task.name}_bps"] = float(np.nanmean(score_task(true_rates.astype(np.float64), spikes, task)))
  results["per_neuron"] = per_neuron
  if keep_predictions:
    results["predictions"] = predictions
  return results
