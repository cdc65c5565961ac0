"""mtm_jax.bwb.predict: a trained NDT1's and spike-token MtM's predictions on BWB windows equal
the existing evaluation's (co-smoothing, forecasting, the decoders' features) when the windows
are the data set's trials; hidden spikes change nothing, visible ones do; unit embeddings are
the stitcher's or the unit table's rows."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from mtm_jax import masking
from mtm_jax.bwb import predict
from mtm_jax.configs import ndt1 as ndt1_config, poyo as poyo_config, poyo_mtm as poyo_mtm_config
from mtm_jax.datasets import pipeline
from mtm_jax.datasets.events import session as session_lib, trials as trials_lib
from mtm_jax.evaluation import activity, ndt1 as ndt1_eval, poyo_mtm as poyo_mtm_eval
from mtm_jax.parallel import mesh as mesh_lib
from mtm_jax.tasks import base, registry
from mtm_jax.training import trainer
from tests.conftest import DATASET

LOG_BIN = np.log(0.02)


def spikes_of_counts(counts: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(times [S] float64, units [S]) with counts[k, t, n] spikes of unit n at the centre of bin t of trial k."""
  k, t, n = np.nonzero(counts)
  reps = counts[k, t, n]
  times = np.repeat(starts[k] + (t + 0.5) * 0.02, reps)
  units = np.repeat(n, reps)
  order = np.argsort(times, kind="stable")
  return times[order], units[order].astype(np.int32)


def add_spike(times, units, t, unit):
  """The spikes with one more of `unit` at time t (sorted)."""
  i = np.searchsorted(times, t)
  return np.insert(times, i, t), np.insert(units, i, unit).astype(np.int32)


# ---------------------------------------------------------------------------------- NDT1


@pytest.fixture(scope="module")
def ndt1(data_dir, tmp_path_factory):
  """(a tiny NDT1 trained 2 steps with MtM masking, its test trials' counts [K, 50, N] (their
  first second), the trials' spike times and units, the trials' starts)."""
  workdir = str(tmp_path_factory.mktemp("bwb_ndt1"))
  c = ndt1_config.get_config("tiny")
  c.data.datasets, c.data.data_dir = DATASET, data_dir
  c.train.update(steps=2, checkpoint_every=2, eval_every=2)
  trainer.train(registry.get("ndt1"), c, workdir)
  counts = pipeline.load_split(DATASET, data_dir, "test", ("spikes", "trial_index"))["spikes"][:12, :50]
  starts = 10.0 + 3.0 * np.arange(len(counts))
  return registry.load_trained(workdir), counts, *spikes_of_counts(counts, starts), starts


def existing(trained, counts, task, causal):
  return activity.predict_masks(
    activity.make_predictor(trained.graphdef),
    trained.params,
    counts,
    task,
    causal=causal,
    max_batch=trained.config.eval.max_batch,
    mesh=trained.mesh,
    n_neurons=trained.n_neurons,
  )


def test_ndt1_co_smoothing_and_forecasting_equal_the_existing_evaluation(ndt1):
  trained, counts, times, units, starts = ndt1
  n = counts.shape[-1]
  co = existing(trained, counts, masking.co_smoothing_masks(n, 50), causal=False)
  for i in (0, 57):
    hide = np.arange(n) == i
    got = predict.window_log_rates(trained, DATASET, times, units, starts, hide_units=hide, units=np.array([i, 3]))
    assert got.shape == (len(starts), 50, 2) and got.dtype == np.float32
    np.testing.assert_allclose(got[..., 0], co[..., i], rtol=1e-4, atol=1e-4)
  forward = existing(trained, counts, masking.forward_prediction_masks(n, 50, range(45, 50)), causal=True)
  got = predict.window_log_rates(trained, DATASET, times, units, starts, forecast_bins=5)
  assert got.shape == (len(starts), 50, n)
  np.testing.assert_allclose(got[:, 45:], forward[:, 45:], rtol=1e-4, atol=1e-4)
  features = ndt1_eval.unmasked_log_rates(trained, counts, prompt=trained.config.eval.decoding_prompt, session=0)
  got = predict.window_features(trained, DATASET, times, units, starts)
  np.testing.assert_allclose(got, features, rtol=1e-4, atol=1e-4)


def check_corruption(trained, name, times, units, starts, n_units):
  """Hidden units' spikes and spikes in the forecast bins change nothing; others do."""
  hide = np.zeros(n_units, bool)
  hide[[1, 4]] = True
  visible = 2
  late, early = starts[3] + 0.97, starts[3] + 0.31  # bin 48, bin 15 of window 3
  co = lambda t, u: predict.window_log_rates(trained, name, t, u, starts, hide_units=hide)  # noqa: E731
  base = co(times, units)
  np.testing.assert_array_equal(co(*add_spike(times, units, early, 4)), base)
  assert np.abs(co(*add_spike(times, units, early, visible)) - base).max() > 1e-6
  fc = lambda t, u: predict.window_log_rates(trained, name, t, u, starts, forecast_bins=5)  # noqa: E731
  base = fc(times, units)
  np.testing.assert_array_equal(fc(*add_spike(times, units, late, visible)), base)
  changed = np.abs(fc(*add_spike(times, units, early, visible)) - base)
  assert changed[3, 45:].max() > 1e-6  # earlier spikes inform the forecast
  assert changed[np.arange(len(starts)) != 3].max() == 0  # other windows do not hold the spike


def test_ndt1_hidden_spikes_change_nothing_visible_ones_do(ndt1):
  trained, counts, times, units, starts = ndt1
  check_corruption(trained, DATASET, times, units, starts, counts.shape[-1])


def test_ndt1_forecasting_attends_causally_when_trained_with_causal_masking(ndt1):
  """An MtM-masked NDT1 forecasts with causal attention: a spike in bin 30 leaves bins before it
  unchanged; the same model taken as temporally masked does not attend causally."""
  trained, counts, times, units, starts = ndt1
  moved = add_spike(times, units, starts[0] + 0.61, 2)
  a = predict.window_log_rates(trained, DATASET, times, units, starts[:1], forecast_bins=5)
  b = predict.window_log_rates(trained, DATASET, *moved, starts[:1], forecast_bins=5)
  np.testing.assert_allclose(a[:, :30], b[:, :30], rtol=1e-5, atol=1e-5)
  config = trained.config.copy_and_resolve_references()
  config.masking.mode = "temporal"
  temporal = dataclasses.replace(trained, config=config)
  a = predict.window_log_rates(temporal, DATASET, times, units, starts[:1], forecast_bins=5)
  b = predict.window_log_rates(temporal, DATASET, *moved, starts[:1], forecast_bins=5)
  assert np.abs(a[:, :30] - b[:, :30]).max() > 1e-6


def test_ndt1_unit_embeddings_are_the_input_map_rows(ndt1):
  trained, counts, *_ = ndt1
  got = predict.unit_embeddings(trained, DATASET)
  kernel = np.asarray(jax.device_get(nnx.merge(trained.graphdef, trained.params).embed_spikes.kernel[...]))
  assert got.shape == (counts.shape[-1], kernel.shape[1]) and got.dtype == np.float32
  np.testing.assert_array_equal(got, kernel)
  params = jax.tree.map(lambda x: x, trained.params)
  params["embed_spikes"]["kernel"].value = params["embed_spikes"]["kernel"].value + 1.0
  np.testing.assert_allclose(predict.unit_embeddings(dataclasses.replace(trained, params=params), DATASET), got + 1.0)


def test_stitched_ndt1_unit_embeddings_are_the_sessions_stitcher_rows():
  config = ndt1_config.get_config("tiny,stitch")
  records = [dict(name=f"s{i}", session_id=f"id{i}", region_names=["CA1"] * n) for i, n in enumerate((5, 9))]
  mesh = mesh_lib.from_config(config, fit=True)
  graphdef, _, state = registry.get("ndt1").create(config, records, mesh)
  trained = base.Trained(config, records, graphdef, state.params, 0, mesh)
  kernel = np.asarray(jax.device_get(state.params["stitch_in"]["kernel"].value))  # [S, max N, stitch_dim]
  for row, name in enumerate(("s0", "s1")):
    got = predict.unit_embeddings(trained, name)
    assert got.shape == (len(records[row]["region_names"]), config.model.stitch_dim)
    np.testing.assert_array_equal(got, kernel[row, : got.shape[0]])


# ----------------------------------------------------------------------- spike-token MtM


def one_second_trials(n_units: int = 7, n_trials: int = 24) -> session_lib.EventSession:
  """Trials of 1 s, 0.5 s apart; unit u fires at 5-25 Hz, more in the second half for even units."""
  rng = np.random.default_rng(3)
  starts = 1.0 + 1.5 * np.arange(n_trials)
  times, units = [], []
  for s in starts:
    for u in range(n_units):
      for half in (0, 1):
        k = rng.poisson((5 + 4 * u) * (2 if half and u % 2 == 0 else 1) * 0.5)
        times.append(s + 0.5 * half + rng.uniform(0, 0.5, k)), units.append(np.full(k, u))
  times, units = np.concatenate(times), np.concatenate(units)
  order = np.argsort(times, kind="stable")
  sid = "bwb_spike"
  return session_lib.EventSession.from_dict(
    dict(
      session_id=sid,
      spike_times=times[order],
      spike_units=units[order].astype(np.int32),
      unit_ids=np.array([f"{sid}/u{u}" for u in range(n_units)]),
      unit_regions=np.array(["CA1", "LP"] * n_units)[:n_units],
      behaviour_name="speed",
      behaviour_timestamps=np.array([0.5]),
      behaviour_values=np.zeros((1, 1), np.float32),
      behaviour_weights=np.ones(1, np.float32),
      trial_starts=starts,
      trial_ends=starts + 1.0,
      splits=session_lib.split_intervals(starts, starts + 1.0, seed=0),
    ),
    where=sid,
  )


@pytest.fixture(scope="module")
def spike(tmp_path_factory):
  """(a tiny spike-token MtM of 1 s trials trained 2 steps, its session, the test trials' data)."""
  session = one_second_trials()
  c = poyo_mtm_config.get_config("tiny")
  c.data.context = 1.0
  c.mesh.data = 2
  c.train.update(steps=2, checkpoint_every=2, eval_every=2)
  workdir = str(tmp_path_factory.mktemp("bwb_spike"))
  trainer.train(registry.get("poyo_mtm"), c, workdir, [session])
  trained = registry.load_trained(workdir)
  assert trained.config.model.context == 1.0
  data = trials_lib.prepare([session], "test", trials_lib.TrialConfig(context=1.0), vocab=trained.vocab)
  return trained, session, data


def spike_existing(trained, data, task):
  predictor = poyo_mtm_eval.make_predictor(trained.graphdef, 0.02)
  e = trained.config.eval
  (out,) = poyo_mtm_eval.predict_masks(
    predictor, trained.params, data, 0, task, [1], batch_size=e.batch_size, max_rows=e.max_rows
  )
  return out + LOG_BIN


def test_spike_token_co_smoothing_and_forecasting_equal_the_existing_evaluation(spike):
  trained, session, data = spike
  name, n = trained.names[0], len(session.unit_ids)
  starts = data.trials[:, 1]
  args = (trained, name, session.spike_times, session.spike_units, starts)
  co = spike_existing(trained, data, masking.co_smoothing_masks(n, 50))
  for i in (0, 5):
    got = predict.window_log_rates(*args, hide_units=np.arange(n) == i)
    assert got.shape == (len(starts), 50, n) and got.dtype == np.float32
    np.testing.assert_allclose(got[..., i], co[..., i], rtol=1e-4, atol=1e-4)
  forward = spike_existing(trained, data, masking.forward_prediction_masks(n, 50, range(45, 50)))
  got = predict.window_log_rates(*args, forecast_bins=5, units=np.array([6, 0]))
  np.testing.assert_allclose(got[:, 45:], forward[:, 45:][..., [6, 0]], rtol=1e-4, atol=1e-4)
  features = spike_existing(trained, data, poyo_mtm_eval.unmasked_masks(n, 50, "neuron"))
  np.testing.assert_allclose(predict.window_features(*args), features, rtol=1e-4, atol=1e-4)


def test_spike_token_hidden_spikes_change_nothing_visible_ones_do(spike):
  trained, session, data = spike
  starts = data.trials[:, 1] + 0.02 * np.arange(len(data.trials))  # windows need not be trials
  check_corruption(trained, trained.names[0], session.spike_times, session.spike_units, starts, 7)


def test_spike_token_unit_embeddings_are_the_unit_table_rows(spike):
  trained, session, _ = spike
  got = predict.unit_embeddings(trained, trained.names[0])
  table = np.asarray(jax.device_get(trained.params["unit_emb"]["embedding"].value))
  assert got.shape == (len(session.unit_ids), table.shape[1])
  np.testing.assert_array_equal(got, table[trained.vocab.unit_rows(session.session_id)])
  params = jax.tree.map(lambda x: x, trained.params)
  params["unit_emb"]["embedding"].value = params["unit_emb"]["embedding"].value * 2.0
  np.testing.assert_allclose(
    predict.unit_embeddings(dataclasses.replace(trained, params=params), trained.names[0]), got * 2
  )


def test_poyo_has_unit_embeddings_and_no_log_rates(spike):
  _, session, _ = spike
  config = poyo_config.get_config("tiny")
  records = [dict(name="s", session_id=session.session_id, unit_ids=list(session.unit_ids))]
  mesh = mesh_lib.from_config(config, fit=True)
  graphdef, _, state = registry.get("poyo").create(config, records, mesh)
  trained = base.Trained(config, records, graphdef, state.params, 0, mesh)
  table = np.asarray(jax.device_get(state.params["unit_emb"]["embedding"].value))
  np.testing.assert_array_equal(predict.unit_embeddings(trained, "s"), table[1:8])  # row 0: padding
  with pytest.raises(ValueError, match="POYO model decodes behaviour"):
    predict.window_log_rates(trained, "s", np.zeros(0), np.zeros(0, int), np.zeros(1))


def test_bad_inputs_name_the_field(spike):
  trained, session, _ = spike
  name, times, units = trained.names[0], session.spike_times, session.spike_units
  starts = np.array([2.0])
  cases = [
    (dict(spike_times=times.astype(np.float32)), "spike_times: expected float64"),
    (dict(spike_units=units + 7), r"spike_units: expected integer units in \[0, 7\)"),
    (dict(hide_units=np.ones(6, bool)), r"hide_units: expected \[7\] bool"),
    (dict(forecast_bins=51), "forecast_bins: expected 0 to 50"),
    (dict(units=np.array([7])), r"units: expected indices in \[0, 7\)"),
    (dict(name="other"), "not one of the model's sessions"),
  ]
  for change, message in cases:
    kwargs = dict(name=name, spike_times=times, spike_units=units, starts=starts) | change
    with pytest.raises(ValueError, match=message):
      predict.window_log_rates(trained, **kwargs)
  assert predict.window_log_rates(trained, name, times, units, np.zeros(0)).shape == (0, 50, 7)
