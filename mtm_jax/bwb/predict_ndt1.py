"""An NDT1's (config.family "ndt1") log-rates on BrainWideBench windows, with the existing
evaluation's machinery (mtm_jax.evaluation.activity.predict_masks on binned counts); see
mtm_jax.bwb.predict for what is predicted."""

from __future__ import annotations

import dataclasses

import numpy as np

from mtm_jax import masking
from mtm_jax.bwb import window_input
from mtm_jax.evaluation import activity
from mtm_jax.parallel import mesh as mesh_lib

N_BINS = window_input.N_BINS


def causal_trained(config) -> bool:
  """Whether the model learned causal attention (MtM's or causal masking): the forward-prediction
  pass attends causally only then, as evaluation.ndt1.evaluate_session has it."""
  return config.masking.mode in (masking.MTM, "causal")


def decoding_prompt(config) -> str:
  """The prompt of the decoders' unmasked pass (evaluation.ndt1.decode_session's)."""
  return config.eval.decoding_prompt if config.model.use_prompt else masking.SCHEMES[0]


def eval_masks(
  config, n_units: int, hide: np.ndarray | None, forecast_bins: int, features: bool
) -> tuple[masking.EvalMasks, bool]:
  """(the MtM evaluation mask scoring every unit, causal attention) of one kind of prediction:
  the decoders' unmasked pass (features); forecasting (masking.forward_prediction_masks over the
  last forecast_bins bins); co-smoothing of the units `hide` at once (the neuron prompt);
  nothing hidden (the neuron prompt)."""
  every_unit, every_bin = np.ones((1, n_units), bool), np.ones(N_BINS, bool)
  if features:
    none = np.zeros((1, n_units), bool)
    return masking.EvalMasks("unmasked", decoding_prompt(config), none, every_unit, ~every_bin, every_bin), False
  if forecast_bins:
    masks = masking.forward_prediction_masks(n_units, N_BINS, range(N_BINS - forecast_bins, N_BINS))
    return dataclasses.replace(masks, score_bins=every_bin), causal_trained(config)  # the whole window's predictions
  hide = np.zeros(n_units, bool) if hide is None else hide
  return masking.EvalMasks("co_smoothing", "neuron", hide[None], every_unit, every_bin, every_bin), False


class Runner:
  """runner(times, units, starts) -> [w, 50, N] float32 log expected counts of one chunk of
  windows (at most `chunk`: the evaluation's max_batch sequences per device of the data axis)."""

  def __init__(self, trained, row: int, *, hide, forecast_bins: int, features: bool):
    self.trained, self.row, self.hide, self.forecast_bins = trained, row, hide, forecast_bins
    self.n_units = trained.sessions[row].n_neurons
    self.masks, self.causal = eval_masks(trained.config, self.n_units, hide, forecast_bins, features)
    self.predictor = activity.make_predictor(trained.graphdef)  # compiled once for every chunk
    n_data = 1 if trained.mesh is None else trained.mesh.shape[mesh_lib.DATA]
    self.chunk = max(1, trained.config.eval.max_batch // n_data)

  def __call__(self, times: np.ndarray, units: np.ndarray, starts: np.ndarray) -> np.ndarray:
    trained = self.trained
    session = window_input.window_session(trained.names[self.row], range(self.n_units), times, units, starts)
    counts = window_input.corrupt_counts(window_input.counts(session, starts), self.hide, self.forecast_bins)
    log_rates = activity.predict_masks(
      self.predictor,
      trained.params,
      counts,
      self.masks,
      causal=self.causal,
      max_batch=trained.config.eval.max_batch,
      mesh=trained.mesh,
      session=self.row,
      n_neurons=trained.n_neurons,
    )
    return np.asarray(log_rates, np.float32)
