"""mtm_jax.bwb.sessions reads BWB session files (fixtures of tests/bwb_sessions.py, written with
temporaldata in BWB's layout) and names the file and the field of every bad one."""

import shutil

import bwb_sessions
import h5py
import numpy as np
import pytest

from mtm_jax.bwb import sessions, windows


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  return bwb_sessions.make(str(tmp_path_factory.mktemp("bwb_sessions")))


def test_round_trip(files):
  assert len(files) == 10
  for (build, session_id), path in files.items():
    s = sessions.read_session(path)
    with h5py.File(path, "r") as f:
      assert np.array_equal(s.spike_times, f["spikes/timestamps"][:]) and s.spike_times.dtype == np.float64
      assert np.array_equal(s.spike_units, f["spikes/unit_index"][:])
      assert np.array_equal(s.trials["feedback_time"], f["trials/feedback_time"][:])
      assert np.array_equal(s.behaviour["wheel"].values["wheel_speed"], f["wheel/wheel_speed"][:])
    assert s.session_id == session_id and s.unit_filtering == build and s.dataset_version == "0.1.0"
    assert s.units.ids.dtype.kind == "U" and set(s.units.cosmos) <= set(bwb_sessions.COSMOS)
    assert len(s.units.ids) == (24 if build == "selected_units" else 32)
    assert set(s.behaviour) == {"wheel", "whisker", "paws", "licks"}
    assert s.behaviour["paws"].values["is_left_paw_confident"].dtype == bool
    assert np.allclose(np.diff(s.behaviour["licks"].timestamps), 0.02)
    assert set(sessions.TRIAL_FIELDS) <= set(s.trials) and "go_cue_time" in s.trials
    assert s.is_eval == (session_id in bwb_sessions.EVAL_IDS)
    if s.is_eval and build == "selected_units":
      ids = list(s.units.ids)
      assert s.units.held_out_test.sum() == 2
      assert np.array_equal(s.units.held_out_test, bwb_sessions.held_out_mask(ids, "ts2_co_smoothing_test"))
      assert not np.array_equal(s.units.held_out_test, s.units.held_out_val)
    else:
      assert s.units.held_out_test is None and s.units.held_out_val is None


def test_ts2_test_windows_of_a_session(files):
  s = sessions.read_session(files[("selected_units", bwb_sessions.EVAL_IDS[0])])
  dom = s.task_aligned["domain"]
  starts, ends = windows.intersect(dom["start"], dom["end"], *s.splits["ts2_test"])
  w = windows.window_starts(starts, ends, drop_short=True)
  assert w.size > 100 and np.all(np.diff(w) > 0) and w.min() >= 320.0


def _broken(files, tmp_path, edit):
  path = str(tmp_path / "broken.h5")
  shutil.copy(files[("selected_units", bwb_sessions.EVAL_IDS[0])], path)
  with h5py.File(path, "a") as f:
    edit(f)
  return path


@pytest.mark.parametrize(
  "edit,message",
  [
    (lambda f: f.__delitem__("units/region_cosmos"), "'units.region_cosmos': missing"),
    (lambda f: f.__delitem__("trials/feedback_time"), "'trials': .*feedback_time not found"),
    (lambda f: f.__delitem__("trials/reward"), "'trials.reward': missing"),
    (lambda f: f.__delitem__("ts1_val_domain"), "'ts1_val_domain.start': missing"),
    (lambda f: f.__delitem__("units/ts2_co_smoothing_is_held_out_test"), "is_held_out_test': missing"),
    (lambda f: f.__delitem__("wheel/wheel_speed"), "'wheel.wheel_speed': missing"),
    (lambda f: f["brainset"].attrs.__delitem__("unit_filtering"), "'brainset.unit_filtering': missing"),
  ],
)
def test_missing_fields_are_named(files, tmp_path, edit, message):
  path = _broken(files, tmp_path, edit)
  with pytest.raises(sessions.SessionFileError, match=message) as error:
    sessions.read_session(path)
  assert path in str(error.value)


def _replace(name, value):
  def edit(f):
    del f[name]
    f.create_dataset(name, data=value)

  return edit


@pytest.mark.parametrize(
  "edit,message",
  [
    (_replace("spikes/unit_index", np.zeros(62154, np.float32)), "'spikes.unit_index': expected a integer array"),
    (_replace("units/ts2_co_smoothing_is_held_out_val", np.full(24, 0.5)), "is_held_out_val': expected a bool"),
    (_replace("spikes/timestamps", np.zeros((10, 2))), "'spikes': .*timestamps must be 1D"),
    (_replace("task_aligned_intervals/domain/end", np.zeros(3)), "'task_aligned_intervals': .*end is 3"),
  ],
)
def test_malformed_fields_are_named(files, tmp_path, edit, message):
  path = _broken(files, tmp_path, edit)
  with pytest.raises(sessions.SessionFileError, match=message) as error:
    sessions.read_session(path)
  assert path in str(error.value)


def test_not_hdf5_and_missing(tmp_path):
  path = tmp_path / "session.h5"
  path.write_text("not a session")
  with pytest.raises(sessions.SessionFileError, match="not an HDF5 file"):
    sessions.read_session(str(path))
  with pytest.raises(sessions.SessionFileError, match="no such file"):
    sessions.read_session(str(tmp_path / "absent.h5"))
  with h5py.File(tmp_path / "plain.h5", "w") as f:
    f["x"] = np.zeros(3)
  with pytest.raises(sessions.SessionFileError, match="expected 'Data'"):
    sessions.read_session(str(tmp_path / "plain.h5"))
