"""mtm_jax.bwb.submission, validation and scoring: files as BWB's writer and upload check read
them, the upload check's codes, and local scoring that reports what the scorer would skip."""

import os
import zipfile

import bwb_fixtures
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from mtm_jax import files
from mtm_jax.bwb import metrics, scoring, submission, tasks


@pytest.fixture()
def tiny(tmp_path):
  sub, gt = bwb_fixtures.make(str(tmp_path))
  return sub, gt


def _codes(findings):
  return sorted({f.code for f in findings})


def test_ids_round_trip_nul_padded():
  ids = tasks.unit_ids("eid-1", ["u1", "uuid-22"])
  assert ids == ["eid-1/u1", "eid-1/uuid-22"]
  matrix = tasks.encode_ids(ids)
  assert matrix.dtype == np.uint8 and matrix.shape == (2, len("eid-1/uuid-22"))
  assert matrix[0, len("eid-1/u1") :].tolist() == [0] * 5
  assert tasks.decode_ids(matrix) == ids
  for bad in ([], [""], ["é"]):
    with pytest.raises(ValueError, match="encode_ids"):
      tasks.encode_ids(bad)


def test_files_have_bwbs_tensors_dtypes_shapes_and_metadata(tiny):
  sub, _ = tiny
  path = os.path.join(sub, "tiny", "ts1-choice", "rec-a", "seed_43.safetensors")
  with safe_open(path, framework="np") as f:
    meta = f.metadata()
    tensors = {k: f.get_tensor(k) for k in f.keys()}
  assert meta == {
    "label": "tiny",
    "task": "ts1-choice",
    "seed": "43",
    "ibl_bwb_eval_version": "0.1.0",
    "unit_filtering": "all_units",
    "dataset_version": "1.0.0",
    "recording_id": "rec-a",
  }
  assert tensors["predictions"].dtype == np.float32 and tensors["predictions"].shape == (24, 1, 2)
  assert tensors["trial_id"].dtype == np.int64 and tensors["trial_id"].shape == (24,)
  wheel = load_file(os.path.join(sub, "tiny", "ts1-wheel_speed", "rec-a", "seed_43.safetensors"))
  assert wheel["predictions"].shape == (24, 50, 1)
  path = os.path.join(sub, "tiny", "ts2-forecasting", "rec-b", "seed_45.safetensors")
  with safe_open(path, framework="np") as f:
    meta = f.metadata()
    tensors = {k: f.get_tensor(k) for k in f.keys()}
  assert meta["context_window"] == "1.0" and meta["bin_size"] == "0.02" and meta["unit_filtering"] == "selected_units"
  assert tensors["predictions"].dtype == np.float16 and tensors["predictions"].shape == (30, 5, 6)
  assert tensors["window_timestamps"].dtype == np.float64
  assert tasks.decode_ids(tensors["unit_ids"])[0] == "session-rec-b/uuid-000"
  ts3 = os.path.join(sub, "tiny", "ts3-unit_cosmos", "seed_44.safetensors")
  with safe_open(ts3, framework="np") as f:
    assert f.metadata()["label_names"] == "CB,CNU,CTXsp,HB,HPF,HY,Isocortex,MB,OLF,TH"
    assert "recording_id" not in f.metadata()
    assert f.get_tensor("pred_proba").shape == (30, 10)


def test_writers_refuse_what_the_upload_check_refuses(tmp_path):
  meta = {"unit_filtering": "all_units", "dataset_version": "1.0.0"}
  with pytest.raises(ValueError, match=r"expected \(N, 1, 5\)"):
    submission.write_ts1(str(tmp_path), "m", "stimulus_contrast", "r", 43, np.zeros((3, 2)), np.arange(3), **meta)
  with pytest.raises(ValueError, match="duplicate trial ids"):
    submission.write_ts1(str(tmp_path), "m", "choice", "r", 43, np.zeros((3, 2)), np.zeros(3, int), **meta)
  with pytest.raises(ValueError, match="NaN"):
    submission.write_ts1(str(tmp_path), "m", "choice", "r", 43, np.full((3, 2), np.nan), np.arange(3), **meta)
  with pytest.raises(ValueError, match="selected_units"):
    submission.write_ts2(
      str(tmp_path),
      "m",
      "forecasting",
      "r",
      43,
      np.zeros((2, 5, 1)),
      np.zeros(2),
      ["a/b"],
      dataset_version="1.0.0",
      unit_filtering="all_units",
    )
  with pytest.raises(ValueError, match="float64"):
    submission.write_ts2(
      str(tmp_path),
      "m",
      "forecasting",
      "r",
      43,
      np.zeros((2, 5, 1)),
      np.zeros(2, np.float32),
      ["a/b"],
      dataset_version="1.0.0",
    )
  with pytest.raises(ValueError, match="x.y.z"):
    submission.write_ts3(str(tmp_path), "m", 43, np.zeros((1, 10)), ["a"], dataset_version="1.0")
  assert not os.listdir(tmp_path)


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
  def fail(fd):
    raise OSError("disk full")

  monkeypatch.setattr(files.os, "fsync", fail)
  with pytest.raises(OSError, match="disk full"):
    submission.write_ts3(str(tmp_path), "m", 43, np.zeros((1, 10)), ["a"], dataset_version="1.0.0")
  folder = tmp_path / "m" / "ts3-unit_cosmos"
  assert folder.is_dir() and not os.listdir(folder)


def test_valid_submission_passes_and_zips_with_label_at_root(tiny, tmp_path):
  sub, gt = tiny
  assert submission.validate(sub, gt) == []
  zip_path = submission.zip_submission(sub, "tiny", str(tmp_path / "tiny.zip"))
  with zipfile.ZipFile(zip_path) as archive:
    names = archive.namelist()
  assert len(names) == 3 * (5 * 2 + 2 * 2 + 1) and all(n.startswith("tiny/") for n in names)
  assert "tiny/ts3-unit_cosmos/seed_43.safetensors" in names


def _rewrite(path, **changes):
  """Rewrites a submission file with tensors or metadata changed (metadata keys prefixed meta_)."""
  with safe_open(path, framework="np") as f:
    meta = f.metadata()
    tensors = {k: f.get_tensor(k) for k in f.keys()}
  for key, value in changes.items():
    if key.startswith("meta_"):
      meta[key[5:]] = value
    else:
      tensors[key] = value
  submission.write_file(path, tensors, meta)


@pytest.mark.parametrize(
  "change, code",
  [
    (lambda p: _rewrite(p, meta_label="other"), "E013"),
    (lambda p: _rewrite(p, meta_unit_filtering="everything"), "E002"),
    (lambda p: _rewrite(p, meta_dataset_version="1.0"), "E003"),
    (lambda p: _rewrite(p, trial_id=load_file(p)["trial_id"] + 1), "E012"),  # off by one: the scorer scores it
    (lambda p: _rewrite(p, predictions=np.full((24, 1, 2), np.nan, np.float32)), "E107"),
    (lambda p: _rewrite(p, predictions=np.zeros((24, 1, 3), np.float32)), "E006"),
    (lambda p: os.rename(p, p.replace("seed_43", "seed_43x")), "E004"),
    (lambda p: [os.rename(q, q.replace("seed_43", "seed_48")) for q in (p, p.replace("rec-a", "rec-b"))], "E102"),
    (lambda p: os.remove(p), "E103"),
    (lambda p: open(os.path.join(os.path.dirname(p), "notes.txt"), "w").close(), "E014"),
  ],
)
def test_upload_check_codes_ts1(tiny, change, code):
  sub, gt = tiny
  change(os.path.join(sub, "tiny", "ts1-choice", "rec-a", "seed_43.safetensors"))
  assert code in _codes(submission.validate(sub, gt))


def test_upload_check_codes_ts2_ts3_and_submission(tiny):
  sub, gt = tiny
  co = os.path.join(sub, "tiny", "ts2-co_smoothing", "rec-a", "seed_43.safetensors")
  starts = load_file(co)["window_timestamps"]
  _rewrite(co, window_timestamps=np.round(starts, 2))  # recomputed starts: the scorer scores a subset
  fc = os.path.join(sub, "tiny", "ts2-forecasting", "rec-a", "seed_43.safetensors")
  _rewrite(fc, meta_unit_filtering="all_units")
  fc44 = fc.replace("seed_43", "seed_44")
  ids = tasks.decode_ids(load_file(fc44)["unit_ids"])
  _rewrite(fc44, unit_ids=tasks.encode_ids([u.split("/")[1] for u in ids]))  # uuids without the session
  ts3 = os.path.join(sub, "tiny", "ts3-unit_cosmos", "seed_43.safetensors")
  _rewrite(ts3, meta_label_names="CNU,CB,CTXsp,HB,HPF,HY,Isocortex,MB,OLF,TH")
  os.makedirs(os.path.join(sub, "other", "ts3-unit_cosmos"))
  os.link(ts3.replace("seed_43", "seed_44"), os.path.join(sub, "other", "ts3-unit_cosmos", "seed_044.safetensors"))
  found = {(f.path, f.code) for f in submission.validate(sub, gt)}
  rel = lambda p: os.path.relpath(p, sub)  # noqa: E731
  assert (rel(co), "E012") in found
  assert (rel(fc), "E109") in found
  assert (rel(fc44), "E012") in found
  assert (rel(ts3), "E010") in found
  assert (".", "E106") in found
  assert ("other/ts3-unit_cosmos/seed_044.safetensors", "E013") in found  # metadata names label "tiny"


def test_upload_check_session_coverage_and_ground_truth(tiny):
  sub, gt = tiny
  folder = os.path.join(sub, "tiny", "ts1-reward")
  for seed in bwb_fixtures.SEEDS:
    submission.write_ts1(
      sub, "tiny", "reward", "rec-a", seed, np.zeros((2, 2)), np.arange(2), **bwb_fixtures._meta("all_units")
    )
  assert os.path.isdir(folder)
  assert "E011" in _codes(submission.validate(sub, gt))  # no ground truth for ts1-reward
  assert "E011" not in _codes(submission.validate(sub))  # without gt_dir: not checked
  for seed in bwb_fixtures.SEEDS:
    os.remove(os.path.join(sub, "tiny", "ts1-wheel_speed", "rec-b", f"seed_{seed}.safetensors"))
  assert "E104" in _codes(submission.validate(sub, gt))


def test_scoring_matches_metrics_computed_directly(tiny):
  sub, gt = tiny
  scores = scoring.score_folder(sub, gt)
  assert scores.warnings == []
  assert len(scores.raw) == 3 * (5 * 2 + 2 * 2 + 1)
  pred = load_file(os.path.join(sub, "tiny", "ts2-forecasting", "rec-a", "seed_44.safetensors"))
  truth = load_file(os.path.join(gt, "ts2-forecasting", "rec-a", "ground_truth.safetensors"))
  order = np.argsort(pred["window_timestamps"])
  log_rates = pred["predictions"][order].reshape(-1, 6)
  counts = truth["targets"][np.argsort(truth["window_timestamps"])].reshape(-1, 6)
  got = scores.raw[("tiny", "ts2-forecasting", "rec-a", 44)]
  assert got["bps"] == pytest.approx(metrics.bits_per_spike(log_rates, counts))
  assert got["poisson_d2"] == pytest.approx(metrics.poisson_d2(log_rates, counts))
  assert 0 < got["bps"] and 0 < got["poisson_d2"] < 1
  paw = scores.raw[("tiny", "ts1-left_paw_speed", "rec-b", 43)]
  assert 0 < paw["r2"] < 1
  summary = scores.aggregate()
  assert summary[("tiny", "ts3-unit_cosmos")]["macro/f1-score"][2] == 3
  assert summary[("tiny", "ts1-choice")]["bacc"][2] == 3


def test_scoring_reports_the_subsets_the_scorer_scores_silently(tiny):
  sub, gt = tiny
  path = os.path.join(sub, "tiny", "ts1-choice", "rec-a", "seed_43.safetensors")
  _rewrite(path, trial_id=load_file(path)["trial_id"] + 1)
  co = os.path.join(sub, "tiny", "ts2-co_smoothing", "rec-b", "seed_44.safetensors")
  _rewrite(co, window_timestamps=np.round(load_file(co)["window_timestamps"], 2))
  os.remove(os.path.join(gt, "ts1-licking_rate", "rec-b", "ground_truth.safetensors"))
  with pytest.raises(scoring.ScoreMismatch) as error:
    scoring.score_folder(sub, gt)
  text = str(error.value)
  assert "ts1-choice/rec-a/seed_43.safetensors" in text and "trial ids are not in the ground truth" in text
  assert "ts2-co_smoothing/rec-b/seed_44.safetensors" in text
  assert "ts1-licking_rate/rec-b" in text and "no ground truth" in text
  scores = scoring.score_folder(sub, gt, strict=False)  # as the scorer: the matching subset
  assert len(scores.warnings) >= 3 * 2 + 1
  assert ("tiny", "ts1-choice", "rec-a", 43) in scores.raw
  assert ("tiny", "ts1-licking_rate", "rec-b", 43) not in scores.raw
