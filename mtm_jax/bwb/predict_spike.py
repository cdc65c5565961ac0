"""A spike-token MtM's (config.family "poyo_mtm") log-rates on BrainWideBench windows, with the
existing evaluation's machinery (mtm_jax.evaluation.poyo_mtm.predict_masks on a TrialData
whose trials are the windows); see mtm_jax.bwb.predict for what is predicted.

The model's log-rates are per second at the bin centres; times the bin width they are the
expected counts, so log counts per 20 ms bin = log-rate + log(0.02) (as its training loss)."""

from __future__ import annotations

import dataclasses

import numpy as np

from mtm_jax import masking
from mtm_jax.bwb import window_input, windows
from mtm_jax.datasets.events import session as session_lib, trials as trials_lib
from mtm_jax.evaluation import poyo_mtm as poyo_mtm_eval
from mtm_jax.tasks import poyo_mtm as poyo_mtm_task

N_BINS, BIN = window_input.N_BINS, window_input.BIN


def check_config(config) -> None:
  """ValueError naming the field when the model does not read 1 s trials of 20 ms bins."""
  if abs(config.data.context - windows.WINDOW) > 1e-9:
    raise ValueError(
      f"config.data.context: the spike-token MtM reads trials of {config.data.context} s; BWB windows "
      f"are {windows.WINDOW} s (train it with data.context={windows.WINDOW})"
    )
  if abs(config.data.bin_size - BIN) > 1e-9:
    raise ValueError(f"config.data.bin_size: expected BWB's {BIN} s bins, got {config.data.bin_size}")


def eval_masks(config, n_units: int, hide: np.ndarray | None, forecast_bins: int, features: bool) -> masking.EvalMasks:
  """The MtM evaluation mask (scoring every unit) of one kind of prediction: the decoders'
  unmasked pass (features); forecasting over the last forecast_bins bins; co-smoothing of the
  units `hide` at once (the neuron prompt); nothing hidden (the neuron prompt). The model has no
  causal attention: forecasting is its causal prompt and mask."""
  if features:
    return poyo_mtm_eval.unmasked_masks(n_units, N_BINS, poyo_mtm_task.decoding_options(config)["prompt"])
  every_unit, every_bin = np.ones((1, n_units), bool), np.ones(N_BINS, bool)
  if forecast_bins:  # scored in every bin: the predictions of the whole window under the mask
    masks = masking.forward_prediction_masks(n_units, N_BINS, range(N_BINS - forecast_bins, N_BINS))
    return dataclasses.replace(masks, score_bins=every_bin)
  hide = np.zeros(n_units, bool) if hide is None else hide
  return masking.EvalMasks("co_smoothing", "neuron", hide[None], every_unit, every_bin, every_bin)


def corrupt(data: trials_lib.TrialData, session, hide: np.ndarray | None, forecast_bins: int) -> trials_lib.TrialData:
  """`data` (one session's trials: the windows) without the spike tokens and counts BWB removes
  (window_input.removed, by the float64 bins of the counts); start and end tokens stay."""
  if hide is None and not forecast_bins:
    return data
  n_units = len(session.unit_ids)
  unit, times, types = [], [], []
  for k, start in enumerate(data.trials[:, 1]):
    part = session_lib.interval_data(session, start, start + data.config.context)
    drop = window_input.removed(part["spike_times"] - start, part["spike_units"], hide, forecast_bins)
    keep = np.concatenate([np.ones(n_units, bool), ~drop, np.ones(n_units, bool)])
    if len(keep) != len(data.unit[k]):
      raise AssertionError(f"window {k}: {len(data.unit[k])} tokens, expected {len(keep)}")
    unit.append(data.unit[k][keep]), times.append(data.times[k][keep]), types.append(data.types[k][keep])
  hide_slots = None if hide is None else np.pad(hide, (0, data.n_units - n_units))
  counts = window_input.corrupt_counts(data.counts, hide_slots, forecast_bins)
  return dataclasses.replace(data, unit=unit, times=times, types=types, counts=counts)


class Runner:
  """runner(times, units, starts) -> [w, 50, N] float32 log expected counts of one chunk of
  windows (at most `chunk`: 16 encoder batches of config.eval.batch_size copies)."""

  def __init__(self, trained, row: int, *, hide, forecast_bins: int, features: bool):
    check_config(trained.config)
    self.trained, self.row, self.hide, self.forecast_bins = trained, row, hide, forecast_bins
    self.record = trained.records[row]
    n_units = len(self.record["unit_ids"])
    self.masks = eval_masks(trained.config, n_units, hide, forecast_bins, features)
    self.trial_config = poyo_mtm_task.trial_config(trained.config)
    self.predictor = poyo_mtm_eval.make_predictor(trained.graphdef, BIN)  # compiled once for every chunk
    self.chunk = 16 * trained.config.eval.batch_size

  def __call__(self, times: np.ndarray, units: np.ndarray, starts: np.ndarray) -> np.ndarray:
    trained, config = self.trained, self.trained.config
    session = window_input.window_session(self.record["session_id"], self.record["unit_ids"], times, units, starts)
    data = trials_lib.prepare([session], window_input.SPLIT, self.trial_config, vocab=trained.vocab)
    data = corrupt(data, session, self.hide, self.forecast_bins)
    (log_rates,) = poyo_mtm_eval.predict_masks(
      self.predictor,
      trained.params,
      data,
      0,
      self.masks,
      [1],
      batch_size=config.eval.batch_size,
      max_rows=config.eval.max_rows,
      mesh=trained.mesh,
    )
    return (log_rates + np.float32(np.log(BIN))).astype(np.float32)
