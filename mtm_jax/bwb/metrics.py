"""BrainWideBench's metrics in NumPy, defined as its scorer ibl-bwb-eval 0.1.0 computes them.

The scorer uses torchmetrics (1.9.0) and its own BPS and PoissonD2Score; each function here
names what it reproduces. Differences, all deliberate:
- Sums are taken in float64; the scorer accumulates in float32 (predictions upcast from
  float16 to float32), so the two agree to float32 rounding (about 1e-6 on small sets).
- Non-finite predictions and negative counts raise ValueError here (the TS2 scorer does not
  check finiteness and returns NaN).
A degenerate case returns NaN, as the scorer's `degenerate_value` does.

Bits per spike here is pooled over spikes: not MtM's / mtm_jax.metrics' per-neuron mean, and
it takes log-rates, not rates.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-9  # BPS's and PoissonD2Score's eps
CLIPPED = frozenset({"r2", "poisson_d2", "bps"})  # clipped at 0 per (recording, seed) before averaging


def _poisson_sums(log_rates, counts, what: str):
  """(T, N) float64 pair from (..., N) log-rates and counts (leading axes flattened; 1-D: one unit)."""
  log_rates = np.asarray(log_rates, np.float64)
  counts = np.asarray(counts, np.float64)
  if log_rates.shape != counts.shape:
    raise ValueError(f"{what}: log-rates {log_rates.shape} and counts {counts.shape} must have the same shape")
  if log_rates.ndim == 0 or log_rates.size == 0:
    raise ValueError(f"{what}: expected (..., units) arrays with at least one entry; got shape {log_rates.shape}")
  if log_rates.ndim == 1:
    log_rates, counts = log_rates[:, None], counts[:, None]
  log_rates = log_rates.reshape(-1, log_rates.shape[-1])
  counts = counts.reshape(-1, counts.shape[-1])
  if (counts < 0).any() or np.isnan(counts).any():
    raise ValueError(f"{what}: counts must be non-negative and not NaN")
  if not np.isfinite(log_rates).all():
    raise ValueError(f"{what}: log-rates contain NaN or inf")
  return log_rates, counts


def bits_per_spike(log_rates, counts, eps: float = EPS) -> float:
  """BWB's bits per spike (the scorer's BPS), pooled over the spikes of all units.

  log_rates, counts: (..., N) log expected counts per bin and observed counts (leading axes,
  e.g. windows x bins, are flattened to T samples). Per unit n: S_n its total count, null rate
  lambda_n = S_n / T; units with lambda_n < eps are dropped. Result:
  [sum_n S_n (1 - log lambda_n) - sum_{t,n} (exp(y_hat) - y_hat * y)] / (sum_n S_n * ln 2).
  NaN when no unit is kept."""
  log_rates, counts = _poisson_sums(log_rates, counts, "bits_per_spike")
  total = counts.sum(0)
  null_rate = total / counts.shape[0]
  valid = null_rate >= eps
  if not valid.any():
    return float("nan")
  null_loss = np.sum(total[valid] * (1.0 - np.log(null_rate[valid])))
  pred_loss = np.sum((np.exp(log_rates).sum(0) - (log_rates * counts).sum(0))[valid])
  return float((null_loss - pred_loss) / (total[valid].sum() * np.log(2.0)))


def poisson_d2(log_rates, counts, eps: float = EPS) -> float:
  """BWB's Poisson D^2 (the scorer's PoissonD2Score): mean over units of
  1 - (L_pred - L_sat) / (L_null - L_sat), Poisson NLLs without log k!.

  log_rates, counts: (..., N), or (T,) for one unit. Per unit (sums over T):
  L_pred - L_sat = sum(exp(y_hat) - y_hat y) - sum(y - y log y);
  L_null - L_sat = sum(y log y) - S log(max(S / T, eps)).
  Units kept: S > 0 and |L_null - L_sat| >= eps. NaN when none is."""
  log_rates, counts = _poisson_sums(log_rates, counts, "poisson_d2")
  total = counts.sum(0)
  y_log_y = np.where(counts > 0, counts * np.log(np.where(counts > 0, counts, 1.0)), 0.0).sum(0)
  numerator = (np.exp(log_rates).sum(0) - (log_rates * counts).sum(0)) - (total - y_log_y)
  denominator = y_log_y - total * np.log(np.maximum(total / counts.shape[0], eps))
  valid = (total > 0) & (np.abs(denominator) >= eps)
  if not valid.any():
    return float("nan")
  return float(np.mean(1.0 - numerator[valid] / denominator[valid]))


def _pair(predictions, targets, mask, what: str):
  """(M, D) float64 predictions and targets from (N, T, D), (N, T) (D = 1) or (M,) arrays, mask applied."""
  predictions = np.asarray(predictions, np.float64)
  targets = np.asarray(targets, np.float64)
  if predictions.size != targets.size:
    raise ValueError(f"{what}: predictions {predictions.shape} and targets {targets.shape} differ in size")
  d = predictions.shape[-1] if predictions.ndim == 3 else 1  # (N, T, D); (N, T) and (M,): one output
  predictions, targets = predictions.reshape(-1, d), targets.reshape(-1, d)
  if mask is not None:
    mask = np.asarray(mask)
    if mask.dtype != np.bool_ or mask.size != predictions.shape[0]:
      raise ValueError(
        f"{what}: mask must be boolean with one entry per sample ({predictions.shape[0]}); "
        f"got {mask.dtype} {mask.shape}"
      )
    mask = mask.reshape(-1)
    if not mask.any():
      raise ValueError(f"{what}: the mask leaves no sample to score")
    predictions, targets = predictions[mask], targets[mask]
  return predictions, targets


def r2(predictions, targets, mask=None) -> float:
  """BWB's R^2 (torchmetrics R2Score, uniform average over outputs), pooled over all trials x bins.

  predictions, targets: (N, T, D), (N, T) or (M,): flattened to (N*T, D), D = 1 unless 3-D; mask: optional
  boolean (N, T) (the paw tasks' pose confidence) selecting the samples scored. Per output:
  rss = sum (y - y_hat)^2, tss = sum y^2 - (sum y)^2 / M; 1 - rss/tss, but 1 where rss <= 1e-4
  and 0 where tss <= 1e-4 < rss (torchmetrics' near-constant rule). Needs M >= 2."""
  predictions, targets = _pair(predictions, targets, mask, "r2")
  if predictions.shape[0] < 2:
    raise ValueError(f"r2: needs at least two samples; got {predictions.shape[0]}")
  sum_obs = targets.sum(0)
  tss = (targets * targets).sum(0) - sum_obs * (sum_obs / targets.shape[0])
  rss = ((targets - predictions) ** 2).sum(0)
  rss_ok, tss_ok = np.abs(rss) > 1e-4, np.abs(tss) > 1e-4
  with np.errstate(divide="ignore", invalid="ignore"):
    scores = np.where(rss_ok & tss_ok, 1.0 - rss / tss, np.where(rss_ok, 0.0, 1.0))
  return float(scores.mean())


def mean_absolute_error(predictions, targets, mask=None) -> float:
  """torchmetrics MeanAbsoluteError over all (masked) entries."""
  predictions, targets = _pair(predictions, targets, mask, "mean_absolute_error")
  return float(np.abs(predictions - targets).mean())


def _labels(logits, labels, num_classes: int, what: str):
  """(predicted, true) int class indices: argmax of (N, C) or (N, 1, C) logits (first max on ties)."""
  logits = np.asarray(logits)
  if logits.ndim == 3 and logits.shape[1] == 1:
    logits = logits[:, 0]
  labels = np.asarray(labels).reshape(-1)
  if logits.ndim != 2 or logits.shape[1] != num_classes or logits.shape[0] != labels.shape[0]:
    raise ValueError(
      f"{what}: logits must be (N, {num_classes}) or (N, 1, {num_classes}) for {labels.shape[0]} labels; "
      f"got {logits.shape}"
    )
  if labels.size == 0:
    raise ValueError(f"{what}: no trial to score")
  if not np.all((labels >= 0) & (labels < num_classes) & (labels == np.round(labels))):
    raise ValueError(f"{what}: labels must be class indices in [0, {num_classes}); got {np.unique(labels)}")
  return np.argmax(logits, axis=1), labels.astype(np.int64)


def _counts(predicted, true, num_classes: int):
  """Per-class true positives, false positives, false negatives."""
  tp = np.bincount(true[predicted == true], minlength=num_classes).astype(np.float64)
  fp = np.bincount(predicted, minlength=num_classes) - tp
  fn = np.bincount(true, minlength=num_classes) - tp
  return tp, fp, fn


def _macro(scores, tp, fp, fn) -> float:
  """torchmetrics' macro average: classes absent from both the targets and the predictions
  (tp + fp + fn == 0) are left out."""
  present = (tp + fp + fn) > 0
  return float(scores[present].mean())


def balanced_accuracy(logits, labels, num_classes: int) -> float:
  """BWB's "bacc" (torchmetrics Accuracy, multiclass, average="macro") on the argmax of logits.

  Mean recall tp / (tp + fn) over the classes present in the targets or the predictions: a
  class predicted but absent from the targets counts as recall 0 (sklearn's
  balanced_accuracy_score leaves it out instead; otherwise the two agree)."""
  predicted, true = _labels(logits, labels, num_classes, "balanced_accuracy")
  tp, fp, fn = _counts(predicted, true, num_classes)
  with np.errstate(divide="ignore", invalid="ignore"):
    recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
  return _macro(recall, tp, fp, fn)


def macro_f1(logits, labels, num_classes: int) -> float:
  """BWB's TS1 "f1" (torchmetrics F1Score, multiclass, average="macro") on the argmax of logits:
  mean of 2 tp / (2 tp + fp + fn) over the classes present in the targets or the predictions
  (= sklearn's f1_score(average="macro") with its default labels)."""
  predicted, true = _labels(logits, labels, num_classes, "macro_f1")
  tp, fp, fn = _counts(predicted, true, num_classes)
  with np.errstate(divide="ignore", invalid="ignore"):
    f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
  return _macro(f1, tp, fp, fn)


def classification_report(true, predicted, label_names) -> dict[str, float]:
  """TS3's scores (the scorer's CLASSIFICATION_SCORERS): per class and macro precision, recall
  and F1 over ALL of label_names (sklearn with labels=label_names, zero_division=0: a class absent
  from both sides scores 0 and still counts in the macro mean).

  true, predicted: (N,) class indices into label_names. Keys "<class>/<metric>" and
  "macro/<metric>", metric in precision, recall, f1-score."""
  true, predicted = np.asarray(true).reshape(-1), np.asarray(predicted).reshape(-1)
  n = len(label_names)
  if true.shape != predicted.shape or true.size == 0:
    raise ValueError(
      f"classification_report: true {true.shape} and predicted {predicted.shape} must be equal, non-empty"
    )
  for name, x in (("true", true), ("predicted", predicted)):
    if not np.all((x >= 0) & (x < n)):
      raise ValueError(f"classification_report: {name} must hold class indices in [0, {n})")
  tp, fp, fn = _counts(predicted.astype(np.int64), true.astype(np.int64), n)
  with np.errstate(divide="ignore", invalid="ignore"):
    scores = {
      "precision": np.where(tp + fp > 0, tp / (tp + fp), 0.0),
      "recall": np.where(tp + fn > 0, tp / (tp + fn), 0.0),
      "f1-score": np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0),
    }
  out = {}
  for metric, per_class in scores.items():
    out.update({f"{c}/{metric}": float(v) for c, v in zip(label_names, per_class, strict=True)})
  for metric, per_class in scores.items():
    out[f"macro/{metric}"] = float(per_class.mean())
  return out


def _mean_sem(values) -> tuple[float, float | None, int]:
  """(mean, SEM = std(ddof=1) / sqrt(n) or None for n == 1, n), as the scorer's _mean_sem_n."""
  n = len(values)
  mean = float(np.mean(values))
  return mean, (float(np.std(values, ddof=1) / np.sqrt(n)) if n > 1 else None), n


def aggregate(raw: dict, clip_metrics=CLIPPED, clip_min: float = 0.0) -> dict:
  """BWB's reported scores (the scorer's aggregate_over_seeds).

  raw: {(label, task, recording_id, seed) or (label, task, seed): {metric: value}}. Each value
  of clip_metrics is clipped at clip_min (Python max: NaN stays NaN) per (recording, seed);
  then per seed the mean over recordings; then mean and SEM over seeds. Returns
  {(label, task): {metric: (mean, sem or None, number of seeds)}}."""
  per_seed: dict = {}
  for key, metrics in raw.items():
    if len(key) == 4:
      label, task, _, seed = key
    elif len(key) == 3:
      label, task, seed = key
    else:
      raise ValueError(
        f"aggregate: a key must be (label, task, recording_id, seed) or (label, task, seed); got {key!r}"
      )
    for name, value in metrics.items():
      value = max(value, clip_min) if name in clip_metrics else value
      per_seed.setdefault((label, task, name), {}).setdefault(seed, []).append(value)
  out: dict = {}
  for (label, task, name), by_seed in per_seed.items():
    out.setdefault((label, task), {})[name] = _mean_sem([float(np.mean(v)) for v in by_seed.values()])
  return out
