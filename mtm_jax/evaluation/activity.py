"""The four MtM activity evaluations, batched over held-out neurons.

A metric's masks (mtm_jax.masking.EvalMasks) are M masked copies of the test trials; instead of M
separate forward passes, chunks of masks run as one batch of [chunk * trials] sequences
and every neuron's prediction is taken from the pass that scores it. Co-smoothing and
intra-region prediction (one scored neuron per mask) share the input embedding of the
unhidden neurons and read out only the scored neuron (see make_predictor). The numbers
are those of the one-mask-at-a-time definition up to float32 rounding: only the
batching differs (tests/test_evaluation.py, tests/test_speed_eval.py).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from mtm_jax import masking, metrics, progress
from mtm_jax.datasets import pipeline
from mtm_jax.parallel import mesh as mesh_lib


class Predictor(NamedTuple):
  """The jitted forward passes of one model (graphdef); see make_predictor."""

  masked: Callable  # (params, spikes [K,T,N], hide [C,N], score [C,N], hide_bins [T], prompt, causal, session)
  #                   -> [K,T,N] log-rates summed over the C passes of each entry's scoring mask
  base: Callable  # (params, spikes [K,T,N], hide [N], hide_bins [T], session) -> (input pre-activation
  #                 of the masked trials [K,T,E], their input embeddings [K,T,D], input rows [N,E])
  single: Callable  # (params, spikes, pre, emb, rows, neurons [C], fired [3,F], prompt, causal, session)
  #                   -> [C,K,T] log-rates of neurons[c] with it also hidden


def make_predictor(graphdef) -> Predictor:
  """The jitted forward passes of the evaluation. N is the model's input width (a smaller
  session is zero-padded).

  `masked` runs C masked copies of the K trials as one batch of C * K sequences. For
  masks that hide one scored neuron on top of a shared set (co-smoothing: nothing else;
  intra-region: the other regions), `base` embeds the trials with the shared set hidden
  once, and `single` derives each copy's input embedding from it: the input map before
  the softsign is affine in the counts (NDT1.input_preactivation), so hiding neuron i
  subtracts count_i * row_i, which changes only the bins where neuron i fired. `single`
  re-embeds just those (`fired`: the (copy, trial, bin) triples from `fired_bins`; the
  other bins keep the shared embedding) and reads out only neuron i (a column of the
  output layer). Same numbers as `masked` up to float32 rounding, without the [N, 2N]
  input product and the [D, N] readout of each copy, and with the [2N, D] projection
  only at the fired bins (a fifth of them at 0.2 spikes per bin)."""

  @jax.jit
  def masked(params, spikes, hide, score, hide_bins, prompt, causal, session):
    model = nnx.merge(graphdef, params)
    c, (k, t, n) = hide.shape[0], spikes.shape
    hidden = hide[:, None, None, :] & hide_bins[None, None, :, None]  # [C, 1, T, N]
    inputs = jnp.where(hidden, 0.0, spikes[None])  # [C, K, T, N]
    log_rates = model(inputs.reshape(c * k, t, n), prompt=prompt, causal=causal, session=session)
    return jnp.einsum("cktn,cn->ktn", log_rates.reshape(c, k, t, n), score.astype(log_rates.dtype))

  @jax.jit
  def base(params, spikes, hide, hide_bins, session):
    model = nnx.merge(graphdef, params)
    n = spikes.shape[-1]
    hidden = hide[None, None, :] & hide_bins[None, :, None]  # [1, T, N]
    pre = model.input_preactivation(jnp.where(hidden, 0.0, spikes), session)  # [K, T, E]
    eye = jnp.eye(n, dtype=spikes.dtype)[None]  # [1, N, N]: one "bin" per neuron
    rows = (
      model.input_preactivation(eye, session)[0] - model.input_preactivation(jnp.zeros_like(eye[:, :1]), session)[0]
    )  # [N, E]
    return pre, model.embed_preactivation(pre), rows

  @jax.jit
  def single(params, spikes, pre, emb, rows, neurons, fired, prompt, causal, session):
    model = nnx.merge(graphdef, params)
    c, (k, t, d) = neurons.shape[0], emb.shape
    copy, trial, time = fired[0], fired[1], fired[2]  # [F] each; copy == C: padding, dropped
    neuron = neurons[jnp.minimum(copy, c - 1)]  # [F]
    pre_f = pre[trial, time] - spikes[trial, time, neuron][:, None] * rows[neuron]  # [F, E]
    x = jnp.broadcast_to(emb[None], (c, k, t, d))  # [C, K, T, D]: the shared embedding ...
    x = x.at[copy, trial, time].set(model.embed_preactivation(pre_f), mode="drop")  # ... re-embedded where fired
    hidden = model.encode_embedded(x.reshape(c * k, t, d), prompt=prompt, causal=causal, session=session)
    out = model.read_out_neurons(hidden, jnp.repeat(neurons, k), session)  # [C * K, T]
    return out.reshape(c, k, t)

  return Predictor(masked, base, single)


def fired_bins(spikes: np.ndarray, neurons: np.ndarray, hide_bins: np.ndarray, buckets: int = 16) -> np.ndarray:
  """[3, F] int32 (copy c, trial k, bin t) wherever neurons[c] fired (count != 0) in a
  hidden bin of trial k: the bins whose input embedding hiding neurons[c] changes.

  spikes [K, T, N], neurons [C], hide_bins [T] bool. F is padded up to a multiple of
  C*K*T / `buckets` (so at most `buckets` shapes compile) with copy = C, which
  `single` drops."""
  k, t, _ = spikes.shape
  hit = (spikes[:, :, neurons] != 0) & np.asarray(hide_bins, bool)[None, :, None]  # [K, T, C]
  trial, time, copy = np.nonzero(hit)
  step = max(1, -(-k * t * len(neurons) // buckets))
  pad = max(step, -(-len(copy) // step) * step) - len(copy)
  return np.stack(
    [np.pad(copy, (0, pad), constant_values=len(neurons)), np.pad(trial, (0, pad)), np.pad(time, (0, pad))]
  ).astype(np.int32)


def single_neuron_groups(masks: masking.EvalMasks) -> list[tuple[np.ndarray, np.ndarray]] | None:
  """[(shared hide [N] bool, scored neurons [m] int)] when every mask of `masks` scores
  exactly one neuron and hides it on top of a hide set shared by a group of masks (mask
  = shared | {neuron}); None otherwise (e.g. inter-region, forward prediction)."""
  hide, score = masks.hide_neurons, masks.score_neurons
  if hide.shape[0] == 0 or (score.sum(1) != 1).any() or (score & ~hide).any():
    return None
  neuron = score.argmax(1)
  shared, group = np.unique(hide & ~score, axis=0, return_inverse=True)
  group = np.reshape(group, -1)
  return [(shared[g], neuron[group == g]) for g in range(len(shared))]


def predict_masks(
  predictor: Predictor,
  params,
  spikes: np.ndarray,
  masks: masking.EvalMasks,
  *,
  causal: bool,
  max_batch: int = 2048,
  mesh=None,
  session: int = 0,
  n_neurons: int | None = None,
  shortcut: bool = True,
  stage: progress.Stage | None = None,
) -> np.ndarray:
  """[K, T, N] log-rates of each scored neuron under its own mask (0 where unscored).

  session: the model's row of this session; n_neurons: the model's input width (the
  session's N is zero-padded to it, and the padding is cut from the result). With a
  mesh, the masks of a chunk are split over its data axis (params replicated).
  shortcut: use the one-neuron-per-mask passes (make_predictor) where the masks allow;
  False runs every mask through the full model (same numbers, slower). stage: told the
  chunks done of all (progress.Stage.update)."""
  n_trials, _, n_session = spikes.shape
  n_model = n_session if n_neurons is None else n_neurons
  n_data = 1 if mesh is None else mesh.shape[mesh_lib.DATA]
  chunk = max(1, max_batch // n_trials // n_data) * n_data  # masks per pass
  fit = lambda n_masks: min(chunk, -(-n_masks // n_data) * n_data)  # no padding beyond the masks there are
  prompt = masking.SCHEMES.index(masks.prompt)
  counts = pipeline.pad_neurons(np.asarray(spikes), n_model)  # [K, T, N_model], host copy
  if mesh is None:
    place, spikes = (lambda x: x), jnp.asarray(counts, jnp.float32)
  else:  # each process places only its rows of a chunk's masks; the trials are on every device
    place = lambda x: mesh_lib.shard_batch({"x": x[mesh_lib.process_rows(len(x), mesh)]}, mesh, len(x))["x"]
    spikes = jax.make_array_from_process_local_data(mesh_lib.replicated(mesh), counts.astype(np.float32))
  groups = single_neuron_groups(masks) if shortcut else None
  tell = (lambda done, total: None) if stage is None else (lambda done, total: stage.update(done, total, "chunks"))
  if groups is not None:
    total = np.zeros(spikes.shape, np.float32)
    n_chunks = sum(-(-len(neurons) // fit(len(neurons))) for _, neurons in groups)
    done = 0
    for shared, neurons in groups:
      pre, emb, rows = predictor.base(
        params, spikes, np.pad(shared, (0, n_model - n_session)), masks.hide_bins, session
      )
      size = fit(len(neurons))
      padded = np.pad(neurons, (0, -len(neurons) % size), mode="edge").astype(np.int32)
      for start in range(0, len(padded), size):
        copies = padded[start : start + size]  # the chunk's neurons, one masked copy each
        out = fetch(
          predictor.single(
            params,
            spikes,
            pre,
            emb,
            rows,
            place(copies),
            fired_bins(counts, copies, masks.hide_bins),
            prompt,
            causal,
            session,
          )
        )  # [C, K, T]
        take = neurons[start : start + size]
        total[:, :, take] = np.moveaxis(out[: len(take)], 0, -1)
        done += 1
        tell(done, n_chunks)
    return total[..., :n_session]
  n_masks = masks.hide_neurons.shape[0]
  chunk = fit(n_masks)
  pad = -n_masks % chunk
  hide = np.pad(masks.hide_neurons, ((0, pad), (0, n_model - n_session)))
  score = np.pad(masks.score_neurons, ((0, pad), (0, n_model - n_session)))
  total = 0.0
  for start in range(0, n_masks + pad, chunk):
    total = total + predictor.masked(
      params,
      spikes,
      place(hide[start : start + chunk]),
      place(score[start : start + chunk]),
      masks.hide_bins,
      prompt,
      causal,
      session,
    )
    tell(start // chunk + 1, (n_masks + pad) // chunk)
  return fetch(total)[..., :n_session]


def fetch(x) -> np.ndarray:
  """The whole of a (possibly multi-process) array on this host."""
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def score_masks(rates: np.ndarray, spikes: np.ndarray, masks: masking.EvalMasks) -> np.ndarray:
  """[N] bits per spike of each scored neuron on the scored bins of `masks` (NaN elsewhere).

  rates: expected counts per bin [K, T, N]."""
  bins = masks.score_bins
  bps = metrics.bits_per_spike_per_neuron(rates[:, bins], spikes[:, bins].astype(np.float64))
  return np.where(masks.scored, bps, np.nan)


def evaluate(
  graphdef,
  params,
  spikes: np.ndarray,
  region_ids: np.ndarray,
  *,
  causal_trained: bool,
  true_rates: np.ndarray | None = None,
  max_batch: int = 2048,
  mesh=None,
  session: int = 0,
  n_neurons: int | None = None,
  keep_predictions: bool = False,
  label: str = "",
  max_masks: int = 0,
) -> dict:
  """The four metrics of one session's trials.

  spikes [K, T, N] counts; region_ids [N]; causal_trained: whether the model learned
  causal attention (MtM, causal masking); forward prediction uses it only then,
  as the reference does. `mesh`: split the masked copies over its data axis (params
  must be replicated on it). session, n_neurons: see predict_masks. max_masks: > 0, every
  metric scores the same sample of at most this many neurons (masking.evaluation_masks; 0:
  all). Each metric writes one line (progress.Stage, named `label` + the metric) with its
  score and time. Returns
  {"<metric>_bps": mean over the scored neurons, "oracle_<metric>_bps"
  (with true_rates), "per_neuron": {metric: [N]}, and with keep_predictions
  "predictions": {metric: [K, T, N] expected counts of the scored entries (0 elsewhere)}}.
  """
  predictor = make_predictor(graphdef)
  results, per_neuron, predictions = {}, {}, {}
  for masks in masking.evaluation_masks(region_ids, spikes.shape[1], max_masks):
    with progress.Stage(label + masks.name) as stage:
      causal = causal_trained and masks.prompt == "causal"
      log_rates = predict_masks(
        predictor,
        params,
        spikes,
        masks,
        causal=causal,
        max_batch=max_batch,
        mesh=mesh,
        session=session,
        n_neurons=n_neurons,
        stage=stage,
      )
      rates = np.exp(log_rates.astype(np.float64))
      bps = score_masks(rates, spikes, masks)
      if keep_predictions:
        scored = masks.score_neurons.any(0)[None, None, :] & masks.score_bins[None, :, None]
        predictions[masks.name] = np.where(scored, rates, 0.0).astype(np.float32)
      per_neuron[masks.name] = bps
      results[f"{masks.name}_bps"] = float(np.nanmean(bps))
      stage.note = f"{results[f'{masks.name}_bps']:.4f} bps"
      if true_rates is not None:
        results[f"oracle_{masks.name}_bps"] = float(
          np.nanmean(score_masks(true_rates.astype(np.float64), spikes, masks))
        )
  results["per_neuron"] = per_neuron
  if keep_predictions:
    results["predictions"] = predictions
  return results
