"""Linear readouts fit on frozen model features: TS1's behaviour decoders and TS3's region probe.

TS1 (one per task, session and seed): features [K, 50, F] of each trial's 1 s window (a
family's `window_features`: its unmasked log-rates of every unit per 20 ms bin) are read out
by scikit-learn models fit on the TS1 train trials; the regularisation is chosen on the val
trials by the task's primary metric (mtm_jax.bwb.metrics, as the scorer computes it), then
the model is refit on train alone and predicts the test trials:
  class tasks (choice, reward, stimulus_contrast): the features averaged over the window's
    bins (as BWB's MtM head pools over time), standardised, multinomial logistic regression;
    the logits of classes absent from the train trials are LOG_ABSENT;
  per-bin tasks (wheel, whisker, paws): the features of each bin and the bin's position
    (one-hot), standardised, ridge regression over all train bins (the paw tasks fit on
    their confident bins only);
  licking_rate: the same inputs, Poisson regression (log link): predictions are log-rates.
This is a linear probe on a frozen (self-supervised, adapted) model, not BWB's fine-tuning of
the model with its head (docs/bwb.md says what that means for comparisons).

TS3 (one per seed): the probe of BWB's `probe=linear` (src/ts3/probes/linear.py):
standardised embeddings, multinomial logistic regression with C = 1, classes weighted by
inverse frequency, fit on the pretrain units' embeddings and Cosmos labels; pred_proba's
columns in COSMOS_LABELS order (0 for a region absent from the pretrain units).
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from sklearn import exceptions, linear_model, pipeline, preprocessing

from mtm_jax.bwb import metrics, tasks

LOG_ABSENT = -30.0  # the logit of a class no train trial has (finite: the upload check refuses inf)
C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)  # logistic regression's inverse regularisation, chosen on val
ALPHA_GRID = (1.0, 10.0, 100.0, 1000.0)  # ridge's regularisation, chosen on val
POISSON_GRID = (1e-3, 1e-2, 1e-1)  # Poisson regression's regularisation, chosen on val


@dataclasses.dataclass(frozen=True)
class Split:
  """One TS1 split of a task: features [K, 50, F]; values [K] int (class tasks) or [K, 50]
  float; mask [K, 50] bool (the paw tasks' confident bins) or None."""

  features: np.ndarray
  values: np.ndarray
  mask: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Fitted:
  """A TS1 readout: the test predictions ([K, C] logits or [K, 50] values / log-rates), the
  regularisation chosen and each candidate's val score ({value: score})."""

  predictions: np.ndarray
  chosen: float
  val_scores: dict


def _check_features(task: str, name: str, features) -> np.ndarray:
  f = np.asarray(features)
  if f.ndim != 3 or f.shape[1] != tasks.TIMESTEPS or len(f) == 0:
    raise ValueError(f"ts1-{task} {name}: features must be [K > 0, {tasks.TIMESTEPS}, F]; got {f.shape}")
  if not np.all(np.isfinite(f)):
    raise ValueError(f"ts1-{task} {name}: non-finite features")
  return f


def _check(task: str, name: str, split: Split, spec: tasks.TS1Spec) -> None:
  f = _check_features(task, name, split.features)
  want = (len(f),) if spec.classification else (len(f), tasks.TIMESTEPS)
  if np.shape(split.values) != want:
    raise ValueError(f"ts1-{task} {name}: values must be {want}; got {np.shape(split.values)}")
  if spec.masked and (split.mask is None or np.shape(split.mask) != want):
    raise ValueError(f"ts1-{task} {name}: the paw tasks need a mask of shape {want}")


def _per_bin(features: np.ndarray) -> np.ndarray:
  """[K * 50, F + 50]: each bin's features and its position in the window (one-hot)."""
  k, t, f = features.shape
  position = np.broadcast_to(np.eye(t, dtype=features.dtype)[None], (k, t, t))
  return np.concatenate([features, position], axis=-1).reshape(k * t, f + t)


def _classifier(c: float):
  model = linear_model.LogisticRegression(C=c, max_iter=1000)
  return pipeline.make_pipeline(preprocessing.StandardScaler(), model)


def _logits(model, x: np.ndarray, n_classes: int) -> np.ndarray:
  """[K, n_classes] logits (log-probabilities; LOG_ABSENT for classes the fit never saw)."""
  out = np.full((len(x), n_classes), LOG_ABSENT, np.float32)
  with np.errstate(divide="ignore"):  # a probability of 0 is floored at LOG_ABSENT
    log_p = np.log(model.predict_proba(x))
  out[:, model.classes_] = np.maximum(log_p, LOG_ABSENT)
  return out


def _fit_class(spec, train: Split, x_train, x_other, c):
  if len(np.unique(train.values)) < 2:  # one class only: predict it, whatever the features
    out = np.full((len(x_other), spec.dim), LOG_ABSENT, np.float32)
    out[:, int(train.values[0])] = 0.0
    return out
  model = _classifier(c).fit(x_train, train.values)
  return _logits(model, x_other, spec.dim)


def _fit_bins(spec, train: Split, x_train, x_other, alpha):
  y, keep = np.asarray(train.values, np.float64).reshape(-1), np.ones(train.values.size, bool)
  if spec.masked:
    keep = np.asarray(train.mask, bool).reshape(-1)
  if not keep.any():
    raise ValueError(f"ts1-{spec.task} train: no confident bin to fit on")
  k = len(x_other) // tasks.TIMESTEPS
  if spec.primary == "poisson_d2":
    model = linear_model.PoissonRegressor(alpha=alpha, max_iter=1000)
    model = pipeline.make_pipeline(preprocessing.StandardScaler(), model).fit(x_train[keep], y[keep])
    return np.log(np.maximum(model.predict(x_other), 1e-9)).reshape(k, tasks.TIMESTEPS).astype(np.float32)
  model = linear_model.Ridge(alpha=alpha)
  model = pipeline.make_pipeline(preprocessing.StandardScaler(), model).fit(x_train[keep], y[keep])
  return model.predict(x_other).reshape(k, tasks.TIMESTEPS).astype(np.float32)


def _score(spec, predictions: np.ndarray, split: Split) -> float:
  if spec.classification:
    return metrics.balanced_accuracy(predictions, split.values, spec.dim)
  if spec.primary == "poisson_d2":
    return metrics.poisson_d2(predictions.reshape(-1, 1), np.asarray(split.values).reshape(-1, 1))
  mask = None if split.mask is None else np.asarray(split.mask).reshape(-1)
  return metrics.r2(predictions.reshape(-1), np.asarray(split.values).reshape(-1), mask)


def fit_ts1(task: str, train: Split | None, val: Split | None, test_features: np.ndarray) -> Fitted:
  """The readout of TS1 task `task` fit on `train`, its regularisation chosen on `val` (the
  first best on ties), predicting the test trials' features [K, 50, F]. A session too short
  for a split: no val, the middle of the grid (chosen NaN in val_scores' absence); no train
  (or one class-less), an uninformed constant (zero logits, zero per-bin values or log-rates)
  so that every test trial is still predicted."""
  spec = tasks.ts1_spec(task)
  _check_features(spec.task, "test", test_features)
  if train is None:
    shape = (len(test_features), spec.dim) if spec.classification else (len(test_features), tasks.TIMESTEPS)
    return Fitted(np.zeros(shape, np.float32), float("nan"), {})
  _check(spec.task, "train", train, spec)
  if val is not None:
    _check(spec.task, "val", val, spec)
  if spec.classification:
    pool = lambda f: np.asarray(f, np.float64).mean(axis=1)  # noqa: E731
    fit, grid = _fit_class, C_GRID
  else:
    pool = lambda f: _per_bin(np.asarray(f, np.float64))  # noqa: E731
    fit, grid = _fit_bins, POISSON_GRID if spec.primary == "poisson_d2" else ALPHA_GRID
  x_train, x_test = pool(train.features), pool(test_features)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", exceptions.ConvergenceWarning)
    scores = {}
    if val is not None:
      x_val = pool(val.features)
      scores = {float(g): float(_score(spec, fit(spec, train, x_train, x_val, g), val)) for g in grid}
    finite = {g: s for g, s in scores.items() if np.isfinite(s)}
    chosen = max(finite, key=finite.get) if finite else float(grid[len(grid) // 2])
    predictions = fit(spec, train, x_train, x_test, chosen)
  return Fitted(predictions, chosen, scores)


def fit_ts3(train_embeddings, train_labels, eval_embeddings) -> np.ndarray:
  """[n_eval, 10] float32 region probabilities (COSMOS_LABELS columns) of the eval units'
  embeddings [n_eval, E], from BWB's linear probe fit on the pretrain units' embeddings
  [n_train, E] and labels [n_train] (indices into COSMOS_LABELS)."""
  x, y, z = np.asarray(train_embeddings, np.float64), np.asarray(train_labels), np.asarray(eval_embeddings, np.float64)
  if x.ndim != 2 or z.ndim != 2 or x.shape[1] != z.shape[1]:
    raise ValueError(f"fit_ts3: embeddings must be [n, E] with one E; got train {x.shape}, eval {z.shape}")
  if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"fit_ts3: train_labels must be [{len(x)}] region indices; got {y.dtype} {y.shape}")
  if len(y) and (y.min() < 0 or y.max() >= len(tasks.COSMOS_LABELS)):
    raise ValueError(f"fit_ts3: train_labels must index COSMOS_LABELS (0-{len(tasks.COSMOS_LABELS) - 1})")
  out = np.zeros((len(z), len(tasks.COSMOS_LABELS)), np.float32)
  classes = np.unique(y)
  if len(classes) < 2:
    if len(classes) == 0:
      raise ValueError("fit_ts3: no pretrain unit to fit the probe on")
    out[:, classes[0]] = 1.0
    return out
  model = linear_model.LogisticRegression(C=1.0, max_iter=1000, solver="newton-cg", class_weight="balanced")
  model = pipeline.make_pipeline(preprocessing.StandardScaler(), model)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", exceptions.ConvergenceWarning)
    model.fit(x, y)
  out[:, model.classes_] = model.predict_proba(z)
  return out
