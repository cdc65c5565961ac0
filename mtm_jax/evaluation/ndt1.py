"""NDT1 evaluation of a trained model (tasks.base.Trained): the four activity metrics
and behaviour decoding per session, their means (report.session_means) and rasters."""

from __future__ import annotations

from absl import logging
import numpy as np

from mtm_jax import masking, progress
from mtm_jax.datasets import pipeline
from mtm_jax.evaluation import activity, decoding, ndt1_heads, plots, report


def unmasked_log_rates(trained, spikes: np.ndarray, *, prompt: str, session: int) -> np.ndarray:
  """[K, T, N] log-rates of the frozen model on unmasked input, given `prompt`."""
  k, t, n = spikes.shape
  masks = masking.EvalMasks(
    "unmasked", prompt, np.zeros((1, n), bool), np.ones((1, n), bool), np.zeros(t, bool), np.ones(t, bool)
  )
  return predict_noncausal(trained, activity.make_predictor(trained.graphdef), spikes, masks, session)


def predict_noncausal(trained, predictor, spikes: np.ndarray, masks: masking.EvalMasks, session: int):
  """[K, T, N] log-rates of the trained model under `masks`, non-causal attention."""
  config = trained.config
  return activity.predict_masks(
    predictor,
    trained.params,
    spikes,
    masks,
    causal=False,
    max_batch=config.eval.max_batch,
    mesh=trained.mesh,
    session=session,
    n_neurons=trained.n_neurons,
  )


def decode_session(trained, name: str, split: str, data: dict, *, row: int, label: str = "") -> decoding.Decoded:
  """The frozen-model decoders (and, if config.eval.head_steps > 0, the fine-tuned heads)
  of one session's split `data`; decoders the split cannot run are skipped, one warning
  line each."""
  config = trained.config
  prompt = config.eval.decoding_prompt if config.model.use_prompt else masking.SCHEMES[0]
  with progress.Stage(f"{label}decoders' features (the unmasked trials)"):
    features = unmasked_log_rates(trained, data["spikes"], prompt=prompt, session=row)
  decoded = decoding.decode_split(
    features, data, folds=config.eval.decoding_folds, seed=config.eval.decoding_seed, label=label
  )
  if config.eval.head_steps > 0:
    head = ndt1_heads.head_metrics(
      trained,
      name,
      steps=config.eval.head_steps,
      seed=config.eval.decoding_seed,
      eval_split=split,
      label=label,
    )
    decoded = decoding.Decoded({**decoded.scores, **head.scores}, decoded.folds, {**decoded.skipped, **head.skipped})
  for metric, reason in decoded.skipped.items():
    logging.warning("%s, %s split: %s skipped: %s", name, split, metric, reason)
  return decoded


def evaluate_session(
  trained,
  name: str,
  split: str,
  *,
  keep_predictions: bool = False,
  decode: bool = True,
  label: str = "",
) -> dict:
  """The four activity metrics and behaviour decoding of one of the model's sessions.

  Returns the metrics dict, with "decoding_folds" ({metric: outer folds used}),
  "skipped" ({metric: reason}, behaviour metrics the split cannot score, or all of them
  when not `decode`), "per_neuron" ({metric: [N] bps}) and, if keep_predictions,
  "predictions" ({metric: [K, T, N] expected counts}) and "spikes". Each stage writes a
  line (progress.Stage; label: their prefix)."""
  config = trained.config
  row = trained.row(name)
  info = trained.sessions[row]
  data = pipeline.load_split(name, config.data.data_dir, split)
  if data["spikes"].shape[-1] != info.n_neurons:
    raise ValueError(
      f"data set {name!r}: {data['spikes'].shape[-1]} neurons, the model's session row {row} "
      f"has {info.n_neurons}; was the data set rebuilt?"
    )
  results = activity.evaluate(
    trained.graphdef,
    trained.params,
    data["spikes"],
    info.region_ids(),
    causal_trained=config.masking.mode in (masking.MTM, "causal"),
    true_rates=data.get("rates"),
    max_batch=config.eval.max_batch,
    mesh=trained.mesh,
    session=row,
    n_neurons=trained.n_neurons,
    keep_predictions=keep_predictions,
    label=label,
    max_masks=config.eval.get("max_masks", 0),
  )
  if decode:
    decoded = decode_session(trained, name, split, data, row=row, label=label)
  else:
    off = decoding.BEHAVIOUR_METRICS + (report.HEAD_METRICS if config.eval.head_steps > 0 else ())
    decoded = decoding.Decoded({}, {}, dict.fromkeys(off, report.DECODING_OFF))
  results.update(decoded.scores, decoding_folds=decoded.folds, skipped=decoded.skipped)
  results.update(
    session=name,
    session_id=info.session_id,
    split=split,
    step=trained.step,
    masking_mode=config.masking.mode,
    n_trials=int(data["spikes"].shape[0]),
    n_neurons=info.n_neurons,
  )
  if keep_predictions:
    results["spikes"] = data["spikes"]
  return results


def evaluate_sessions(trained, split: str, sessions: list[str] | None = None, decode: bool = True) -> tuple[dict, dict]:
  """Scores a trained NDT1 (tasks.base.Trained) on a split of its sessions (default all):
  (results, {name: [N] per-neuron bps}). One session: the metrics at the top level;
  several: their means at the top level (over the sessions that scored each) and each
  session's under "sessions". decode=False skips the behaviour decoders and heads."""
  names = sessions or trained.names
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise ValueError(f"--datasets: {repeated} given more than once")
  per_session = {}
  arrays = {}
  for name in names:
    label = f"{name}: " if len(names) > 1 else ""
    r = evaluate_session(trained, name, split, decode=decode, label=label)
    for metric, bps in r.pop("per_neuron").items():
      arrays[metric if len(names) == 1 else f"{name}/{metric}"] = bps
    per_session[name] = r
  if len(names) == 1:
    results = per_session[names[0]]
  else:
    results = report.session_means(per_session)
    results.update(split=split, step=trained.step, masking_mode=trained.config.masking.mode, sessions=per_session)
  return results, arrays


RASTER_METRICS = {"inter-region": "inter_region", "intra-region": "intra_region"}


def _region_rates(trained, name: str, split: str, metrics) -> tuple[np.ndarray, dict]:
  """(spikes [K, T, N], {metric: [K, T, N] expected counts}) of one session's split."""
  data = pipeline.load_split(name, trained.config.data.data_dir, split, ("spikes", "trial_index"))
  row = trained.row(name)
  region_ids = trained.sessions[row].region_ids()
  predictor = activity.make_predictor(trained.graphdef)
  out = {}
  for masks in masking.evaluation_masks(region_ids, data["spikes"].shape[1]):
    if masks.name in metrics:
      log_rates = predict_noncausal(trained, predictor, data["spikes"], masks, row)
      out[masks.name] = np.exp(log_rates)
  return data["spikes"], out


def raster_plot(
  models: dict, path: str, *, split: str | None = None, session: str | None = None, region: str | None = None
) -> str:
  """The MtM paper's Figure 2 as a PNG: trial-averaged rasters of one region's neurons,
  ground truth vs each model (models: {column label: tasks.base.Trained}) under
  inter-region and intra-region masking. Default: the first model's first session and
  its largest region. Returns the region shown."""
  first = next(iter(models.values()))
  session = session or first.names[0]
  split = split or first.config.eval.split
  info = first.sessions[first.row(session)]
  names = np.array(info.region_names)
  region = region or max(info.regions, key=lambda r: int(np.sum(names == r)))
  if region not in info.regions:
    raise ValueError(f"--plot_region: {region!r} is not a region of {session}; it has {info.regions}")
  neurons = np.flatnonzero(names == region)
  predictions = {row: {} for row in RASTER_METRICS}
  truth = None
  for label, trained in models.items():
    spikes, rates = _region_rates(trained, session, split, set(RASTER_METRICS.values()))
    truth = spikes[..., neurons]
    for row, metric in RASTER_METRICS.items():
      predictions[row][label] = rates[metric][..., neurons]
  plots.raster_figure(
    path, truth, predictions, title=f"{session} ({info.session_id}), {region}: {len(neurons)} neurons, {split} trials"
  )
  return region
