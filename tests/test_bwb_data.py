"""BWB session files as our data sets: mtm_jax.bwb.events (split sets in 1 s windows), the names of
mtm_jax.bwb.datasets, and spike_events / bwb_binned data sets built by data_builders.prepare and read back
with the project's readers (fixtures of tests/bwb_sessions.py)."""

import dataclasses
import os
import shutil

import bwb_sessions
import h5py
import numpy as np
import pytest

from data_builders import prepare
from mtm_jax.bwb import datasets, events, sessions
from mtm_jax.datasets import pipeline, provenance
from mtm_jax.datasets.events import tfds as events_tfds

LONG_ID = "0a1b2c3d-0000-4000-8000-000000000009"  # an eval session long enough for a TS2 val chunk (900 s on)
EVAL, PRE = bwb_sessions.EVAL_IDS[0], bwb_sessions.PRETRAIN_IDS[0]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("bwb_root"))
  bwb_sessions.make(root)
  folder = os.path.join(root, "selected_units", datasets.BRAINSET, "eval")
  bwb_sessions.write_session(
    os.path.join(folder, f"{LONG_ID}.h5"), LONG_ID, eval_session=True, build="selected_units", seed=7, duration=1000.0
  )
  return root


def _read(root, build, eid):
  return sessions.read_session(datasets.find_file(root, build, eid).path)


def _inside(windows, start, end):
  """Whether each [n, 2] window lies within one of the intervals (start, end)."""
  return np.array([np.any((start <= s) & (e <= end)) for s, e in windows])


@pytest.mark.parametrize(
  "build, eid, splits",
  [("all_units", EVAL, "ts1"), ("selected_units", LONG_ID, "ts2"), ("selected_units", PRE, "pretrain")],
)
def test_event_session_of_each_split_set(root, build, eid, splits):
  s = _read(root, build, eid)
  ev = events.event_session(s, splits)
  assert ev.session_id == eid and ev.source_files == [s.path]
  assert list(ev.unit_ids) == [f"{eid}/{u}" for u in s.units.ids] and list(ev.unit_regions) == list(s.units.cosmos)
  assert np.array_equal(ev.spike_times, s.spike_times) and np.array_equal(ev.spike_units, s.spike_units)
  domains = events.SPLIT_SETS[splits]
  for name, w in ev.splits.items():
    assert len(w) > 0 and np.allclose(w[:, 1] - w[:, 0], 1.0, atol=1e-9)
    assert _inside(w, *s.splits[domains.get(name, domains["val"])]).all(), name
    if name in domains:  # each interval tiled from its start: floor(length) windows
      start, end = s.splits[domains[name]]
      assert len(w) == int(np.sum(np.floor(end - start))) or splits == "pretrain"
      assert np.all(np.isin(start[end - start >= 1.0], w[:, 0]))
  if splits == "pretrain":  # BWB's val windows cut in two: val the earlier half, test the later
    val, test = ev.splits["val"], ev.splits["test"]
    assert len(val) - len(test) in (0, 1) and val[-1, 1] <= test[0, 0]
    assert len(val) + len(test) == len(events.tile(*s.splits["pretrain_val"], 1.0)[0])
  trials = np.stack([ev.trial_starts, ev.trial_ends], 1)
  assert len(trials) == sum(len(w) for w in ev.splits.values())
  lo, hi = np.searchsorted(s.spike_times, trials[:, 0]), np.searchsorted(s.spike_times, trials[:, 1])
  assert np.sum(hi - lo) + ev.source_info["spikes_outside_windows"] == len(s.spike_times)
  assert ev.source_info["windows"] == {k: len(v) for k, v in ev.splits.items()}
  names = ev.behaviour_name.split(",")
  assert names == ["wheel_speed", "whisker_motion_energy", "left_paw_speed", "right_paw_speed", "licking_rate"]
  wheel = s.behaviour["wheel"]
  rows = np.searchsorted(wheel.timestamps, ev.behaviour_timestamps)
  assert np.allclose(ev.behaviour_values[:, 0], wheel.values["wheel_speed"][rows])  # raw, as BWB scores it
  stats = ev.source_info["behaviour_z_scored"]["whisker_motion_energy"]
  whisker = s.behaviour["whisker"].values["whisker_motion_energy"][rows]
  assert np.allclose(ev.behaviour_values[:, 1], (whisker - stats["mean"]) / stats["std"], atol=1e-5)
  mw, train = s.task_aligned["movement_window"], s.splits[domains["train"]]
  pool = events._inside(ev.behaviour_timestamps, mw["start"], mw["end"]) & events._inside(
    ev.behaviour_timestamps, *train
  )
  assert pool.sum() > 100 and abs(ev.behaviour_values[pool, 1].mean()) < 1e-4  # z-scored over train movement
  confident = s.behaviour["paws"].values["is_left_paw_confident"][rows]
  assert np.all(ev.behaviour_values[~confident, 2] == 0) and ev.source_info["paw_samples_unconfident"] > 0


def test_tile_windows_do_not_overlap_in_float64():
  w, short, rest = events.tile(np.array([0.1, 10.0, 20.3]), np.array([3.35, 10.5, 23.3]), 1.0)
  assert short == 1 and np.isclose(rest, 0.25 + 0.5) and len(w) == 6
  assert np.all(w[1:3, 0] == w[0:2, 1]) and w[2, 1] <= 3.35 and w[-1, 1] <= 23.3


def test_event_session_errors(root):
  pre, ev = _read(root, "selected_units", PRE), _read(root, "selected_units", EVAL)
  with pytest.raises(sessions.SessionFileError, match=rf"{PRE}\.h5.*ts2_train_domain.*pretraining session file"):
    events.event_session(pre, "ts2")
  with pytest.raises(sessions.SessionFileError, match=rf"{EVAL}\.h5.*pretrain_train_domain.*an eval session"):
    events.event_session(ev, "pretrain")
  short = events.event_session(ev, "ts2")  # six minutes: no TS2 val chunk, so val takes train's last tenth
  lent = short.source_info["borrowed_from_train"]["val"]
  train, val = short.splits["train"], short.splits["val"]
  assert lent == len(val) >= 1 and val[0, 0] >= train[-1, 1]
  assert len(train) + lent == len(events.tile(*ev.splits["ts2_train"], 1.0)[0])
  tiny = dataclasses.replace(ev, splits=dict(ev.splits, ts2_train=(np.array([0.0]), np.array([1.5]))))
  with pytest.raises(ValueError, match=r"split\(s\) \['val'\] of split set 'ts2' hold no 1.0 s window"):
    events.event_session(tiny, "ts2")  # one train window: nothing to lend
  with pytest.raises(ValueError, match="split set 'ts3'"):
    events.event_session(ev, "ts3")
  with pytest.raises(ValueError, match="window 0"):
    events.event_session(ev, "ts1", window=0)
  bare = events.event_session(dataclasses.replace(ev, behaviour={}), "ts1")  # no behaviour stream
  assert bare.behaviour_name == "none" and np.all(bare.behaviour_weights == 0) and bare.behaviour_values.shape[1] == 1


def test_names(root):
  name = datasets.config_name("selected_units", "ts2", EVAL)
  assert name == f"bwb_sel_ts2_{EVAL}" and datasets.parse(name) == ("selected_units", "ts2", EVAL)
  assert datasets.config_name("all", "pretrain", PRE) == f"bwb_all_pretrain_{PRE}"
  assert datasets.parse(f"bwb_sel_ts3_{EVAL}") is None and datasets.parse("nwb_x") is None
  for bad in (("custom", "ts1", EVAL), ("all_units", "ts3", EVAL), ("all_units", "ts1", "not-an-eid")):
    with pytest.raises(ValueError):
      datasets.config_name(*bad)
  files = datasets.list_sessions(root)
  assert len(files) == 11 and {(f.eid, f.build) for f in files if f.kind == "eval"} >= {(EVAL, "all_units")}
  with pytest.raises(ValueError, match="no BWB session file"):
    datasets.find_file(root, "all_units", LONG_ID)
  names = prepare.bwb_dataset_names(root, [EVAL, PRE], ["bwb_binned"])
  assert names == [
    f"bwb_binned/bwb_all_ts1_{EVAL}",
    f"bwb_binned/bwb_sel_ts2_{EVAL}",
    f"bwb_binned/bwb_sel_pretrain_{PRE}",
  ]
  assert len(prepare.bwb_dataset_names(root, ["all"])) == 2 * (2 * 2 + 1 + 3)
  with pytest.raises(ValueError, match="no data set for session"):
    prepare.bwb_dataset_names(root, ["0a1b2c3d-0000-4000-8000-0000000000ff"])


def _bins(times, units, start, n_units):
  """[50, U] counts of 20 ms bins from `start`, counted directly."""
  keep = (times >= start) & (times < start + 1.0)
  out = np.zeros((50, n_units), np.int64)
  np.add.at(out, (np.minimum(((times[keep] - start) / 0.02).astype(int), 49), units[keep]), 1)
  return out


def test_build_and_read_back(root, tmp_path):
  data_dir = str(tmp_path / "tfds")
  events_name, binned_name = f"spike_events/bwb_sel_ts2_{LONG_ID}", f"bwb_binned/bwb_all_ts1_{EVAL}"
  prepare.build([events_name, binned_name], data_dir, root)
  s = _read(root, "selected_units", LONG_ID)
  back = events_tfds.load_event_session(events_name, data_dir)
  direct = events.event_session(s, "ts2")
  assert back.session_id == LONG_ID and list(back.unit_ids) == list(direct.unit_ids)
  for split in ("train", "val", "test"):
    assert np.array_equal(back.splits[split], direct.splits[split])
  inside = np.zeros(len(s.spike_times), bool)
  for a, b in np.concatenate(list(direct.splits.values())):
    inside[np.searchsorted(s.spike_times, a) : np.searchsorted(s.spike_times, b)] = True
  assert np.array_equal(back.spike_times, s.spike_times[inside])
  assert np.array_equal(back.spike_units, s.spike_units[inside])
  ev = _read(root, "all_units", EVAL)
  info = pipeline.session_info(binned_name, data_dir)
  assert info.session_id == EVAL and list(info.region_names) == list(ev.units.cosmos)
  meta = provenance.open_built(binned_name, data_dir).info.metadata
  assert meta["n_bins"] == 50 and meta["bwb_splits"] == "ts1" and meta["source_info"]["window"] == 1.0
  assert [f["path"] for f in meta[provenance.RECORD_KEY]["files"]] == [os.path.relpath(ev.path, root)]
  windows = events.event_session(ev, "ts1").splits
  for split in ("train", "val", "test"):
    got = pipeline.load_split(binned_name, data_dir, split)
    assert got["spikes"].shape == (len(windows[split]), 50, 32) and got["spikes"].dtype == np.int32
    assert np.array_equal(got["trial_start"], windows[split][:, 0])
    for k in (0, len(windows[split]) - 1):
      assert np.array_equal(got["spikes"][k], _bins(ev.spike_times, ev.spike_units, windows[split][k, 0], 32))


def test_changed_and_bad_files(root, tmp_path):
  own = str(tmp_path / "root")
  shutil.copytree(os.path.join(root, "selected_units"), os.path.join(own, "selected_units"))
  data_dir, name = str(tmp_path / "tfds"), f"bwb_binned/bwb_sel_pretrain_{PRE}"
  built = prepare.build([name], data_dir, own)[0]
  path = datasets.find_file(own, "selected_units", PRE).path
  with h5py.File(path, "a") as f:
    del f["units/region_cosmos"]
  with pytest.raises(provenance.SourceChangedError, match="changed"):
    prepare.build([name], data_dir, own)
  with pytest.raises(sessions.SessionFileError, match=rf"{PRE}\.h5: field 'units.region_cosmos': missing"):
    prepare.build([name], data_dir, own, rebuild=[name])
  assert os.path.isfile(os.path.join(built, "dataset_info.json"))  # the earlier build is kept
  other = f"spike_events/bwb_sel_pretrain_{bwb_sessions.PRETRAIN_IDS[1]}"
  with pytest.raises(prepare.BuildError, match=r"(?s)1 of 2 data sets failed.*region_cosmos"):
    prepare.build([f"spike_events/bwb_sel_pretrain_{PRE}", other], data_dir, own, keep_going=True)
  assert len(events_tfds.load_event_session(other, data_dir).unit_ids) == 24
