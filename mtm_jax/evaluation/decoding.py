"""Behaviour decoding from a frozen model's predicted log-rates (MtM paper, section 5).

The features of a trial are the model's log-rates on the unmasked trial, [time, neurons]
flattened to one vector of time * neurons values. Each behaviour is decoded by a
cross-validated linear model, with the regularisation strength chosen by an inner
cross-validation on the training trials of each outer fold:
- choice (two labels, e.g. -1 / +1): StandardScaler + L2 logistic regression, C chosen
  by an inner stratified K-fold over `LOGISTIC_C_GRID`; the score is the accuracy of the
  out-of-fold predictions over all trials.
- whisker motion energy and wheel speed ([trials, time] per-bin traces): StandardScaler
  + RidgeCV over `RIDGE_ALPHA_GRID` (efficient leave-one-out), one multi-output model
  predicting every bin of a trial from that trial's features; the score is the R^2 of
  the out-of-fold predictions, pooled over all trial x bin entries (one R^2, not a mean
  of per-bin R^2).

Outer folds are shuffled with `seed`, so the scores are deterministic given the inputs.
`decode_split` is what evaluation calls: on a small split it uses fewer outer folds where
that is still valid (never more than asked) and records a behaviour the split cannot score
(too few trials of a class, a single class, a constant trace) as skipped with the reason.
`choice_accuracy` runs BLAS and OpenMP code on one thread while it fits (scoped with
threadpoolctl: the previous thread counts are restored on return).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from mtm_jax import metrics, progress

BEHAVIOUR_METRICS = ("choice_accuracy", "whisker_motion_energy_r2", "wheel_speed_r2")

# Inverse regularisation strengths of the logistic regression, searched by inner CV.
LOGISTIC_C_GRID = tuple(float(c) for c in np.logspace(-6, 3, 10))
# Ridge penalties, searched by leave-one-out; large values matter for time * neurons
# features (tens of thousands of standardised columns).
RIDGE_ALPHA_GRID = tuple(float(a) for a in np.logspace(-3, 7, 21))
# Folds of the inner cross-validation that chooses C (fewer if a class is too small).
INNER_FOLDS = 3
# Iteration cap of the logistic regression solver (lbfgs).
LOGISTIC_MAX_ITER = 2000

_CONTINUOUS = {"whisker_motion_energy": "whisker_motion_energy_r2", "wheel_speed": "wheel_speed_r2"}


Undecodable = metrics.Undecodable  # a split too small for a decoder (defined with the metrics)


class Decoded(NamedTuple):
  """What evaluation records of a set of decoders: scores {metric: value}, folds {metric:
  outer folds used} and skipped {metric: reason} (each metric in exactly one of scores and
  skipped)."""

  scores: dict
  folds: dict
  skipped: dict


def _train_size(n: int, folds: int) -> int:
  """Smallest number of the `n` items left for training by a (stratified) K-fold split."""
  return n - math.ceil(n / folds)


def _min_items(folds: int) -> int:
  """Fewest items (per class) such that every training fold keeps at least 2 of them."""
  n = folds
  while _train_size(n, folds) < 2:
    n += 1
  return n


def fitting_folds(n: int, requested: int) -> int:
  """Most outer folds, at most `requested`, that `n` items (per class) allow (each training
  fold keeps 2 of them); 2 when none do, so the decoder raises Undecodable naming the need."""
  return max((k for k in range(2, requested + 1) if n >= _min_items(k)), default=2)


def _check_folds(name: str, folds) -> int:
  if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
    raise ValueError(f"{name}: folds must be an integer >= 2; got {folds!r}")
  return int(folds)


def _check_features(name: str, features) -> np.ndarray:
  features = np.asarray(features, np.float64)
  if features.ndim != 2:
    raise ValueError(f"{name}: features must be [trials, F]; got shape {features.shape}")
  if features.shape[1] == 0:
    raise ValueError(f"{name}: features must have at least one column; got shape {features.shape}")
  if not np.isfinite(features).all():
    raise ValueError(f"{name}: features contain non-finite values (NaN or inf)")
  return features


def choice_model(seed: int, inner_folds: int):
  """The choice decoder: standardise, rotate into the training trials' principal axes,
  L2 logistic regression with C chosen by an inner stratified K-fold.

  The rotation (a PCA keeping every component) changes nothing but speed: an L2-penalised
  linear model's weights lie in the span of the (centred) training trials, so fitting on
  their coordinates in that span gives the same decision function, with trials x trials
  features instead of trials x (time * neurons)."""
  return make_pipeline(
    StandardScaler(),
    PCA(svd_solver="full"),
    GridSearchCV(
      LogisticRegression(max_iter=LOGISTIC_MAX_ITER),
      {"C": list(LOGISTIC_C_GRID)},
      scoring="accuracy",
      cv=StratifiedKFold(inner_folds, shuffle=True, random_state=seed),
    ),
  )


def choice_accuracy(features, choice, *, folds: int = 5, seed: int = 0) -> float:
  """Cross-validated accuracy of a logistic-regression decoder of a two-label choice.

  Args:
    features: [trials, F] per-trial feature vectors (e.g. flattened log-rates).
    choice: [trials] labels; exactly two distinct values (e.g. -1 / +1).
    folds: outer folds (StratifiedKFold, shuffled with `seed`); each class needs enough
      trials that every outer fold has a test trial and every training fold keeps two.
    seed: seed of the outer and inner fold shuffles.

  Returns:
    Accuracy of the out-of-fold predictions over all trials, in [0, 1].

  Raises:
    Undecodable: a single class, or a class too small for `folds`.
    ValueError: malformed inputs (shapes, non-finite values, more than two classes).
  """
  folds = _check_folds("choice_accuracy", folds)
  features = _check_features("choice_accuracy", features)
  choice = np.asarray(choice)
  if choice.ndim != 1 or choice.shape[0] != features.shape[0]:
    raise ValueError(
      f"choice_accuracy: choice must be [trials] with trials = {features.shape[0]} "
      f"(rows of features); got shape {choice.shape}"
    )
  if choice.dtype.kind == "f" and not np.isfinite(choice).all():
    raise ValueError("choice_accuracy: choice contains non-finite values (NaN or inf)")
  labels, counts = np.unique(choice, return_counts=True)
  if labels.size != 2:
    error = Undecodable if labels.size < 2 else ValueError  # one class: a split's property
    raise error(
      f"choice_accuracy: choice must hold exactly two classes; got {labels.size} "
      f"({labels.tolist()[:5]}), so choice accuracy is undefined"
    )
  needed = _min_items(folds)
  if counts.min() < needed:
    raise Undecodable(
      f"choice_accuracy: each class needs at least {needed} trials for {folds} folds; "
      f"class counts are {dict(zip(labels.tolist(), counts.tolist()))}"
    )
  inner = min(INNER_FOLDS, _train_size(int(counts.min()), folds))
  model = choice_model(seed, inner)
  outer = StratifiedKFold(folds, shuffle=True, random_state=seed)
  # Hundreds of small lbfgs fits: BLAS and OpenMP threads cost more than they save (several
  # times slower on a busy machine), so one thread each, for this call only.
  with threadpool_limits(limits=1):
    predicted = cross_val_predict(model, features, choice, cv=outer)
  return float(accuracy_score(choice, predicted))


def continuous_r2(features, target, *, folds: int = 5, seed: int = 0) -> float:
  """Cross-validated R^2 of a ridge decoder of a per-bin behaviour trace.

  Args:
    features: [trials, F] per-trial feature vectors (e.g. flattened log-rates).
    target: [trials, T] behaviour per trial and bin (a [trials] vector is one bin).
    folds: outer folds (KFold over trials, shuffled with `seed`).
    seed: seed of the outer fold shuffle.

  Returns:
    sklearn's r2_score of the out-of-fold predictions against `target`, both flattened
    over trials x bins (pooled). At most 1; 0 for a constant prediction at the mean.

  Raises:
    Undecodable: too few trials for `folds`, or a constant target.
    ValueError: malformed inputs (shapes, non-finite values).
  """
  folds = _check_folds("continuous_r2", folds)
  features = _check_features("continuous_r2", features)
  target = np.asarray(target, np.float64)
  if target.ndim not in (1, 2) or target.shape[0] != features.shape[0]:
    raise ValueError(
      f"continuous_r2: target must be [trials, T] with trials = {features.shape[0]} "
      f"(rows of features); got shape {target.shape}"
    )
  if target.size == 0:
    raise ValueError(f"continuous_r2: target is empty; got shape {target.shape}")
  if not np.isfinite(target).all():
    raise ValueError("continuous_r2: target contains non-finite values (NaN or inf)")
  needed = _min_items(folds)
  if target.shape[0] < needed:
    raise Undecodable(f"continuous_r2: needs at least {needed} trials for {folds} folds; got {target.shape[0]}")
  if np.ptp(target) == 0:
    raise Undecodable("continuous_r2: target is constant, so R^2 is undefined")
  model = make_pipeline(StandardScaler(), RidgeCV(alphas=list(RIDGE_ALPHA_GRID)))
  outer = KFold(folds, shuffle=True, random_state=seed)
  predicted = cross_val_predict(model, features, target, cv=outer)
  return pooled_r2(target, predicted)


def pooled_r2(target, predicted) -> float:
  """sklearn's r2_score of [trials, T] predictions, pooled over every trial x bin entry
  (one R^2, not a mean of per-bin ones): the R^2 of every behaviour trace decoder."""
  return float(r2_score(np.ravel(target), np.ravel(predicted)))


def _features_and_targets(log_rates, behaviour: Mapping) -> tuple[np.ndarray, dict]:
  """([trials, time * neurons] features, {metric: target} of the present fields, in
  BEHAVIOUR_METRICS order) after checking the shapes (see decode_behaviour)."""
  log_rates = np.asarray(log_rates, np.float64)
  if log_rates.ndim != 3:
    raise ValueError(f"decode_behaviour: log_rates must be [trials, time, neurons]; got shape {log_rates.shape}")
  if not isinstance(behaviour, Mapping):
    raise ValueError(f"decode_behaviour: behaviour must be a mapping of field -> array; got {type(behaviour).__name__}")
  n_trials = log_rates.shape[0]
  fields = {"choice": "choice_accuracy", **_CONTINUOUS}
  for key in fields:
    value = behaviour.get(key)
    if value is not None and np.shape(value)[:1] != (n_trials,):
      raise ValueError(
        f"decode_behaviour: behaviour[{key!r}] must have {n_trials} trials (first "
        f"axis of log_rates); got shape {np.shape(value)}"
      )
  targets = {metric: behaviour[key] for key, metric in fields.items() if behaviour.get(key) is not None}
  return log_rates.reshape(n_trials, -1), targets


def _fold_items(metric: str, target) -> int:
  """What bounds the outer folds: the trials of the smallest class (choice) or the trials."""
  if metric != "choice_accuracy":
    return len(target)
  counts = np.unique(np.asarray(target), return_counts=True)[1]
  return int(counts.min()) if counts.size else 0


def _decoder(metric: str):
  return choice_accuracy if metric == "choice_accuracy" else continuous_r2


def decode_behaviour(log_rates, behaviour: Mapping, *, folds: int = 5, seed: int = 0) -> dict:
  """Decodes the behaviours present in `behaviour` from predicted log-rates.

  Args:
    log_rates: [trials, time, neurons] the frozen model's predicted log-rates on the
      unmasked trials; the features of a trial are its [time * neurons] values.
    behaviour: mapping with any of `choice` [trials], `whisker_motion_energy`
      [trials, time] and `wheel_speed` [trials, time]; missing (or None) fields are
      skipped, other keys are ignored.
    folds, seed: as in `choice_accuracy` and `continuous_r2` (exactly `folds`; see
      decode_split for fewer on small splits).

  Returns:
    {metric: value} for the present fields, keys from BEHAVIOUR_METRICS, in that order.
  """
  features, targets = _features_and_targets(log_rates, behaviour)
  return {m: _decoder(m)(features, t, folds=folds, seed=seed) for m, t in targets.items()}


def decode_split(log_rates, behaviour: Mapping, *, folds: int = 5, seed: int = 0, label: str = "") -> Decoded:
  """decode_behaviour for a split of any size: each decoder uses the most outer folds, at
  most `folds`, that its trials allow (the smallest class for choice, the trials for the
  traces); one the trials cannot score (Undecodable) is skipped with its reason. Each
  decoder writes one line (progress.Stage "<label>decoder <metric>") with its score and time.

  Returns:
    Decoded(scores, folds used, skipped) over the present fields (BEHAVIOUR_METRICS order).
  """
  folds = _check_folds("decode_split", folds)
  features, targets = _features_and_targets(log_rates, behaviour)
  scores, used, skipped = {}, {}, {}
  for metric, target in targets.items():
    with progress.Stage(f"{label}decoder {metric}") as stage:
      k = fitting_folds(_fold_items(metric, target), folds)
      try:
        scores[metric] = _decoder(metric)(features, target, folds=k, seed=seed)
        used[metric] = k
        stage.note = f"{scores[metric]:.4f} ({k} folds)"
      except Undecodable as e:
        skipped[metric] = str(e)
        stage.note = "skipped"
  return Decoded(scores, used, skipped)
