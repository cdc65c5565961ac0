"""The four MtM activity evaluations of a spike-token MtM, at any bin width.

The masks are NDT1's (mtm_jax.masking.EvalMasks rows, on the grid of the training bins):
mask m of a metric hides units hide_neurons[m] in bins hide_bins and scores units
score_neurons[m] in bins score_bins. Each (mask, trial) pair is one copy of the trial's
tokens with a key mask (token_masking.keep_tokens: no re-tokenisation) over the tokens
of the units its group of masks can show (context_units: an intra-region copy reads its
region's alone); copies are encoded in batches, and every scored unit of a copy is one
decoder row whose queries are the centres of the scored bins at every width of `widths`
(a 20 ms bin holds two 10 ms and four 5 ms bins, so one encoding serves them all). The
rates are scored with NDT1's own code (evaluation.activity.score_masks), per neuron.

Behaviour decoding is NDT1's too (evaluation.decoding.decode_split): the features of a
trial are the model's 20 ms log-rates of every unit on the unmasked trial (one pass, the
decoding prompt), the targets the trial's choice and its behaviour traces at the bin
centres.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Sequence

from absl import logging

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtm_jax import masking, progress, token_masking
from mtm_jax.datasets import synthetic_events
from mtm_jax.datasets.events import binning, trials as trials_lib
from mtm_jax.evaluation import activity, copies, decoding, report
from mtm_jax.parallel import mesh as mesh_lib


class Predictor(NamedTuple):
  # (params, trial tokens [Bt, L], copy_rows [C], hide_units [C, N], hide_bins [C, T], prompt [C]) -> latents [C, M, D]
  encode: Callable
  decode: Callable  # (params, latents, copy [R], unit [R], times [G], session [R], prompt [R]) -> [R, G] log-rates


def make_predictor(graphdef, bin_size: float) -> Predictor:
  """The jitted passes of the evaluation of the model `graphdef` (bin_size: the grid of
  the masks' bins, seconds)."""

  @jax.jit
  def encode(params, tokens, copy_rows, hide_units, hide_bins, prompt):
    model = nnx.merge(graphdef, params)
    mask = token_masking.TokenMask(hide_units, hide_bins, hide_units, hide_bins)
    keep = token_masking.keep_tokens(mask, {k: tokens[k][copy_rows] for k in copies.COPY_KEYS}, bin_size)
    return model.encode(dict(tokens, input_mask=keep), prompt, token_rows=copy_rows)

  @jax.jit
  def decode(params, latents, copy, unit, times, session, prompt):
    model = nnx.merge(graphdef, params)
    r, g = unit.shape[0], times.shape[0]
    return model.decode(
      latents[copy], jnp.broadcast_to(unit[:, None], (r, g)), jnp.broadcast_to(times[None], (r, g)), session, prompt
    )

  return Predictor(encode, decode)


def unmasked_masks(n_units: int, n_bins: int, prompt: str) -> masking.EvalMasks:
  """One pass that hides nothing and scores every unit in every bin (the decoders' features)."""
  none, every = np.zeros((1, n_units), bool), np.ones((1, n_units), bool)
  return masking.EvalMasks("unmasked", prompt, none, every, np.zeros(n_bins, bool), np.ones(n_bins, bool))


def trial_behaviour(session, split: str, intervals: np.ndarray, n_bins: int) -> dict[str, np.ndarray]:
  """The decoders' targets of a split's trials ([K, 2] intervals, in time order): choice [K]
  where the session keeps its trial variables, and each behaviour dimension (named by
  session.behaviour_name) [K, n_bins], linearly interpolated at the bin centres."""
  out = {}
  if "choice" in session.extras and "trial_index" in session.extras:
    split_intervals, rows = synthetic_events.split_rows(session, split)
    if not np.array_equal(split_intervals, intervals):
      raise ValueError(f"session {session.session_id!r}: the trials of split {split!r} are not its split intervals")
    out["choice"] = np.asarray(session.extras["choice"])[rows]
  stamps, values = session.behaviour_timestamps, session.behaviour_values
  if len(stamps) and len(intervals):
    steps = (np.arange(n_bins) + 0.5) / n_bins
    centres = intervals[:, :1] + steps[None] * (intervals[:, 1:] - intervals[:, :1])  # [K, n_bins]
    for d, name in enumerate(str(session.behaviour_name).split(",")):
      out[name] = np.interp(centres.ravel(), stamps, values[:, d]).reshape(centres.shape).astype(np.float32)
  return out


def session_behaviour(data: trials_lib.TrialData, position: int) -> dict[str, np.ndarray]:
  """trial_behaviour of session `position`'s trials in `data` (its split, in time order)."""
  intervals = data.trials[data.session_trials(position), 1:]
  return trial_behaviour(data.sessions[position], data.split, intervals, data.config.n_bins)


def decode_session(
  predictor: Predictor,
  params,
  data: trials_lib.TrialData,
  position: int,
  *,
  prompt: str,
  folds: int,
  seed: int,
  batch_size: int,
  max_rows: int,
  mesh=None,
  label: str = "",
) -> decoding.Decoded:
  """The frozen-model behaviour decoders of session `position` (evaluation.decoding.decode_split
  on the [K, T, n] log-rates of the unmasked trials, given the `prompt` scheme's prompt)."""
  session, n_bins = data.sessions[position], data.config.n_bins
  masks = unmasked_masks(len(session.unit_ids), n_bins, prompt)
  with progress.Stage(f"{label}decoders' features (the unmasked trials)") as stage:
    (log_rates,) = predict_masks(
      predictor, params, data, position, masks, [1], batch_size=batch_size, max_rows=max_rows, mesh=mesh, stage=stage
    )
  behaviour = session_behaviour(data, position)
  decoded = decoding.decode_split(log_rates, behaviour, folds=folds, seed=seed, label=label)
  for metric, reason in decoded.skipped.items():
    logging.warning("%s, %s split: %s skipped: %s", session.session_id, data.split, metric, reason)
  return decoded


def at_width(masks: masking.EvalMasks, factor: int) -> masking.EvalMasks:
  """The masks on a grid `factor` times finer (each bin split into `factor`)."""
  return dataclasses.replace(
    masks, hide_bins=np.repeat(masks.hide_bins, factor), score_bins=np.repeat(masks.score_bins, factor)
  )


def width_factors(bin_size: float, widths: Sequence[float]) -> list[int]:
  """How many bins of each width fit in one bin of bin_size (ValueError when one does not divide it)."""
  out = []
  for w in widths:
    f = int(round(bin_size / w))
    if f < 1 or abs(f * w - bin_size) > 1e-9:
      raise ValueError(f"config.eval.bin_sizes: {w} s does not divide the training bin of {bin_size} s")
    out.append(f)
  return out


def query_times(masks: masking.EvalMasks, bin_size: float, factors: Sequence[int]) -> list[np.ndarray]:
  """Per width: [G_w] float32 centres (seconds from the trial start) of the scored bins."""
  out = []
  for f in factors:
    fine = np.flatnonzero(np.repeat(masks.score_bins, f))
    out.append(((fine + 0.5) * (bin_size / f)).astype(np.float32))
  return out


def predict_masks(
  predictor: Predictor,
  params,
  data: trials_lib.TrialData,
  position: int,
  masks: masking.EvalMasks,
  factors: Sequence[int],
  *,
  batch_size: int,
  max_rows: int,
  mesh=None,
  stage: progress.Stage | None = None,
) -> list[np.ndarray]:
  """Per width: [K, T_w, n] log-rates (spikes/s) of session `position`'s trials, each
  scored entry under its own mask (0 elsewhere); n: the session's units. stage: told the
  batches of copies done of all (progress.Stage.update)."""
  ks = data.session_trials(position)
  n_units, n_slots, bin_size = len(data.sessions[position].unit_ids), data.n_units, data.config.bin_size
  times = query_times(masks, bin_size, factors)
  all_times = np.concatenate(times)
  n_data = 1 if mesh is None else mesh.shape[mesh_lib.DATA]
  batch_size = -(-batch_size // n_data) * n_data
  max_rows = -(-max_rows // n_data) * n_data
  out = [np.zeros((len(ks), masks.score_bins.size * f, n_units), np.float32) for f in factors]
  fine_bins = [np.flatnonzero(np.repeat(masks.score_bins, f)) for f in factors]
  prompt = masking.scheme_index(masks.prompt)
  hide = np.pad(masks.hide_neurons, ((0, 0), (0, n_slots - n_units)))
  units, group = copies.context_units(masks)
  units = np.pad(units, ((0, 0), (0, n_slots - n_units)))
  order = np.argsort(group, kind="stable")
  items = [(int(m), i) for i in range(len(ks)) for m in order]  # the copies of a trial's context together
  session_row = data.vocab.session_row(data.sessions[position].session_id)
  unit_rows = data.unit_rows[position]
  for start in range(0, len(items), batch_size):
    chunk = items[start : start + batch_size]
    chunk = chunk + [chunk[-1]] * (batch_size - len(chunk))  # padding copies, never read back
    picks, copy_rows = copies.chunk_trials([(int(ks[i]), int(group[m])) for m, i in chunk], batch_size)
    tokens = copies.place_replicated(copies.context_tokens(data, picks, units), mesh)
    rows = slice(None) if mesh is None else mesh_lib.process_rows(batch_size, mesh)
    batch_masks = dict(
      copy_rows=copy_rows[rows],
      hide_units=hide[[m for m, _ in chunk]][rows],
      hide_bins=np.broadcast_to(masks.hide_bins, (batch_size, masks.hide_bins.size))[rows],
      prompt=np.full((batch_size,), prompt, np.int32)[rows],
    )
    batch_masks = copies.place(batch_masks, batch_size, mesh)
    latents = predictor.encode(
      params,
      tokens,
      batch_masks["copy_rows"],
      batch_masks["hide_units"],
      batch_masks["hide_bins"],
      batch_masks["prompt"],
    )
    real = len(items[start : start + batch_size])
    copy, unit = [], []
    for c, (m, _) in enumerate(chunk[:real]):
      scored = np.flatnonzero(masks.score_neurons[m])
      copy.append(np.full(len(scored), c)), unit.append(scored)
    copy, unit = np.concatenate(copy).astype(np.int32), np.concatenate(unit).astype(np.int32)
    for r0 in range(0, len(copy), max_rows):
      c_rows, u_rows = copy[r0 : r0 + max_rows], unit[r0 : r0 + max_rows]
      n_rows = copies.row_bucket(len(c_rows), max_rows, n_data)
      pad = n_rows - len(c_rows)
      args = dict(
        copy=np.pad(c_rows, (0, pad)),
        unit=np.pad(unit_rows[u_rows], (0, pad)),
        session=np.full((n_rows,), session_row, np.int32),
        prompt=np.full((n_rows,), prompt, np.int32),
      )
      if mesh is not None:
        args = copies.place({k: v[mesh_lib.process_rows(n_rows, mesh)] for k, v in args.items()}, n_rows, mesh)
      log_rates = activity.fetch(
        predictor.decode(params, latents, args["copy"], args["unit"], all_times, args["session"], args["prompt"])
      )[: len(c_rows)]
      trial = np.array([chunk[c][1] for c in c_rows])
      offset = 0
      for w, bins in enumerate(fine_bins):
        out[w][trial[:, None], bins[None, :], u_rows[:, None]] = log_rates[:, offset : offset + len(bins)]
        offset += len(bins)
    if stage is not None:
      stage.update(start // batch_size + 1, -(-len(items) // batch_size), "batches")
  return out


def evaluate_session(
  predictor: Predictor,
  params,
  data: trials_lib.TrialData,
  position: int,
  widths: Sequence[float],
  *,
  batch_size: int,
  max_rows: int,
  mesh=None,
  oracle: Callable[[int, float], np.ndarray | None] | None = None,
  fine_metrics: Sequence[str] | None = None,
  label: str = "",
  max_masks: int = 0,
) -> tuple[dict, dict]:
  """The four metrics of session `position` at every width: ({"<metric>_bps" at the
  training bin, "<metric>_bps_<w>ms" at each other width, "oracle_..." where `oracle`
  (position, width) gives the true expected counts [K, T_w, n]}, {"<metric>_<w>ms": [n]
  per-neuron bits per spike}). fine_metrics: the metrics scored at the other widths (None: all
  four; the decoder's work grows with the number of bins). max_masks: > 0, every metric
  scores the same sample of at most this many units (masking.evaluation_masks; 0: all).
  Each metric writes one line (progress.Stage, prefixed by `label`) with its score at each
  width and its time."""
  session, bin_size = data.sessions[position], data.config.bin_size
  n_units = len(session.unit_ids)
  factors = width_factors(bin_size, widths)
  intervals = data.trials[data.session_trials(position), 1:]
  counts = [binning.bin_spikes(session, intervals, bin_size / f, data.config.n_bins * f) for f in factors]
  truth = [None if oracle is None else oracle(position, bin_size / f) for f in factors]
  results, per_neuron = {}, {}
  for masks in masking.evaluation_masks(data.regions[position, :n_units], data.config.n_bins, max_masks):
    at = [j for j, f in enumerate(factors) if f == 1 or fine_metrics is None or masks.name in fine_metrics]
    stage = progress.Stage(label + masks.name)
    log_rates = predict_masks(
      predictor,
      params,
      data,
      position,
      masks,
      [factors[j] for j in at],
      batch_size=batch_size,
      max_rows=max_rows,
      mesh=mesh,
      stage=stage,
    )
    shown = []  # "20ms 0.1234" per width, for the stage's line
    for j, lr in zip(at, log_rates):
      f, w, spikes, true = factors[j], widths[j], counts[j], truth[j]
      fine = at_width(masks, f)
      suffix = "" if f == 1 else f"_{width_label(w)}"
      bps = activity.score_masks(np.exp(lr.astype(np.float64)) * (bin_size / f), spikes, fine)
      results[f"{masks.name}_bps{suffix}"] = float(np.nanmean(bps))
      shown.append(f"{width_label(w)} {results[f'{masks.name}_bps{suffix}']:.4f}")
      per_neuron[f"{masks.name}_{width_label(w)}"] = bps
      if true is not None:
        results[f"oracle_{masks.name}_bps{suffix}"] = float(np.nanmean(activity.score_masks(true, spikes, fine)))
    stage.note = ", ".join(shown) + " bps"
    stage.finish()
  results.update(session_id=session.session_id, n_trials=len(intervals), n_neurons=n_units)
  return results, per_neuron


def width_label(width: float) -> str:
  """'20ms' of 0.02."""
  return f"{width * 1000:g}ms"


def evaluate_data(
  graphdef,
  params,
  data: trials_lib.TrialData,
  widths: Sequence[float],
  *,
  batch_size: int,
  max_rows: int,
  mesh=None,
  oracle=None,
  decode: dict | None = None,
  heads: Callable[[int], decoding.Decoded] | None = None,
  fine_metrics: Sequence[str] | None = None,
  max_masks: int = 0,
) -> tuple[dict, dict]:
  """Every session of `data` (see evaluate_session, also for fine_metrics): (results, per-neuron arrays). One
  session: its metrics at the top level; several: their means there (report.session_means)
  and each session's under "sessions". decode: dict(prompt=, folds=, seed=) of the
  behaviour decoders (decode_session), or None to skip them; heads(position): the
  fine-tuned readouts' scores of a session (poyo_mtm_heads.head_metrics), or None;
  max_masks: see evaluate_session."""
  predictor = make_predictor(graphdef, data.config.bin_size)
  per_session, arrays = {}, {}
  for position, session in enumerate(data.sessions):
    label = f"{session.session_id}: " if len(data.sessions) > 1 else ""
    r, bps = evaluate_session(
      predictor,
      params,
      data,
      position,
      widths,
      batch_size=batch_size,
      max_rows=max_rows,
      mesh=mesh,
      oracle=oracle,
      fine_metrics=fine_metrics,
      label=label,
      max_masks=max_masks,
    )
    if decode is None:
      decoded = decoding.Decoded({}, {}, dict.fromkeys(decoding.BEHAVIOUR_METRICS, report.DECODING_OFF))
    else:
      decoded = decode_session(
        predictor, params, data, position, **decode, batch_size=batch_size, max_rows=max_rows, mesh=mesh, label=label
      )
    if heads is not None:
      head = heads(position)
      decoded = decoding.Decoded({**decoded.scores, **head.scores}, decoded.folds, {**decoded.skipped, **head.skipped})
    r.update(decoded.scores, decoding_folds=decoded.folds, skipped=decoded.skipped)
    per_session[session.session_id] = r
    arrays.update({(k if len(data.sessions) == 1 else f"{session.session_id}/{k}"): v for k, v in bps.items()})
  if len(per_session) == 1:
    return next(iter(per_session.values())), arrays
  return dict(report.session_means(per_session), sessions=per_session), arrays


def true_rates_oracle(data: trials_lib.TrialData):
  """oracle(position, width) for evaluate_session: the true expected counts [K, T_w, n]
  of the split's trials of the sessions that keep their rates (the synthetic brain's,
  datasets.synthetic_events), None for the others."""

  def oracle(position: int, width: float) -> np.ndarray | None:
    session = data.sessions[position]
    if "rates" not in session.extras or "trial_index" not in session.extras:
      return None
    _, rows = synthetic_events.split_rows(session, data.split)
    rates = np.asarray(session.extras["rates"], np.float64)[rows]  # [K, 100, n] at 20 ms
    chunks = [  # 16 trials at a time: the 1 ms rates of a whole split would take GBs
      synthetic_events.rates_at(synthetic_events.fine_rates(rates[i : i + 16]), width) for i in range(0, len(rates), 16)
    ]
    return np.concatenate(chunks) if chunks else np.zeros((0, int(round(data.config.context / width)), rates.shape[2]))

  return oracle
