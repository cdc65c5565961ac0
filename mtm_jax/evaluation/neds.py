"""NEDS evaluation of one session's trials: encoding and decoding with one model.

Encoding (behaviour -> activity): NEDS's score ("encoding_bps": every spike token masked,
the behaviour given, as its evaluation scores a multimodal model), then the four MtM
activity tasks (masking.evaluation_masks: co-smoothing, forward prediction, inter-region,
intra-region) with every present behaviour token given. A task's held-out neurons are masked at the input (their counts
zeroed in the hidden bins, as NDT1's evaluation hides them); where a task holds out every
neuron of a bin (forward prediction: the last tenth of the bins) the bin's spike token is
the mask token. NEDS never trains with single neurons hidden, so its co-smoothing,
inter- and intra-region scores measure it off its training distribution. Scores are
NDT1's (evaluation.activity.score_masks: bits per spike per neuron, averaged over the scored
neurons), with the oracle's where the data keep their true rates.

Decoding (activity -> behaviour): every behaviour token masked, the spikes given; choice
and block scored by accuracy and balanced accuracy (scikit-learn), wheel speed and whisker
motion energy by NDT1's pooled R^2 (decoding.pooled_r2) in the model's units (z-scored
traces: R^2 does not change under the same affine map of prediction and target). A
modality the data set lacks is skipped with the reason ABSENT.

Evaluation runs on one device (the parameters are copied there; NEDS's models are small):
a model replicated over a mesh would compute every pass on each of its devices.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from mtm_jax import masking, modalities, progress
from mtm_jax.datasets import pipeline
from mtm_jax.evaluation import activity, decoding, report

# NEDS's own encoding score (its eval_utils.co_smoothing_eval of a multimodal model): every
# spike token masked, behaviour given, every neuron scored at every bin; then MtM's four.
ENCODING_METRICS = ("encoding_bps",) + report.METRICS
# Metric of each decoded behaviour (the traces' names as NDT1's decoders report them).
DECODING_METRICS = {
  "choice": ("choice_accuracy", "choice_balanced_accuracy"),
  "block": ("block_accuracy", "block_balanced_accuracy"),
  "wheel": ("wheel_speed_r2",),
  "whisker": ("whisker_motion_energy_r2",),
}
ABSENT = "absent from the data set"
NOT_MODELLED = "not a modality of the model (config.model.modalities)"


class SessionData(NamedTuple):
  """One session's trials in the model's units.

  spikes [K, T, N] counts (the session's N); behaviour {modality: [K, T] float (wheel,
  whisker: z-scored) or [K] int32 (choice, block: class index)} of the present behaviour
  modalities only; region_ids [N] int; rates [K, T, N] true expected counts or None."""

  spikes: np.ndarray
  behaviour: dict
  region_ids: np.ndarray
  rates: np.ndarray | None = None


def make_predictor(graphdef) -> Callable:
  """predict(params, inputs, masks, session [] int32 (one session: its tables read once), present) -> preds: the jitted
  deterministic forward pass of the NEDS model (models.neds.NEDS.__call__)."""

  @jax.jit
  def predict(params, inputs, masks, session, present):
    return nnx.merge(graphdef, params)(inputs, masks, session=session, present=present)

  return predict


def model_inputs(data: SessionData, mods: tuple, n_model: int) -> tuple[dict, dict]:
  """(inputs {modality: [K, ...]}, present {modality: [K] bool}) of the model's modalities:
  absent behaviour filled with zeros (never read: key-padding-masked)."""
  k, t, _ = data.spikes.shape
  inputs, present = {}, {}
  for m in mods:
    if m == modalities.SPIKE:
      inputs[m] = pipeline.pad_neurons(np.asarray(data.spikes, np.float32), n_model)
    elif m in data.behaviour:
      inputs[m] = np.asarray(data.behaviour[m])
    else:
      inputs[m] = np.zeros((k, t), np.float32) if m in modalities.DYNAMIC else np.zeros(k, np.int32)
    present[m] = np.full(k, m == modalities.SPIKE or m in data.behaviour)
  return inputs, present


def _tile(x, copies: int):
  """[K, ...] -> [copies * K, ...]: copy c's trials at rows c * K ... (c + 1) * K - 1."""
  return jnp.broadcast_to(x[None], (copies,) + x.shape).reshape((copies * x.shape[0],) + x.shape[1:])


def make_encoder(predict: Callable, behaviour_masked: bool = False) -> Callable:
  """encode(params, inputs, present, hide [C, N], score [C, N], hide_bins [T], token_bins
  [C, T], session) -> [K, T, N] log-rates, each entry from the copy that scores it (summed
  over copies by `score`): C masked copies of the K trials as one batch. Behaviour tokens
  are given (encoding), or every one masked with behaviour_masked (mtm_jax.bwb.predict_neds)."""

  @jax.jit
  def encode(params, inputs, present, hide, score, hide_bins, token_bins, session):
    c, (k, t, n) = hide.shape[0], inputs[modalities.SPIKE].shape
    hidden = hide[:, None, None, :] & hide_bins[None, None, :, None]  # [C, 1, T, N]
    spikes = jnp.where(hidden, 0.0, inputs[modalities.SPIKE][None]).reshape(c * k, t, n)
    batch = {m: spikes if m == modalities.SPIKE else _tile(x, c) for m, x in inputs.items()}
    masks = {m: jnp.full((c * k, t), behaviour_masked) for m in inputs}
    masks[modalities.SPIKE] = jnp.repeat(token_bins, k, axis=0)
    preds = predict(params, batch, masks, jnp.asarray(session, jnp.int32), {m: _tile(p, c) for m, p in present.items()})
    log_rates = preds[modalities.SPIKE].astype(jnp.float32).reshape(c, k, t, n)
    return jnp.einsum("cktn,cn->ktn", log_rates, score.astype(jnp.float32))

  return encode


def encode_masks(encode, params, inputs, present, task: masking.EvalMasks, *, session: int, max_batch: int, stage=None):
  """[K, T, N_model] log-rates of each scored neuron under its task mask (0 elsewhere)."""
  k, _, n_model = inputs[modalities.SPIKE].shape
  n_session = task.hide_neurons.shape[1]
  n_masks = task.hide_neurons.shape[0]
  chunk = max(1, min(n_masks, max_batch // k))
  pad = -n_masks % chunk
  hide = np.pad(task.hide_neurons, ((0, pad), (0, n_model - n_session)))
  score = np.pad(task.score_neurons, ((0, pad), (0, n_model - n_session)))
  token_bins = task.hide_bins[None, :] & task.hide_neurons.all(axis=1, keepdims=True)  # [M, T]: every neuron held out
  token_bins = np.pad(token_bins, ((0, pad), (0, 0)))
  total = 0.0
  for start in range(0, n_masks + pad, chunk):
    part = slice(start, start + chunk)
    total = total + encode(params, inputs, present, hide[part], score[part], task.hide_bins, token_bins[part], session)
    if stage is not None:
      stage.update(start // chunk + 1, (n_masks + pad) // chunk, "chunks")
  return np.asarray(total)


def encoding_scores(
  predict,
  params,
  data: SessionData,
  *,
  mods: tuple,
  session: int,
  n_model: int,
  max_batch: int,
  max_masks: int = 0,
  label="",
) -> tuple[dict, dict]:
  """({"<task>_bps": mean over scored neurons, "oracle_<task>_bps" with true rates},
  {task: [N] bits per spike per neuron}) of the four tasks, behaviour given."""
  inputs, present = jax.tree.map(jnp.asarray, model_inputs(data, mods, n_model))
  encode = make_encoder(predict)
  results, per_neuron = {}, {}
  _, t, n = data.spikes.shape
  every = np.ones(t, bool)
  encoding = masking.EvalMasks("encoding", "neuron", np.ones((1, n), bool), np.ones((1, n), bool), every, every)
  for task in [encoding] + masking.evaluation_masks(data.region_ids, t, max_masks):
    with progress.Stage(f"{label}encoding: {task.name}") as stage:
      log_rates = encode_masks(encode, params, inputs, present, task, session=session, max_batch=max_batch, stage=stage)
      bps = activity.score_masks(np.exp(log_rates[..., :n].astype(np.float64)), data.spikes, task)
      per_neuron[task.name] = bps
      results[f"{task.name}_bps"] = float(np.nanmean(bps))
      stage.note = f"{results[f'{task.name}_bps']:.4f} bps"
      if data.rates is not None:
        oracle = activity.score_masks(np.asarray(data.rates, np.float64), data.spikes, task)
        results[f"oracle_{task.name}_bps"] = float(np.nanmean(oracle))
  return results, per_neuron


def decoded_behaviour(predict, params, data: SessionData, *, mods: tuple, session: int, n_model: int, max_batch: int):
  """{behaviour modality: predictions [K, T] (traces) or [K] (class index)} with every
  behaviour token masked and the spikes given."""
  inputs, present = model_inputs(data, mods, n_model)
  k, t = data.spikes.shape[:2]
  out = {m: [] for m in mods if m != modalities.SPIKE}
  for start in range(0, k, max_batch):
    rows = slice(start, min(start + max_batch, k))
    batch = {m: x[rows] for m, x in inputs.items()}
    size = len(batch[modalities.SPIKE])
    masks = {m: np.full((size, t), m != modalities.SPIKE) for m in mods}
    preds = predict(params, batch, masks, np.int32(session), {m: p[rows] for m, p in present.items()})
    for m in out:
      p = np.asarray(preds[m], np.float32)
      out[m].append(p.argmax(-1) if m in modalities.STATIC else p)
  return {m: np.concatenate(v) for m, v in out.items()}


def decoding_scores(
  predict, params, data: SessionData, *, mods: tuple, session: int, n_model: int, max_batch: int
) -> tuple[dict, dict]:
  """({metric: score}, {metric: reason skipped}) of every behaviour of DECODING_METRICS."""
  scores, skipped = {}, {}
  decoded = decoded_behaviour(predict, params, data, mods=mods, session=session, n_model=n_model, max_batch=max_batch)
  for m, names in DECODING_METRICS.items():
    if m not in mods or m not in data.behaviour:
      skipped.update(dict.fromkeys(names, NOT_MODELLED if m not in mods else ABSENT))
      continue
    target = np.asarray(data.behaviour[m])
    if m in modalities.STATIC:
      scores[names[0]] = float(accuracy_score(target, decoded[m]))
      scores[names[1]] = float(balanced_accuracy_score(target, decoded[m]))
    else:
      scores[names[0]] = decoding.pooled_r2(target, decoded[m])
  return scores, skipped


def evaluate_session(
  graphdef, params, data: SessionData, *, decode: bool = True, max_masks: int = 0, label: str = "", **options
):
  """(encoding and decoding scores with "skipped" {metric: reason}, {task: [N] bps}) of one
  session. options: mods, session (its row in the model), n_model (the model's input width)
  and max_batch, as encoding_scores takes them. decode=False skips the decoding scores
  (reason report.DECODING_OFF)."""
  predict = make_predictor(graphdef)
  params = jax.device_put(params, jax.local_devices()[0])  # one device (see the module docstring)
  options["mods"] = tuple(options["mods"])
  results, per_neuron = encoding_scores(predict, params, data, max_masks=max_masks, label=label, **options)
  if decode:
    with progress.Stage(f"{label}decoding (behaviour tokens masked)"):
      scores, skipped = decoding_scores(predict, params, data, **options)
  else:
    scores, skipped = {}, {m: report.DECODING_OFF for names in DECODING_METRICS.values() for m in names}
  results.update(scores, skipped=skipped)
  return results, per_neuron
