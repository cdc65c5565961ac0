"""Calibration statistics of a simulated session (mtm_jax.datasets.animals), as the tests and
docs/synthetic_data.md ("Many animals") report them. Host-only NumPy and scikit-learn."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold, cross_val_score

from mtm_jax import metrics
from mtm_jax.datasets import schema

FANO_WINDOWS = {"pre": (-0.1, 0.0), "post": (0.15, 0.25)}  # seconds from stimulus onset, 100 ms each


def _bins(start: float, end: float) -> slice:
  first = int(round((start + schema.T_BEFORE) / schema.BIN_SIZE))
  return slice(first, int(round((end + schema.T_BEFORE) / schema.BIN_SIZE)))


def firing_rates(session: dict) -> np.ndarray:
  """[neurons] mean firing rate in Hz over all trials and bins (from the counts)."""
  return session["spikes"].mean(axis=(0, 1)) / schema.BIN_SIZE


def fano_factor(session: dict, window: tuple[float, float], min_rate_hz: float = 1.0) -> float:
  """Median over neurons (mean rate >= min_rate_hz in the window) of the Fano factor of the
  counts in `window`, across the trials of each signed contrast (the condition), variances
  and means averaged over conditions (Churchland et al. 2010 compute it per condition)."""
  counts = session["spikes"][:, _bins(*window)].sum(axis=1).astype(np.float64)  # [K, N]
  variances, means = [], []
  for value in np.unique(session["contrast"]):
    rows = counts[session["contrast"] == value]
    if len(rows) >= 5:
      variances.append(rows.var(axis=0, ddof=1))
      means.append(rows.mean(axis=0))
  var, mean = np.mean(variances, axis=0), np.mean(means, axis=0)
  keep = mean / (window[1] - window[0]) >= min_rate_hz
  return float(np.median(var[keep] / mean[keep]))


def oracle_bps(session: dict) -> float:
  """Bits per spike of the true rates against the counts, all neurons and bins pooled
  (mtm_jax.metrics.bits_per_spike: the ceiling of co-smoothing on this session)."""
  return metrics.bits_per_spike(session["rates"], session["spikes"])


def _rate_features(session: dict) -> np.ndarray:
  """[K, 4 N] the true rates summed over four 250 ms windows from stimulus onset to 1 s."""
  rates = session["rates"]
  return np.concatenate([rates[:, _bins(0.25 * i, 0.25 * (i + 1))].sum(axis=1) for i in range(4)], axis=1)


def choice_accuracy(session: dict, folds: int = 5) -> float:
  """Cross-validated accuracy of a logistic regression of choice on the true rates."""
  x = np.sqrt(_rate_features(session))
  x = (x - x.mean(0)) / (x.std(0) + 1e-9)
  model = LogisticRegression(C=0.05, max_iter=2000)
  cv = KFold(folds, shuffle=True, random_state=0)
  return float(cross_val_score(model, x, session["choice"], cv=cv).mean())


def wheel_r2(session: dict, folds: int = 5, alpha: float = 10.0) -> float:
  """Cross-validated (folds of trials) R^2 of a ridge regression of wheel speed per bin on
  the square-root true rates of the bin and the two bins before it."""
  rates = np.sqrt(session["rates"].astype(np.float64))
  x = np.concatenate([rates[:, 2:], rates[:, 1:-1], rates[:, :-2]], axis=2)  # [K, T - 2, 3 N]
  y = session["wheel_speed"][:, 2:].astype(np.float64)
  pred = np.empty_like(y)
  for train, test in KFold(folds, shuffle=True, random_state=0).split(y):
    xt, yt = x[train].reshape(-1, x.shape[2]), y[train].reshape(-1)
    mx, my = xt.mean(0), yt.mean()
    xc = xt - mx
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(len(mx)), xc.T @ (yt - my))
    pred[test] = (x[test] - mx) @ w + my
  return float(1 - np.mean((y - pred) ** 2) / np.var(y))


def calibration(session: dict) -> dict[str, float]:
  """The statistics docs/synthetic_data.md states ranges for."""
  rates = firing_rates(session)
  return dict(
    median_rate_hz=float(np.median(rates)),
    log10_rate_sd=float(np.std(np.log10(np.maximum(rates, 1e-2)))),
    fano_pre=fano_factor(session, FANO_WINDOWS["pre"]),
    fano_post=fano_factor(session, FANO_WINDOWS["post"]),
    oracle_bps=oracle_bps(session),
    choice_accuracy=choice_accuracy(session),
    wheel_r2=wheel_r2(session),
  )
