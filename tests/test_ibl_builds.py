"""IBL sessions that cannot be read, and builds that fail, are interrupted or meet
changed files: each gets its own clear error, and nothing already built is lost.

Sessions are written in the exact ALF layout (tests/ibl_alf.py); every test runs with
socket connections refused.
"""

import hashlib
import os
import re
import shutil

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.usefixtures("no_network")  # ibl_alf's fixtures (tests/conftest.py)

import ibl_alf
from ibl_alf import probe_file
from data_builders import prepare
from data_builders.spike_events import spike_events
from mtm_jax.datasets import pipeline, provenance
from mtm_jax.datasets.events import tfds as tfds_lib
from mtm_jax.datasets.ibl import alf, cache, configs, preprocess


def _remove(*rel):
  def edit(session):
    for r in rel:
      os.remove(os.path.join(session, r))

  return edit


def _edit_npy(probe, name, fn):
  def edit(session):
    path = probe_file(session, probe, name)
    np.save(path, fn(np.load(path)))

  return edit


def _edit_alf(name, fn):
  def edit(session):
    path = os.path.join(session, "alf", name)
    np.save(path, fn(np.load(path)))

  return edit


def _edit_trials(fn):
  def edit(session):
    path = os.path.join(session, "alf", "_ibl_trials.table.pqt")
    fn(pd.read_parquet(path)).to_parquet(path)

  return edit


def _edit_metrics(probe, fn):
  def edit(session):
    path = probe_file(session, probe, "clusters.metrics.pqt")
    fn(pd.read_parquet(path)).to_parquet(path)

  return edit


def _nogo(t):
  t["choice"] = 0.0
  return t


def _empty_probe(session):
  for name, dtype in (("spikes.times.npy", np.float64), ("spikes.clusters.npy", np.uint32)):
    np.save(probe_file(session, "probe01", name), np.zeros(0, dtype))


BAD_SESSIONS = {
  "missing trials table": (_remove("alf/_ibl_trials.table.pqt"), r"missing required file alf/_ibl_trials\.table\.pqt"),
  "missing wheel timestamps": (
    _remove("alf/_ibl_wheel.timestamps.npy"),
    r"missing required file alf/_ibl_wheel\.timestamps\.npy",
  ),
  "missing camera": (
    _remove("alf/leftCamera.ROIMotionEnergy.npy"),
    r"missing required file\(s\) alf/_ibl_leftCamera\.times\.npy \+ alf/leftCamera\.ROIMotionEnergy",
  ),
  "missing probe file": (
    _remove("alf/probe01/clusters.metrics.pqt"),
    r"missing required file alf/probe01/clusters\.metrics\.pqt",
  ),
  "trials column": (
    _edit_trials(lambda t: t.drop(columns=["firstMovement_times"])),
    r"_ibl_trials\.table\.pqt has no column\(s\) \['firstMovement_times'\]",
  ),
  "unsorted spikes": (
    _edit_npy("probe00", "spikes.times.npy", lambda a: np.concatenate([a[1:2] + 1, a[1:]])),
    r"probe00/pykilosort/spikes\.times\.npy times are not sorted",
  ),
  "length mismatch": (
    _edit_npy("probe01", "spikes.clusters.npy", lambda a: a[:-3]),
    r"probe01/spikes\.times\.npy has \d+ spikes but \S+probe01/spikes\.clusters\.npy has \d+ "
    r"cluster indices",
  ),
  "cluster out of range": (
    _edit_npy("probe01", "spikes.clusters.npy", lambda a: np.where(a == 3, 7, a)),
    r"probe01/spikes\.clusters\.npy: spike \d+ has cluster index 7, outside the clusters "
    r"table of 4 clusters",
  ),
  "channel out of range": (
    _edit_npy("probe00", "clusters.channels.npy", lambda a: a + 1),
    r"pykilosort/clusters\.channels\.npy: cluster 5 is on channel 6, outside the 6 channels",
  ),
  "region id unknown": (
    _edit_npy("probe01", "channels.brainLocationIds_ccf_2017.npy", lambda a: a * 0 + 123456789),
    r"channels\.brainLocationIds_ccf_2017\.npy has atlas ids \[123456789\] that are not Allen",
  ),
  "metrics rows": (
    lambda s: pd.DataFrame({"firing_rate": [1.0]}).to_parquet(probe_file(s, "probe01", "clusters.metrics.pqt")),
    r"clusters\.metrics\.pqt has 1 rows but \S+ has 4 clusters",
  ),
  "metrics duplicated id": (
    _edit_metrics("probe01", lambda m: m.assign(cluster_id=[0, 1, 1, 3])),
    r"probe01/clusters\.metrics\.pqt: duplicated cluster_id\(s\) \[1\]; .*no row for "
    r"cluster_id\(s\) \[2\]",
  ),
  "metrics missing id": (
    _edit_metrics("probe00", lambda m: m[m["cluster_id"] != 5]),
    r"pykilosort/clusters\.metrics\.pqt: no row for cluster_id\(s\) \[5\] \(1 of the 6 clusters",
  ),
  "metrics id out of range": (
    _edit_metrics("probe01", lambda m: m.assign(cluster_id=[0, 1, 2, 9])),
    r"cluster_id\(s\) \[9\] outside the 4 clusters of \S+clusters\.channels\.npy",
  ),
  "no usable trials": (_edit_trials(_nogo), r"no usable trials in \S+_ibl_trials\.table\.pqt .*dropped_no_choice=22"),
  "empty probe": (_empty_probe, r"empty probe alf/probe01: \S+spikes\.times\.npy holds no spikes"),
  "float16 spike times": (
    _edit_npy("probe00", "spikes.times.npy", lambda a: a.astype(np.float16)),
    r"pykilosort/spikes\.times\.npy: spike times are stored as float16, which resolves only 0\.0625 s at their "
    r"largest time",
  ),
  "integer wheel times": (
    _edit_alf("_ibl_wheel.timestamps.npy", lambda a: np.round(a * 1000).astype(np.int64)),
    r"_ibl_wheel\.timestamps\.npy: wheel times are stored as integers \(int64\); expected float64 seconds",
  ),
  "float16 trial times": (
    _edit_trials(lambda t: t.assign(feedback_times=t["feedback_times"].astype(np.float16))),
    r"_ibl_trials\.table\.pqt: times in column 'feedback_times' are stored as float16",
  ),
  "no trial inside a sorting": (  # the sorting of another recording
    _edit_npy("probe01", "spikes.times.npy", lambda a: a + 1000.0),
    r"none of the 20 trials left by the trial rules \(\S+_ibl_trials\.table\.pqt: windows 9\.500 \.\. 80\.502 s\) "
    r"lies inside every recording: the spike sorting of probe01 \(\S+probe01/spikes\.times\.npy, times 100\d\.\d+ "
    r"\.\. 108\d\.\d+ s\) holds 0 of them",
  ),
}


@pytest.mark.parametrize("case", sorted(BAD_SESSIONS))
def test_bad_sessions_raise_their_own_error(tmp_path, case):
  edit, message = BAD_SESSIONS[case]
  root = str(tmp_path / "cache")
  session = ibl_alf.write_session(root)
  edit(session)
  (eid,) = ibl_alf.eids(root).values()
  with pytest.raises(alf.IblDataError, match=message) as raised:
    preprocess.load_session(root, eid)
  assert eid in str(raised.value)


def test_file_deleted_after_indexing_and_right_camera_fallback(tmp_path):
  root = str(tmp_path / "cache")
  session = ibl_alf.write_session(root)
  for side in ("times", "ROIMotionEnergy"):
    src = os.path.join(session, "alf", f"_ibl_leftCamera.{side}.npy" if side == "times" else f"leftCamera.{side}.npy")
    shutil.move(src, src.replace("left", "right"))
  (eid,) = ibl_alf.eids(root).values()  # the tables now list the right camera only
  assert preprocess.load_session(root, eid)["source_info"]["camera"] == "right"
  os.remove(os.path.join(session, "alf", "_ibl_wheel.position.npy"))
  with pytest.raises(
    alf.IblDataError,
    match=r"missing required file \S+_ibl_wheel\.position\.npy \(listed in the "
    r"ONE cache tables, not on disk\)",
  ):
    preprocess.load_session(root, eid)


def test_nan_alignment_trials_are_dropped_and_logged(ibl_cache, caplog):
  root, eid = ibl_cache
  with caplog.at_level("WARNING"):
    s = preprocess.load_session(root, eid)
  assert s["source_info"]["dropped_nan_stim_on"] == 1
  assert any("1 of 24 trials have NaN stimOn_times" in r.getMessage() for r in caplog.records)
  assert 2 not in s["trial_index"]


def _tree_digest(path):
  digest = hashlib.sha256()
  for folder, _, files in sorted(os.walk(path)):
    for f in sorted(files):
      digest.update(os.path.relpath(os.path.join(folder, f), path).encode())
      digest.update(open(os.path.join(folder, f), "rb").read())
  return digest.hexdigest()


def _tree_digest_file(path):
  return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _left_behind(path):
  """Files and folders under a data set's directory (none after a failed build)."""
  return [os.path.join(d, f) for d, dirs, files in os.walk(path) for f in dirs + files]


def test_failed_and_interrupted_builds_leave_no_data_set(tmp_path, monkeypatch):
  root = str(tmp_path / "cache")
  ibl_alf.write_session(root)
  bad = ibl_alf.write_session(root, subject="KS002")
  _edit_npy("probe00", "spikes.times.npy", lambda a: a[::-1])(bad)
  found = ibl_alf.eids(root)
  good_eid, bad_eid = found["testlab/Subjects/KS001/2024-01-02/001"], found["testlab/Subjects/KS002/2024-01-02/001"]
  data_dir = str(tmp_path / "tfds")
  names = [f"ibl_binned/{bad_eid}", f"ibl_binned/{good_eid}"]
  with pytest.raises(
    prepare.BuildError,
    match=rf"(?s)^1 of 2 data sets failed to build; the other 1 was built:\n"
    rf"ibl_binned/{bad_eid}: IblDataError: .*spikes\.times\.npy times are not sorted",
  ):
    prepare.build(names, data_dir, manual_dir=root, keep_going=True)
  good_dir = os.path.join(data_dir, "ibl_binned", good_eid)
  before = _tree_digest(good_dir)
  assert not os.path.exists(os.path.join(data_dir, "ibl_binned", bad_eid))  # not even an empty folder
  with pytest.raises(prepare.BuildError, match=r"^2 of 2 data sets failed to build:\n") as raised:
    prepare.build([names[0], f"spike_events/{bad_eid}"], data_dir, manual_dir=root, keep_going=True)
  assert "were built" not in str(raised.value) and "others" not in str(raised.value)
  assert not os.path.exists(os.path.join(data_dir, "spike_events", bad_eid))
  with pytest.raises(FileNotFoundError, match=r"not (found|prepared) under .*build it"):
    pipeline.session_info(names[0], data_dir)

  # An interruption half-way through writing the examples of the good session's events.
  original = spike_events.Builder._generate_examples

  def interrupted(self, session, intervals):
    for i, example in enumerate(original(self, session, intervals)):
      if i == 3:
        raise KeyboardInterrupt
      yield example

  monkeypatch.setattr(spike_events.Builder, "_generate_examples", interrupted)
  with pytest.raises(KeyboardInterrupt):
    prepare.build([f"spike_events/{good_eid}"], data_dir, manual_dir=root)
  assert _left_behind(os.path.join(data_dir, "spike_events", good_eid)) == []
  with pytest.raises(FileNotFoundError, match=r"not (found|prepared) under .*build it"):
    tfds_lib.load_event_session(f"spike_events/{good_eid}", data_dir)
  assert _tree_digest(good_dir) == before
  assert len(pipeline.load_split(names[1], data_dir, "test")["spikes"]) == 4


def test_failure_summary_counts_what_was_built():
  assert prepare.failure_summary(["a: E: x"], 3) == "1 of 3 data sets failed to build; the other 2 were built:\na: E: x"
  assert prepare.failure_summary(["a: E: x", "b: E: y"], 2) == "2 of 2 data sets failed to build:\na: E: x\nb: E: y"


def test_a_killed_build_leaves_nothing_the_next_build_keeps(tmp_path):
  """SIGKILL leaves TFDS's incomplete.* folder (its `finally` never runs) or, during a
  rebuild, the previous version moved aside; the next build clears or restores them."""
  root = str(tmp_path / "cache")
  session = ibl_alf.write_session(root)
  (eid,) = ibl_alf.eids(root).values()
  data_dir = str(tmp_path / "tfds")
  config_dir = os.path.join(data_dir, "spike_events", eid)
  version = str(spike_events.Builder.VERSION)
  stale = os.path.join(config_dir, f"incomplete.ABC123_{version}")
  os.makedirs(stale)
  open(os.path.join(stale, "spike_events-train.array_record-00000-of-00001"), "wb").close()
  (path,) = prepare.build([f"spike_events/{eid}"], data_dir, manual_dir=root)
  assert sorted(os.listdir(config_dir)) == [version] and path == os.path.join(config_dir, version)
  before = _tree_digest(path)
  os.rename(path, os.path.join(config_dir, f"replaced.{version}"))  # killed while rebuilding
  with pytest.raises(
    FileNotFoundError, match=rf"rebuild of it was interrupted.*replaced\.{re.escape(version)}.*puts it back"
  ):
    tfds_lib.load_event_session(f"spike_events/{eid}", data_dir)
  os.makedirs(stale)
  assert prepare.build([f"spike_events/{eid}"], data_dir, manual_dir=root) == [path]
  assert sorted(os.listdir(config_dir)) == [version] and _tree_digest(path) == before
  os.rename(path, os.path.join(config_dir, f"replaced.{version}"))
  _edit_metrics("probe00", lambda m: m.assign(label=0.0))(session)  # the restored data set is checked too
  with pytest.raises(provenance.SourceChangedError, match=r"clusters\.metrics\.pqt: (content changed|size)"):
    prepare.build([f"spike_events/{eid}"], data_dir, manual_dir=root)
  assert sorted(os.listdir(config_dir)) == [version] and _tree_digest(path) == before


def test_changed_session_files_are_refused_until_rebuilt(tmp_path):
  root = str(tmp_path / "cache")
  session = ibl_alf.write_session(root)
  (eid,) = ibl_alf.eids(root).values()
  data_dir = str(tmp_path / "tfds")
  names = [f"ibl_binned/{eid}", f"spike_events/{eid}"]
  prepare.build(names + ["ibl_binned/synthetic_001"], data_dir, manual_dir=root)
  synthetic = _tree_digest(os.path.join(data_dir, "ibl_binned", "synthetic_001"))
  assert prepare.build(names, data_dir, manual_dir=root)  # unchanged: reused
  os.utime(os.path.join(session, "alf", "_ibl_trials.table.pqt"))  # touched, same content: unchanged
  assert pipeline.session_info(names[0], data_dir).session_id == eid
  metrics = probe_file(session, "probe01", "clusters.metrics.pqt")
  _edit_metrics("probe01", lambda m: m.assign(label=[0.0, 0.0, 0.0, 1.0]))(session)
  changed = rf"its source changed since it was built: {re.escape(metrics)}: (content changed|size)"
  with pytest.raises(provenance.SourceChangedError, match=changed + rf".*--rebuild=ibl_binned/{eid}"):
    prepare.build(names[:1], data_dir, manual_dir=root)
  with pytest.raises(provenance.SourceChangedError, match=changed):
    pipeline.load_split(names[0], data_dir, "train")
  with pytest.raises(provenance.SourceChangedError, match=changed):
    tfds_lib.load_event_session(names[1], data_dir)
  # A rebuild that fails keeps the previous version; one that succeeds replaces it.
  binned_dir = os.path.join(data_dir, "ibl_binned", eid, "1.0.0")
  before = _tree_digest(binned_dir)
  trials = os.path.join(session, "alf", "_ibl_trials.table.pqt")
  os.rename(trials, trials + ".away")
  with pytest.raises(alf.IblDataError, match="missing required file"):
    prepare.build(names[:1], data_dir, manual_dir=root, rebuild=names[:1])
  assert _tree_digest(binned_dir) == before
  os.rename(trials + ".away", trials)
  prepare.build(names[:1], data_dir, manual_dir=root, rebuild=names[:1])
  assert len(pipeline.session_info(names[0], data_dir).region_names) == 9
  assert _tree_digest(binned_dir) != before
  with pytest.raises(provenance.SourceChangedError):  # the other data set of the session was not rebuilt
    tfds_lib.load_event_session(names[1], data_dir)
  assert _tree_digest(os.path.join(data_dir, "ibl_binned", "synthetic_001")) == synthetic
  # Data moved to a machine without the cache: read, with a warning.
  os.rename(root, root + ".moved")
  with pytest.warns(provenance.SourceUnavailableWarning, match="is not here"):
    assert len(pipeline.load_split(names[0], data_dir, "test")["spikes"]) == 4


def test_latest_revision_of_a_file_is_read(tmp_path):
  root = str(tmp_path / "cache")
  session = ibl_alf.write_session(root)
  original = probe_file(session, "probe01", "spikes.clusters.npy")
  revised = os.path.join(os.path.dirname(original), "#2099-01-01#", "spikes.clusters.npy")
  os.makedirs(os.path.dirname(revised))
  shutil.copy(original, revised)
  _edit_npy("probe01", "spikes.clusters.npy", lambda a: a + 100)(session)  # the older revision is broken
  (eid,) = ibl_alf.eids(root).values()
  assert preprocess.load_session(root, eid)["spikes"].shape[2] == 9
  os.remove(revised)
  with pytest.raises(alf.IblDataError, match=r"#2099-01-01#/spikes\.clusters\.npy \(listed in the ONE cache tables"):
    preprocess.load_session(root, eid)


def test_cluster_metrics_are_matched_by_cluster_id(tmp_path):
  root = str(tmp_path / "cache")
  session = ibl_alf.write_session(root)
  for probe in ibl_alf.PROBES:  # rows in reverse order: only cluster_id says which cluster a row is
    _edit_metrics(probe, lambda m: m.iloc[::-1])(session)
  (eid,) = ibl_alf.eids(root).values()
  good = preprocess.load_session(root, eid, configs.IblOptions(good_units_only=True))
  assert list(good["unit_ids"]) == ["probe00/0", "probe00/2", "probe01/0", "probe01/1", "probe01/3"]
  rate = preprocess.load_session(root, eid, configs.IblOptions(min_firing_rate=1.0))
  assert "probe00/5" in rate["unit_ids"] and len(rate["unit_ids"]) == 9


def test_existing_cache_tables_are_not_rewritten(ibl_cache):
  root, eid = ibl_cache
  digests = [_tree_digest_file(os.path.join(root, t)) for t in cache.CACHE_TABLES]
  assert ibl_alf.eids(root) == {"testlab/Subjects/KS001/2024-01-02/001": eid}
  assert [_tree_digest_file(os.path.join(root, t)) for t in cache.CACHE_TABLES] == digests
