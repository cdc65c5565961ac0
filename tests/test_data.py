"""TFDS builder round trip and the grain pipeline."""

import numpy as np
import pytest

from data_builders import prepare
from data_builders.ibl_binned import ibl_binned
from mtm_jax.datasets import pipeline, schema, synthetic
from tests.conftest import DATASET


def test_builder_round_trip(data_dir):
  config = [c for c in ibl_binned.Builder.BUILDER_CONFIGS if c.name == DATASET.split("/")[1]][0]
  session = config.load_session()
  n_trials = session["spikes"].shape[0]
  splits = schema.split_trials(n_trials, seed=config.split_seed)
  seen = []
  for name, idx in splits.items():
    arrays = pipeline.load_split(DATASET, data_dir, name)
    np.testing.assert_array_equal(arrays["trial_index"], idx)
    np.testing.assert_array_equal(arrays["spikes"], session["spikes"][idx])
    np.testing.assert_allclose(arrays["rates"], session["rates"][idx])
    for field in schema.TRIAL_FIELDS + schema.BIN_FIELDS:
      np.testing.assert_allclose(arrays[field], session[field][idx], err_msg=field)
    seen.append(idx)
  info = pipeline.session_info(DATASET, data_dir)
  assert info.session_id == "synthetic_000"
  assert info.region_names == tuple(session["regions"])
  # 70/10/20, disjoint, covering every trial.
  all_idx = np.concatenate(seen)
  assert len(all_idx) == n_trials == len(np.unique(all_idx))
  assert [len(s) for s in seen] == [
    round(0.7 * n_trials),
    round(0.8 * n_trials) - round(0.7 * n_trials),
    n_trials - round(0.8 * n_trials),
  ]


def test_split_is_fixed_by_seed():
  a, b = schema.split_trials(100, seed=0), schema.split_trials(100, seed=0)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a["test"], schema.split_trials(100, seed=1)["test"])


def test_missing_data_set_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="python -m data_builders.build"):
    pipeline.load_split(DATASET, str(tmp_path), "train")
  # An unknown builder: one line, not TFDS's catalogue of every data set it knows.
  with pytest.raises(FileNotFoundError, match=r"'nosuch/x' not found") as error:
    pipeline.load_split("nosuch/x", str(tmp_path), "train")
  assert "\n" not in str(error.value) and len(str(error.value)) < 400, str(error.value)[:2000]


def test_unknown_dataset_in_build_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="unknown data set 'nope'"):
    prepare.build(["nope/x"], str(tmp_path))
  with pytest.raises(ValueError, match="'ibl_binned' names no config"):  # it built synthetic_000 silently
    prepare.build(["ibl_binned"], str(tmp_path))
  with pytest.raises(ValueError, match="not a known config"):
    prepare.build(["ibl_binned/synthetic_999"], str(tmp_path))


def test_validate_session_names_the_field():
  brain = synthetic.Brain()
  session = brain.simulate_session(brain.session_spec(2, max_neurons=150, max_trials=300))
  bad = dict(session, wheel_speed=session["wheel_speed"][:, :50])
  with pytest.raises(ValueError, match="'wheel_speed' must have shape"):
    schema.validate_session(bad, where="x")
  with pytest.raises(ValueError, match="missing fields \\['choice'\\]"):
    schema.validate_session({k: v for k, v in session.items() if k != "choice"}, where="x")


def test_training_batches_static_deterministic_and_resumable():
  arrays = {"spikes": np.arange(50 * 3).reshape(50, 3), "trial_index": np.arange(50)}
  ds = pipeline.training_batches(arrays, 8, seed=0)
  first = [ds[i] for i in range(20)]
  assert all(b["spikes"].shape == (8, 3) for b in first)
  again = pipeline.training_batches(arrays, 8, seed=0)
  for i in range(20):
    np.testing.assert_array_equal(first[i]["trial_index"], again[i]["trial_index"])
  other = pipeline.training_batches(arrays, 8, seed=1)
  assert not np.array_equal(first[0]["trial_index"], other[0]["trial_index"])
  # Every trial once per epoch (the first 6 batches lie inside epoch 1).
  epoch = np.concatenate([b["trial_index"] for b in first[:6]])
  assert len(np.unique(epoch)) == 48
  # Iterating from step 7 yields exactly batches 7, 8, ...
  it = pipeline.iterate_from(ds, 7)
  for i in range(7, 10):
    np.testing.assert_array_equal(next(it)["trial_index"], first[i]["trial_index"])
  with pytest.raises(ValueError, match="exceeds the 50 training trials"):
    pipeline.training_batches(arrays, 64, seed=0)
