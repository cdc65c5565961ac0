"""mtm_jax.bwb.predict on a NEDS: its predictions on BWB windows equal the NEDS evaluation's
encoder on the windows' counts (behaviour masked; equal to the evaluation itself on a session
without behaviour); hidden spikes change nothing, visible ones do; behaviour values are never
read; the TS1 features are the hidden states the decoding pass reads its spikes from; unit
embeddings are the spike tokeniser's input rows taken into the shared width."""

import jax
import numpy as np
import pytest
from flax import nnx

from mtm_jax import masking, modalities
from mtm_jax.bwb import predict
from mtm_jax.configs import neds as neds_config
from mtm_jax.datasets import behaviour_tokens as tokens
from mtm_jax.evaluation import neds as neds_eval
from mtm_jax.models import neds
from mtm_jax.parallel import mesh as mesh_lib
from mtm_jax.tasks import base, registry
from tests.test_bwb_predict import check_corruption, spikes_of_counts

MODS = ("spike", "wheel", "whisker")
SIZES = {"with_behaviour": 9, "spikes_only": 6}


@pytest.fixture(scope="module")
def tiny_neds():
  """(an untrained tiny NEDS of 50 bins with sessions with_behaviour (wheel, whisker) and
  spikes_only, {name: (counts [12, 50, N], spike times, units)}, window starts)."""
  config = neds_config.get_config("tiny")
  config.model.max_bins, config.model.modalities = 50, MODS
  present = {"with_behaviour": list(MODS), "spikes_only": ["spike"]}
  records = [
    dict(name=name, session_id=name, region_names=["CA1", "LP"] * (n // 2) + ["CA1"] * (n % 2), present=present[name])
    for name, n in SIZES.items()
  ]
  mesh = mesh_lib.from_config(config, fit=True)
  graphdef, _, state = registry.get("neds").create(config, records, mesh)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda p: p + 0.05 * rng.standard_normal(p.shape).astype(p.dtype), state.params)  # biases too
  trained = base.Trained(config, records, graphdef, params, 0, mesh)
  starts = 10.0 + 3.0 * np.arange(12)
  data = {}
  for name, n in SIZES.items():
    counts = rng.poisson(0.4, (len(starts), 50, n)).astype(np.int32)
    data[name] = (counts, *spikes_of_counts(counts, starts))
  return trained, data, starts


def encoder_rates(trained, row, counts, task, behaviour_masked, behaviour=None):
  """The NEDS evaluation's encoder on counts [K, 50, N] (behaviour: {modality: [K, 50]} given)."""
  present = trained.records[row]["present"]
  behaviour = behaviour or {m: np.zeros(counts.shape[:2], np.float32) for m in present if m != "spike"}
  data = neds_eval.SessionData(counts, behaviour, np.zeros(counts.shape[-1], np.int64))
  inputs, present = neds_eval.model_inputs(data, MODS, trained.n_neurons)
  encode = neds_eval.make_encoder(neds_eval.make_predictor(trained.graphdef), behaviour_masked=behaviour_masked)
  out = neds_eval.encode_masks(encode, trained.params, inputs, present, task, session=row, max_batch=256)
  return out[..., : counts.shape[-1]]


@pytest.mark.parametrize("name", list(SIZES))
def test_neds_co_smoothing_and_forecasting_equal_the_evaluations_encoder(tiny_neds, name):
  trained, data, starts = tiny_neds
  counts, times, units = data[name]
  row, n = trained.row(name), counts.shape[-1]
  hide = np.arange(n) % 3 == 1
  task = masking.EvalMasks(
    "co_smoothing", "neuron", hide[None], np.ones((1, n), bool), np.ones(50, bool), np.ones(50, bool)
  )
  want = encoder_rates(trained, row, counts, task, behaviour_masked=True)
  got = predict.window_log_rates(trained, name, times, units, starts, hide_units=hide, units=np.flatnonzero(hide))
  assert got.shape == (len(starts), 50, hide.sum()) and got.dtype == np.float32
  np.testing.assert_allclose(got, want[..., hide], rtol=1e-5, atol=1e-5)
  task = masking.forward_prediction_masks(n, 50, range(45, 50))
  want = encoder_rates(trained, row, counts, task, behaviour_masked=True)
  got = predict.window_log_rates(trained, name, times, units, starts, forecast_bins=5)
  np.testing.assert_allclose(got[:, 45:], want[:, 45:], rtol=1e-5, atol=1e-5)
  if name == "spikes_only":  # no behaviour token: the evaluation's own encoding pass, unchanged
    np.testing.assert_allclose(got, encoder_rates(trained, row, counts, task, False), rtol=1e-5, atol=1e-5)


def test_neds_behaviour_is_masked_not_given(tiny_neds):
  """Behaviour tokens are mask tokens: the evaluation's encoding with any behaviour given
  differs from the BWB predictions, which equal the encoder with behaviour masked whatever
  its values."""
  trained, data, starts = tiny_neds
  counts, times, units = data["with_behaviour"]
  n = counts.shape[-1]
  task = masking.forward_prediction_masks(n, 50, range(45, 50))
  got = predict.window_log_rates(trained, "with_behaviour", times, units, starts, forecast_bins=5)
  rng = np.random.default_rng(1)
  behaviour = {m: rng.standard_normal(counts.shape[:2]).astype(np.float32) for m in ("wheel", "whisker")}
  masked = encoder_rates(trained, 0, counts, task, True, behaviour)
  np.testing.assert_allclose(got, masked, rtol=1e-5, atol=1e-5)
  assert np.abs(encoder_rates(trained, 0, counts, task, False, behaviour) - got).max() > 1e-4


@pytest.mark.parametrize("name", list(SIZES))
def test_neds_hidden_spikes_change_nothing_visible_ones_do(tiny_neds, name):
  trained, data, starts = tiny_neds
  _, times, units = data[name]
  check_corruption(trained, name, times, units, starts, SIZES[name])


@pytest.mark.parametrize("name", list(SIZES))
def test_neds_features_are_the_decoding_pass_hidden_states(tiny_neds, name):
  """[W, 50, K D]: each bin's present tokens' final states; the spike part read out is the
  decoding pass's spike log-rates (behaviour masked, spikes given)."""
  trained, data, starts = tiny_neds
  counts, times, units = data[name]
  row, width = trained.row(name), neds.Hparams.from_config(trained.config.model).width
  got = predict.window_features(trained, name, times, units, starts)
  k = len(trained.records[row]["present"])
  assert got.shape == (len(starts), 50, k * width) and got.dtype == np.float32
  model = nnx.merge(trained.graphdef, trained.params)
  spike_states = got.reshape(len(starts), 50, k, width)[:, :, 0]
  read = np.asarray(model.io["spike"].read_out(spike_states, row))[..., : counts.shape[-1]]
  behaviour = {m: np.zeros(counts.shape[:2], np.float32) for m in trained.records[row]["present"] if m != "spike"}
  inputs, present = neds_eval.model_inputs(
    neds_eval.SessionData(counts, behaviour, np.zeros(counts.shape[-1], np.int64)), MODS, trained.n_neurons
  )
  masks = {m: np.full(counts.shape[:2], m != modalities.SPIKE) for m in MODS}
  session = np.full(len(starts), row, np.int32)
  spikes = neds_eval.make_predictor(trained.graphdef)(trained.params, inputs, masks, session, present)["spike"]
  np.testing.assert_allclose(read, np.asarray(spikes)[..., : counts.shape[-1]], rtol=1e-4, atol=1e-4)


def test_neds_unit_embeddings_are_the_tokeniser_rows_in_the_shared_width(tiny_neds):
  """At zero input biases, the Jacobian is the input row times the projection (softsign'(0) = 1)."""
  trained, _, _ = tiny_neds
  params = jax.tree.map(lambda x: x, trained.params)
  params["io"]["spike"]["stitch_in"]["bias"].value = 0.0 * params["io"]["spike"]["stitch_in"]["bias"].value
  zeroed = base.Trained(trained.config, trained.records, trained.graphdef, params, 0, trained.mesh)
  spike = params["io"]["spike"]
  for row, (name, n) in enumerate(SIZES.items()):
    got = predict.unit_embeddings(zeroed, name)
    want = np.asarray(spike["stitch_in"]["kernel"].value[row, :n] @ spike["stitch_project"]["kernel"].value[row])
    assert got.shape == (n, want.shape[1]) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  other = predict.unit_embeddings(trained, "with_behaviour")  # the biases' softsign slope scales each hidden unit
  assert np.abs(other - predict.unit_embeddings(zeroed, "with_behaviour")).max() > 1e-6


def test_named_traces_take_bwb_binned_behaviour_columns():
  """bwb_binned's `behaviour` columns named wheel_speed and whisker_motion_energy become NEDS's
  traces; other columns and a split's own fields stay as they are; unnamed columns give nothing."""
  behaviour = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
  split = dict(spikes=np.zeros((2, 3, 5)), behaviour=behaviour)
  columns = ["wheel_speed", "whisker_motion_energy", "left_paw_speed", "licking_rate"]
  got = tokens.named_traces(split, columns)
  np.testing.assert_array_equal(got["wheel_speed"], behaviour[..., 0])
  np.testing.assert_array_equal(got["whisker_motion_energy"], behaviour[..., 1])
  assert "choice" not in got and "block" not in got and "wheel_speed" not in split
  assert tokens.present_modalities(got, ("spike", "choice", "wheel", "whisker")) == ["spike", "wheel", "whisker"]
  assert tokens.named_traces(split, ["none"]) is split  # one name, four columns: not named
  own = dict(split, wheel_speed=np.ones((2, 3)))
  np.testing.assert_array_equal(tokens.named_traces(own, columns)["wheel_speed"], 1.0)
