"""A NEDS's (config.family "neds") predictions on BrainWideBench windows, with its evaluation's
machinery (mtm_jax.evaluation.neds: the encoder of the activity tasks, the model's inputs); see
mtm_jax.bwb.predict for what is predicted.

Behaviour tokens are masked, never given: BWB's TS2 and TS1 inputs are a window's spikes alone
(the behaviour of a test window is not part of them, and that of the forecast bins would come
from the future), so every behaviour modality the session row has (its record's `present`) is
in the sequence as mask tokens, as in NEDS's decoding scheme, which the model trained on
(every behaviour token masked, the spikes given); a modality the session lacks stays absent,
as in its training. The windows' spikes are binned and corrupted as BWB corrupts them
(window_input); then:
- co-smoothing: the held-out units' counts zeroed over the window, the spike tokens given (not
  every unit of a bin is hidden), as the NEDS evaluation hides a task's neurons;
- forecasting: the last bins' counts zeroed and their spike tokens masked (every unit of
  those bins is hidden: the evaluation's forward prediction);
- TS1 features: the final hidden states of the spike token and of each present behaviour
  token of every bin (behaviour masked, spikes unmasked): [W, 50, K D], K the session's
  present modalities, D the width. NEDS's own wheel and whisker decoders are linear maps of
  their tokens' states, so the linear readouts see what the model decodes from the spikes.
- unit embeddings: the Jacobian of the spike token with respect to the unit's count at an
  empty bin ([N, D]): the unit's row of the session's spike tokeniser input table (stitch_in)
  taken through the tokeniser into the width shared by every session. The table's own row
  (mult * N_max wide) depends on the model's largest session, so pretrained and adapted
  models' rows would not share a space, or a length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtm_jax import modalities
from mtm_jax.bwb import predict_spike, window_input
from mtm_jax.evaluation import neds as neds_eval
from mtm_jax.models import neds

N_BINS = window_input.N_BINS


def present_modalities(trained, row: int) -> tuple[str, ...]:
  """The model's modalities that session row `row` has (spikes always), in the model's order."""
  present = trained.records[row]["present"]
  return tuple(m for m in neds.Hparams.from_config(trained.config.model).modalities if m in present)


def window_data(trained, row: int, counts: np.ndarray) -> neds_eval.SessionData:
  """The windows' counts [W, 50, N] as the evaluation's SessionData: each behaviour modality
  of the session row present with placeholder zeros (always masked, never read)."""
  w, t, _ = counts.shape
  behaviour = {
    m: np.zeros(w, np.int32) if m in modalities.STATIC else np.zeros((w, t), np.float32)
    for m in present_modalities(trained, row)
    if m != modalities.SPIKE
  }
  regions = np.zeros(counts.shape[-1], np.int64)  # unused: no region task here
  return neds_eval.SessionData(counts, behaviour, regions)


def make_featuriser(graphdef):
  """features(params, inputs, masks, session [B], present) -> [B, K T, D] final hidden states."""

  @jax.jit
  def features(params, inputs, masks, session, present):
    return nnx.merge(graphdef, params).encode(inputs, masks, session=session, present=present)

  return features


class Runner:
  """runner(times, units, starts) -> [w, 50, N] float32 log expected counts (or [w, 50, K D]
  features) of one chunk of windows (at most config.eval.max_batch)."""

  def __init__(self, trained, row: int, *, hide, forecast_bins: int, features: bool):
    self.trained, self.row, self.hide, self.forecast_bins, self.features = trained, row, hide, forecast_bins, features
    self.mods = neds.Hparams.from_config(trained.config.model).modalities
    self.n_units = len(trained.records[row]["region_names"])
    self.present = [i for i, m in enumerate(self.mods) if m in present_modalities(trained, row)]
    self.params = jax.device_put(trained.params, jax.local_devices()[0])  # one device, as evaluation.neds
    if features:
      self.run = make_featuriser(trained.graphdef)
    else:
      self.run = neds_eval.make_encoder(neds_eval.make_predictor(trained.graphdef), behaviour_masked=True)
      self.masks = predict_spike.eval_masks(trained.config, self.n_units, hide, forecast_bins, False)
    self.chunk = trained.config.eval.max_batch

  def __call__(self, times: np.ndarray, units: np.ndarray, starts: np.ndarray) -> np.ndarray:
    trained = self.trained
    session = window_input.window_session(trained.names[self.row], range(self.n_units), times, units, starts)
    counts = window_input.corrupt_counts(window_input.counts(session, starts), self.hide, self.forecast_bins)
    inputs, present = neds_eval.model_inputs(window_data(trained, self.row, counts), self.mods, trained.n_neurons)
    if not self.features:
      log_rates = neds_eval.encode_masks(
        self.run, self.params, inputs, present, self.masks, session=self.row, max_batch=self.chunk
      )
      return np.asarray(log_rates[..., : self.n_units], np.float32)
    w = len(starts)
    masks = {m: np.full((w, N_BINS), m != modalities.SPIKE) for m in self.mods}
    hidden = self.run(self.params, inputs, masks, np.int32(self.row), present)  # [w, K T, D]
    hidden = np.asarray(hidden, np.float32).reshape(w, len(self.mods), N_BINS, -1)[:, self.present]
    return hidden.transpose(0, 2, 1, 3).reshape(w, N_BINS, -1)


def unit_embeddings(trained, row: int) -> np.ndarray:
  """[N, D] float32: d(spike token of a bin) / d(unit's count) at an empty bin, per unit of
  session row `row` (the module docstring)."""
  model = nnx.merge(trained.graphdef, jax.device_put(trained.params, jax.local_devices()[0]))
  io = model.io[modalities.SPIKE]
  token = lambda x: io.tokens(x[None, None], row, 1)[0, 0]  # noqa: E731  [N_model] -> [D]
  jacobian = jax.jacfwd(token)(jnp.zeros(trained.n_neurons, jnp.float32))  # [D, N_model]
  n_units = len(trained.records[row]["region_names"])
  return np.asarray(jacobian, np.float32).T[:n_units]
