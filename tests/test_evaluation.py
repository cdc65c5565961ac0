"""Batched evaluation gives the one-mask-at-a-time numbers."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtm_jax import masking
from mtm_jax.evaluation import activity
from mtm_jax.models import ndt1


def test_batched_equals_one_at_a_time():
  n, k = 9, 5
  model = ndt1.NDT1(n, width=32, n_layers=2, n_heads=2, mlp_width=64, rngs=nnx.Rngs(3))
  graphdef, params = nnx.split(model, nnx.Param)
  rng = np.random.default_rng(0)
  spikes = rng.poisson(1.0, (k, 100, n)).astype(np.float32)
  region_ids = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
  predictor = activity.make_predictor(graphdef)
  for task in masking.evaluation_masks(region_ids, 100):
    causal = task.prompt == "causal"
    batched = activity.predict_masks(predictor, params, spikes, task, causal=causal, max_batch=3 * k)  # 3 masks/pass
    expected = np.zeros_like(spikes)
    prompt = masking.SCHEMES.index(task.prompt)
    for m in range(task.hide_neurons.shape[0]):
      hidden = task.hide_neurons[m][None, None, :] & task.hide_bins[None, :, None]
      out = np.asarray(model(jnp.asarray(np.where(hidden, 0.0, spikes)), prompt=prompt, causal=causal))
      expected[:, :, task.score_neurons[m]] = out[:, :, task.score_neurons[m]]
    # Log-rates are O(1): the one-neuron shortcut (co-smoothing, intra-region) sums the
    # input embedding in another order, a few float32 ulps of O(1) values.
    np.testing.assert_allclose(batched, expected, rtol=1e-5, atol=5e-6, err_msg=task.name)


def test_score_task_uses_only_scored_bins_and_neurons():
  rng = np.random.default_rng(1)
  rates = rng.gamma(2.0, 0.3, (4, 100, 3))
  spikes = rng.poisson(rates).astype(float)
  task = masking.forward_prediction_masks(3, 100)
  from mtm_jax import metrics

  np.testing.assert_allclose(
    activity.score_masks(rates, spikes, task), metrics.bits_per_spike_per_neuron(rates[:, 90:], spikes[:, 90:])
  )


def test_session_means_are_over_the_sessions_that_scored_each_metric():
  from mtm_jax.evaluation import report as report_lib

  per_session = {
    "a": {"co_smoothing_bps": 0.2, "choice_accuracy": 0.75, "n_trials": 8, "skipped": {"wheel_speed_r2": "x"}},
    "b": {"co_smoothing_bps": 0.4, "n_trials": 30, "skipped": {"choice_accuracy": "y", "wheel_speed_r2": "z"}},
  }
  out = report_lib.session_means(per_session)
  assert out == {
    "co_smoothing_bps": np.mean([0.2, 0.4]),
    "choice_accuracy": 0.75,
    "skipped": {"wheel_speed_r2": "a: x; b: z"},
  }
  table = report_lib.table(
    {"mtm": out}, ("co_smoothing_bps", "choice_accuracy", "wheel_speed_r2", "whisker_motion_energy_r2")
  )
  assert table.splitlines()[2:] == [
    "| co_smoothing | 0.3000 |",
    "| choice_accuracy | 0.7500 |",
    "| wheel_speed_r2 | skipped |",
    "| whisker_motion_energy_r2 | - |",
  ]


def test_heading_names_one_session_or_the_sessions_of_a_mean():
  from mtm_jax.evaluation import report as report_lib

  one = {"session_id": "abc", "split": "test", "step": 20, "co_smoothing_bps": 0.3}
  assert report_lib.heading(one) == "session abc, test split, step 20"
  # Several sessions' results have no top-level session_id (this line raised KeyError).
  several = {"split": "val", "step": 5, "sessions": {"s1": one, "s2": one}}
  assert report_lib.heading(several) == "mean of 2 sessions (s1, s2), val split, step 5"


def test_a_scored_run_with_skipped_metrics_is_not_scored_again(tmp_path):
  import json
  from mtm_jax.evaluation import report as report_lib
  from mtm_jax.studies import runs

  results = {"step": 4, "config_hash": "h", "co_smoothing_bps": 0.2, "skipped": {"choice_accuracy": "one class"}}
  (tmp_path / "metrics.json").write_text(json.dumps(results))
  assert runs.scored(str(tmp_path), 4, ("co_smoothing_bps", "choice_accuracy"), config_hash="h") == results
  assert runs.scored(str(tmp_path), 4, ("co_smoothing_bps", "wheel_speed_r2"), config_hash="h") is None
  assert runs.scored(str(tmp_path), 6, ("co_smoothing_bps",), config_hash="h") is None
  # Scores of a checkpoint of another config (or written before scores recorded it) are stale.
  assert runs.scored(str(tmp_path), 4, ("co_smoothing_bps",), config_hash="other") is None
  # Scores of another split, or with decoding turned off (experiments.evaluate --split=val
  # or --nodecoding in a study's run folder), are not taken for the study's.
  results = {"step": 4, "config_hash": "h", "split": "val", "co_smoothing_bps": 0.2, "choice_accuracy": 0.9}
  (tmp_path / "metrics.json").write_text(json.dumps(results))
  assert runs.scored(str(tmp_path), 4, ("co_smoothing_bps", "choice_accuracy"), "val", config_hash="h") == results
  assert runs.scored(str(tmp_path), 4, ("co_smoothing_bps", "choice_accuracy"), "test", config_hash="h") is None
  results = {
    "step": 4,
    "config_hash": "h",
    "split": "test",
    "co_smoothing_bps": 0.2,
    "skipped": {"choice_accuracy": report_lib.DECODING_OFF},
  }
  (tmp_path / "metrics.json").write_text(json.dumps(results))
  assert runs.scored(str(tmp_path), 4, ("co_smoothing_bps", "choice_accuracy"), "test", config_hash="h") is None


def test_a_negative_bits_per_spike_comes_with_a_one_line_hint():
  from mtm_jax.evaluation import report as report_lib
  from mtm_jax.tasks import registry

  results = {"session_id": "s", "split": "test", "step": 2, "masking_mode": "mtm", "skipped": {}}
  good = dict(results, **{m: 0.1 for m in report_lib.METRICS})
  assert report_lib.NEGATIVE_BPS not in registry.get("ndt1").report(good)
  bad = dict(good, co_smoothing_bps=-17.0, oracle_forward_prediction_bps=-1.0)
  report = registry.get("ndt1").report(bad)
  assert report.splitlines()[-1] == report_lib.NEGATIVE_BPS
  assert (
    report_lib.NEGATIVE_BPS
    == "negative bits per spike: worse than predicting each neuron's mean rate (an undertrained model?)"
  )
  assert (
    report_lib.bps_hint({"co_smoothing_bps": 0.1, "oracle_co_smoothing_bps": -0.2}) == ""
  )  # the oracle's is not the model's
  tokens = dict(good, intra_region_bps_5ms=-0.01)
  assert registry.get("poyo_mtm").report(tokens).splitlines()[-1] == report_lib.NEGATIVE_BPS


def test_the_tables_of_every_bin_width_name_their_rows_alike():
  """Spike-token MtM's report: the 20, 10 and 5 ms tables have the same row names (the
  width is in the column names); they were co_smoothing and co_smoothing_bps_5ms."""
  from mtm_jax.evaluation import report as report_lib
  from mtm_jax.tasks import poyo_mtm

  results = {"masking_mode": "mtm", "skipped": {}}
  for suffix in ("", "_10ms", "_5ms"):
    for m in report_lib.METRICS:
      results[m + suffix], results[f"oracle_{m}{suffix}"] = 0.1, 0.5
  tables = poyo_mtm.PoyoMtMTask().report(results).split("\n\n")
  rows = [[line.split(" | ")[0].lstrip("| ") for line in t.splitlines()[2:]] for t in tables]
  assert len(rows) == 3 and rows[0] == rows[1] == rows[2]
  assert rows[0] == ["co_smoothing", "forward_prediction", "inter_region", "intra_region"]
  assert [t.splitlines()[0] for t in tables] == [f"| metric | mtm{s} | oracle |" for s in ("", "_10ms", "_5ms")]
