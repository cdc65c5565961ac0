"""A trained mtm_jax model's predictions on BrainWideBench windows, whatever its family.

A window is [start, start + 1 s) of one session, in 50 bins of 20 ms: bin i is
[start + i * 0.02, start + (i + 1) * 0.02), computed as t - start in float64
(mtm_jax.datasets.events.binning). Spikes are given as times [S] float64 (sorted) and
units [S] int, the unit's position in the model's session row (`trained.row(name)`).

- `window_log_rates`: log expected spike counts per bin [W, 50, n], the input corrupted as
  BWB's TS2 corrupts it (co-smoothing: held-out units' spikes removed over the whole window;
  forecasting: every spike of the last bins removed), and the model run with the matching
  MtM evaluation mask and prompt (mtm_jax.masking.EvalMasks: co-smoothing = the neuron mask,
  prompt "neuron"; forecasting = the forward-prediction mask, prompt "causal", with causal
  attention where the existing evaluation uses it).
- `window_features`: the features a TS1 linear readout is fit on, the unmasked log-rates of
  every unit per bin given the decoding prompt, as the frozen-model behaviour decoders read.
- `unit_embeddings`: one learned vector per unit of the session (TS3's probe input).

The families' own code runs the model: mtm_jax.bwb.predict_ndt1 (NDT1, config.family "ndt1"),
mtm_jax.bwb.predict_spike (spike-token MtM, "poyo_mtm") and mtm_jax.bwb.predict_neds (NEDS,
"neds": behaviour tokens masked; its features are hidden states); a POYO model ("poyo") decodes
behaviour and predicts no counts, so it has unit_embeddings only. Windows are run in chunks
(memory-bounded; real sessions have ~70k windows), with a progress.Stage line.
"""

from __future__ import annotations

from absl import logging
import numpy as np
from flax import nnx

from mtm_jax import progress
from mtm_jax.bwb import predict_ndt1, predict_neds, predict_spike, tasks as bwb_tasks
from mtm_jax.evaluation import activity
from mtm_jax.training import config_checks

NDT1, SPIKE_MTM, POYO, NEDS = "ndt1", "poyo_mtm", "poyo", "neds"  # config.family of each family
N_BINS = bwb_tasks.TIMESTEPS  # 50 bins of bwb_tasks.BIN_SIZE = 0.02 s: one 1 s window


LOUD_WINDOWS = 5000  # predictions over this many windows log their progress


def family(trained) -> str:
  """config.family of a trained model (older ids and configs saved before it existed: config_checks.family_of)."""
  return config_checks.family_of(trained.config)


def window_log_rates(
  trained,
  name: str,
  spike_times,
  spike_units,
  starts,
  *,
  hide_units=None,
  forecast_bins: int = 0,
  units=None,
) -> np.ndarray:
  """[W, 50, n] float32 log expected spike counts per 20 ms bin of the windows
  [starts[w], starts[w] + 1 s) of session `name` (the TFDS name of the model's session row).

  spike_times [S] float64 sorted seconds; spike_units [S] int, units in the model's session-row
  order; starts [W] float64. The input is corrupted as BWB corrupts it, then masked with the
  matching MtM evaluation mask:
  - hide_units [N] bool (TS2 co-smoothing): their spikes are removed over the whole window and
    they are hidden in every bin (the neuron mask, prompt "neuron"); their outputs are the
    predictions. The existing co-smoothing hides one unit per pass; this hides the set at once.
  - forecast_bins f > 0 (TS2 forecasting): every spike of the last f bins is removed and every
    unit hidden there (the forward-prediction mask, prompt "causal"; an NDT1 trained with
    causal masking attends causally, as the existing evaluation). With hide_units as well,
    their spikes are removed too but the mask and prompt are the forecasting ones.
  - neither: the unmasked input, prompt "neuron".
  units [n] int: the units returned (default all N, in row order)."""
  row, n_units = _session(trained, name)
  times, spike_units, starts = _spikes(spike_times, spike_units, starts, n_units)
  hide = _hide(hide_units, n_units)
  forecast_bins = _forecast(forecast_bins)
  take = _units(units, n_units)
  out = np.zeros((len(starts), N_BINS, len(take)), np.float32)
  with _stage(f"{name}: BWB window log-rates", len(starts)) as stage:
    for chunk, log_rates in _chunks(trained, row, times, spike_units, starts, stage, hide, forecast_bins):
      out[chunk] = log_rates[..., take]
  return out


def window_features(trained, name: str, spike_times, spike_units, starts) -> np.ndarray:
  """[W, 50, N] float32 TS1 readout features of the windows (arguments as window_log_rates):
  the model's log-rates of every unit per bin on the unmasked input given the decoding prompt
  (config.eval.decoding_prompt; NDT1 without prompts: none), as the frozen-model behaviour
  decoders read them (evaluation.ndt1.unmasked_log_rates, poyo_mtm_eval.decode_session), as log
  expected counts per 20 ms bin (for the spike-token model a constant shift of the decoders'
  per-second log-rates). NEDS: [W, 50, F] hidden states instead (predict_neds)."""
  row, n_units = _session(trained, name)
  times, spike_units, starts = _spikes(spike_times, spike_units, starts, n_units)
  out = None
  with _stage(f"{name}: BWB window features", len(starts)) as stage:
    for chunk, features in _chunks(trained, row, times, spike_units, starts, stage, features=True):
      if out is None:
        out = np.zeros((len(starts),) + features.shape[1:], np.float32)
      out[chunk] = features
  return np.zeros((0, N_BINS, n_units), np.float32) if out is None else out


def unit_embeddings(trained, name: str) -> np.ndarray:
  """[N, E] float32: one learned vector per unit of session `name`, in row order.

  NDT1: the unit's row of the session's first input map, the weights that multiply its
  count: with stitching (model.stitch_dim > 0) the session's stitcher Linear(N_s, stitch_dim)
  (stitch_in.kernel[row, unit], E = stitch_dim); a single-session NDT1 without stitching has
  no stitcher, so its input embedding Linear(N, mult * N) (embed_spikes.kernel[unit],
  E = mult * N). Spike-token MtM and POYO: the unit's row of the unit embedding table
  (unit_emb, E = model dim) through the vocabulary, the vector every token of the unit
  starts from (and, in spike-token MtM, its queries). NEDS: the unit's row of the session's
  spike tokeniser input table taken into the shared width (predict_neds.unit_embeddings)."""
  row, n_units = _session(trained, name)
  if family(trained) == NEDS:
    return predict_neds.unit_embeddings(trained, row)
  model = nnx.merge(trained.graphdef, trained.params)
  if family(trained) == NDT1:
    if model.stitch_in is not None:
      kernel = activity.fetch(model.stitch_in.kernel[...])[row]  # [max N, stitch_dim]
    else:
      kernel = activity.fetch(model.embed_spikes.kernel[...])  # [N, mult * N]
    return kernel[:n_units].astype(np.float32)
  rows = trained.vocab.unit_rows(trained.records[row]["session_id"])
  return activity.fetch(model.unit_emb.embedding[...])[rows].astype(np.float32)


# ---- Shared checks and chunking -------------------------------------------------------------


def _session(trained, name: str) -> tuple[int, int]:
  """(row, units N) of session `name` of the model; ValueError for an unknown family."""
  row = trained.row(name)
  fam = family(trained)
  if fam == NDT1:
    return row, trained.sessions[row].n_neurons
  if fam in (SPIKE_MTM, POYO):
    return row, len(trained.records[row]["unit_ids"])
  if fam == NEDS:
    return row, len(trained.records[row]["region_names"])
  raise ValueError(
    f"config.family: {fam!r} has no BWB predictions; expected {NDT1!r}, {SPIKE_MTM!r}, {POYO!r} or {NEDS!r}"
  )


def _spikes(spike_times, spike_units, starts, n_units: int):
  """(times [S] float64, units [S] int32, starts [W] float64), checked."""
  times = np.asarray(spike_times)
  units = np.asarray(spike_units)
  starts = np.asarray(starts)
  if times.ndim != 1 or units.shape != times.shape:
    raise ValueError(
      f"spike_times and spike_units: expected two 1-D arrays of one length, got {times.shape}, {units.shape}"
    )
  for field, a in (("spike_times", times), ("starts", starts)):
    if a.dtype != np.float64:
      raise ValueError(f"{field}: expected float64 seconds (BWB matches window starts bit for bit), got {a.dtype}")
    if not np.all(np.isfinite(a)):
      raise ValueError(f"{field}: has non-finite values")
  if starts.ndim != 1:
    raise ValueError(f"starts: expected a 1-D array of window starts, got shape {starts.shape}")
  if np.any(np.diff(times) < 0):
    raise ValueError("spike_times: expected sorted times")
  if len(units) and (not np.issubdtype(units.dtype, np.integer) or units.min() < 0 or units.max() >= n_units):
    raise ValueError(f"spike_units: expected integer units in [0, {n_units}) (the session row's), got {units.dtype}")
  return times, units.astype(np.int32), starts


def _hide(hide_units, n_units: int) -> np.ndarray | None:
  if hide_units is None:
    return None
  hide = np.asarray(hide_units)
  if hide.dtype != bool or hide.shape != (n_units,):
    raise ValueError(
      f"hide_units: expected [{n_units}] bool (one per unit of the session), got {hide.dtype} {hide.shape}"
    )
  return hide


def _forecast(forecast_bins) -> int:
  if isinstance(forecast_bins, bool) or not isinstance(forecast_bins, (int, np.integer)):
    raise ValueError(f"forecast_bins: expected an integer number of bins, got {forecast_bins!r}")
  if not 0 <= forecast_bins <= N_BINS:
    raise ValueError(f"forecast_bins: expected 0 to {N_BINS} bins, got {forecast_bins}")
  return int(forecast_bins)


def _units(units, n_units: int) -> np.ndarray:
  if units is None:
    return np.arange(n_units)
  take = np.asarray(units)
  if take.ndim != 1 or (len(take) and not np.issubdtype(take.dtype, np.integer)):
    raise ValueError(f"units: expected a 1-D integer array of unit indices, got {take.dtype} {take.shape}")
  if len(take) and (take.min() < 0 or take.max() >= n_units):
    raise ValueError(f"units: expected indices in [0, {n_units}), got [{take.min()}, {take.max()}]")
  return take


def _stage(name: str, n_windows: int) -> progress.Stage:
  """The progress of one prediction: its lines logged at INFO only for many windows (a TS2
  session's), so that the many short passes of TS1 stay quiet."""
  return progress.Stage(name, log=logging.info if n_windows >= LOUD_WINDOWS else logging.debug)


def _chunks(trained, row, times, units, starts, stage, hide=None, forecast_bins=0, features=False):
  """(window slice, [w, 50, N] log expected counts) of each chunk of windows, in order."""
  if family(trained) == POYO:
    raise ValueError("config.family 'poyo': a POYO model decodes behaviour and predicts no spike counts")
  module = {NDT1: predict_ndt1, SPIKE_MTM: predict_spike, NEDS: predict_neds}[family(trained)]
  runner = module.Runner(trained, row, hide=hide, forecast_bins=forecast_bins, features=features)
  size = runner.chunk
  total = -(-len(starts) // size)
  for i, first in enumerate(range(0, len(starts), size)):
    chunk = slice(first, first + size)
    yield chunk, runner(times, units, starts[chunk])
    stage.update(i + 1, total, "window chunks")
