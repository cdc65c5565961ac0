"""A small BrainWideBench submission and its ground truth, for the mtm_jax.bwb tests.

make(root) writes, under root/sub (the submission folder, label "tiny") and root/gt (the
ground truth), seeds 43-45 of: ts1-choice, ts1-stimulus_contrast, ts1-wheel_speed,
ts1-left_paw_speed (masked), ts1-licking_rate on two recordings; ts2-co_smoothing and
ts2-forecasting on two recordings; ts3-unit_cosmos. Predictions are noisy copies of the
truth, so every metric is away from its degenerate value.
"""

import os

import numpy as np

from mtm_jax.bwb import scoring, submission, tasks

LABEL = "tiny"
SEEDS = (43, 44, 45)
RECORDINGS = ("rec-a", "rec-b")
VERSION = "1.0.0"


def _window_starts(rng, n):
  """Float64 window starts as a sampler makes them: an arange over an interval, in float64."""
  return np.sort(rng.uniform(100.0, 900.0) + np.arange(n, dtype=np.float64) * 0.02 + rng.uniform(0, 1e-3))


def make(root, n_trials=24, n_windows=30):
  """Writes root/sub and root/gt (see the module docstring); returns (sub, gt) folders."""
  sub, gt = os.path.join(root, "sub"), os.path.join(root, "gt")
  truth_rng = np.random.default_rng(0)
  for recording in RECORDINGS:
    trial_id = truth_rng.permutation(200)[:n_trials].astype(np.int64)
    truth = {
      "choice": truth_rng.integers(0, 2, n_trials),
      "stimulus_contrast": truth_rng.integers(0, 4, n_trials),  # class 4 predicted, never true: counts as recall 0
      "wheel_speed": truth_rng.normal(1.0, 2.0, (n_trials, 50)),
      "left_paw_speed": truth_rng.normal(0.0, 1.0, (n_trials, 50)),
      "licking_rate": truth_rng.poisson(0.7, (n_trials, 50)).astype(np.float64),
    }
    mask = truth_rng.random((n_trials, 50)) > 0.3
    for task, values in truth.items():
      scoring.write_ground_truth_ts1(gt, task, recording, values, trial_id, mask if task == "left_paw_speed" else None)
    starts = _window_starts(truth_rng, n_windows)
    units = tasks.unit_ids(f"session-{recording}", [f"uuid-{i:03d}" for i in range(6)])
    rates = truth_rng.gamma(1.0, 0.4, (n_windows, 50, 6))
    counts = truth_rng.poisson(rates).astype(np.float64)
    counts[:, :, 5] = 0  # a silent unit: dropped by both metrics
    scoring.write_ground_truth_ts2(gt, "co_smoothing", recording, counts[:, :, :2], starts, units[:2])
    scoring.write_ground_truth_ts2(gt, "forecasting", recording, counts[:, -5:, :], starts, units)
    for seed in SEEDS:
      rng = np.random.default_rng(seed * 7 + len(recording))
      order = rng.permutation(n_trials)  # files need not follow the ground truth's order
      for task in ("choice", "stimulus_contrast"):
        dim = tasks.ts1_spec(task).dim
        logits = rng.normal(0, 1, (n_trials, dim))
        logits[np.arange(n_trials), truth[task]] += rng.uniform(-0.5, 2.0, n_trials)
        submission.write_ts1(sub, LABEL, task, recording, seed, logits[order], trial_id[order], **_meta("all_units"))
      for task in ("wheel_speed", "left_paw_speed"):
        pred = truth[task] + rng.normal(0, 1.0, (n_trials, 50))
        submission.write_ts1(sub, LABEL, task, recording, seed, pred[order], trial_id[order], **_meta("all_units"))
      lick = np.log(truth["licking_rate"] * 0.5 + 0.4 + rng.uniform(0, 0.2, (n_trials, 50)))
      submission.write_ts1(
        sub, LABEL, "licking_rate", recording, seed, lick[order], trial_id[order], **_meta("all_units")
      )
      log_rates = np.log(rates * rng.uniform(0.6, 1.4, rates.shape) + 0.02)
      worder = rng.permutation(n_windows)
      submission.write_ts2(
        sub,
        LABEL,
        "co_smoothing",
        recording,
        seed,
        log_rates[worder, :, :2],
        starts[worder],
        units[:2],
        dataset_version=VERSION,
      )
      submission.write_ts2(
        sub,
        LABEL,
        "forecasting",
        recording,
        seed,
        log_rates[worder, -5:, :],
        starts[worder],
        units,
        dataset_version=VERSION,
      )
  entity_ids = [f"session-{r}/uuid-{i:03d}" for r in RECORDINGS for i in range(15)]
  regions = truth_rng.integers(0, 8, len(entity_ids))  # two regions absent: they still count (as 0) in macro F1
  scoring.write_ground_truth_ts3(gt, entity_ids, regions)
  for seed in SEEDS:
    rng = np.random.default_rng(seed)
    proba = rng.dirichlet(np.ones(10), len(entity_ids))
    proba[np.arange(len(entity_ids)), regions] += rng.uniform(0, 0.6, len(entity_ids))
    submission.write_ts3(sub, LABEL, seed, proba, entity_ids, dataset_version=VERSION)
  return sub, gt


def _meta(unit_filtering):
  return {"unit_filtering": unit_filtering, "dataset_version": VERSION}
