"""IBL sessions from a local ONE cache: reading, preprocessing, both builders, the programs
on them (bad sessions and failing builds: test_ibl_builds.py).

Sessions are written in the exact ALF layout (tests/ibl_alf.py) and indexed with one-api's
own cache builder. Every test runs with socket connections refused: nothing may touch the
network.
"""

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
from mtm_jax.datasets import pipeline, schema
from mtm_jax.datasets.events import tfds as tfds_lib
from mtm_jax.datasets.events import windows as windows_lib
from mtm_jax.datasets.ibl import alf, cache, configs, convert, preprocess
from mtm_jax.tasks import registry
from mtm_jax.training import trainer


# ------------------------------------------------------------------------------------------
# Reading and preprocessing
# ------------------------------------------------------------------------------------------


def test_reader_is_offline_one_and_lists_the_session(ibl_cache):
  from one import api as one_api

  root, eid = ibl_cache
  assert type(cache.open_cache(root)) is one_api.One  # pylint: disable=unidiomatic-typecheck
  (listed,) = cache.list_sessions(root)
  assert listed == dict(
    eid=eid, path="testlab/Subjects/KS001/2024-01-02/001", probes=["alf/probe00/pykilosort", "alf/probe01"]
  )


def test_preprocessing_matches_the_files(ibl_cache):
  root, eid = ibl_cache
  s = preprocess.load_session(root, eid)
  schema.validate_session(s, "test")
  kept = [k for k in range(ibl_alf.N_TRIALS) if k not in ibl_alf.DROPPED_ROWS]
  np.testing.assert_array_equal(s["trial_index"], kept)
  info = s["source_info"]
  assert (
    info["dropped_nan_stim_on"],
    info["dropped_nan_events"],
    info["dropped_no_choice"],
    info["dropped_reaction_time"],
    info["dropped_silent_clusters"],
  ) == (1, 1, 1, 1, 1)
  # Units: probe00 then probe01 by cluster id, the silent cluster 4 of probe00 left out.
  assert list(s["unit_ids"]) == [
    "probe00/0",
    "probe00/1",
    "probe00/2",
    "probe00/3",
    "probe00/5",
    "probe01/0",
    "probe01/1",
    "probe01/2",
    "probe01/3",
  ]
  assert list(s["regions"]) == ["CA1", "CA1", "CA2", "CA2", "void", "grey", "CA1", "APN", "APN"]
  # Spike counts: every unit and trial against np.histogram of the raw files.
  session = ibl_alf.session_dir(root)
  trials = pd.read_parquet(os.path.join(session, "alf", "_ibl_trials.table.pqt"))
  stim = trials["stimOn_times"].to_numpy()[kept]
  col = 0
  for probe in ("probe00", "probe01"):
    times = np.load(probe_file(session, probe, "spikes.times.npy"))
    clusters = np.load(probe_file(session, probe, "spikes.clusters.npy"))
    for c in sorted(set(range(ibl_alf.N_CLUSTERS[probe])) - set(ibl_alf.SILENT[probe])):
      for k, t0 in enumerate(stim):
        expected, _ = np.histogram(times[clusters == c], bins=t0 - 0.5 + 0.02 * np.arange(101))
        np.testing.assert_array_equal(s["spikes"][k, :, col], expected)
      col += 1
  assert s["spikes"].sum() > 0
  # Behaviour: linear wheel position -> constant speed; linear motion energy -> exact at bin centres.
  np.testing.assert_allclose(s["wheel_speed"], ibl_alf.WHEEL_SLOPE, rtol=1e-5)
  centres = stim[:, None] - 0.5 + 0.01 + 0.02 * np.arange(100)
  np.testing.assert_allclose(s["whisker_motion_energy"], ibl_alf.ME_SLOPE * centres + 1.0, rtol=1e-5)
  np.testing.assert_allclose(s["reaction_time"], 0.3, atol=1e-5)
  k = np.array(kept)
  np.testing.assert_array_equal(s["choice"], np.where(k % 2 == 0, 1, -1))
  np.testing.assert_array_equal(s["reward"], (k % 4 != 0).astype(int))
  np.testing.assert_allclose(s["block"], np.array([0.5, 0.2, 0.8])[k % 3])
  contrast = np.array([1.0, 0.25, 0.125, 0.0625, 0.0])[k % 5]
  np.testing.assert_allclose(s["contrast"], np.where(k % 3 == 0, contrast, -contrast))
  # 70/10/20 split of the 20 kept trials, fixed by the seed.
  counts = {name: int(np.sum(s["trial_split"] == name)) for name in ("train", "val", "test")}
  assert counts == {"train": 14, "val": 2, "test": 4}
  np.testing.assert_array_equal(s["trial_split"], preprocess.load_session(root, eid)["trial_split"])


def test_region_levels_and_unit_filters(ibl_cache):
  root, eid = ibl_cache
  cosmos = preprocess.load_session(root, eid, configs.IblOptions(regions="cosmos"))
  assert list(cosmos["regions"]) == ["HPF", "HPF", "HPF", "HPF", "void", "root", "HPF", "MB", "MB"]
  beryl = preprocess.load_session(root, eid, configs.IblOptions(regions="beryl"))
  assert list(beryl["regions"]) == ["CA1", "CA1", "CA2", "CA2", "void", "root", "CA1", "APN", "APN"]
  good = preprocess.load_session(root, eid, configs.IblOptions(good_units_only=True))
  assert list(good["unit_ids"]) == ["probe00/0", "probe00/2", "probe01/0", "probe01/1", "probe01/3"]
  assert good["source_info"]["dropped_by_unit_filter"] == 4
  with pytest.raises(alf.IblDataError, match="no units left after the unit filter"):
    preprocess.load_session(root, eid, configs.IblOptions(min_firing_rate=ibl_alf.RATE + 1))


def test_session_ids_survive_a_rebuild_of_the_cache_tables(tmp_path):
  root = str(tmp_path / "cache")
  ibl_alf.write_session(root)
  ibl_alf.write_session(root, subject="KS002")
  first = ibl_alf.eids(root)
  for table in cache.CACHE_TABLES:
    os.remove(os.path.join(root, table))
  assert ibl_alf.eids(root) == first
  assert len(set(first.values())) == 2
  elsewhere = str(tmp_path / "copy")
  shutil.copytree(os.path.join(root, "testlab"), os.path.join(elsewhere, "testlab"))  # another machine's copy
  assert ibl_alf.eids(elsewhere) == first
  ibl_alf.write_session(root, subject="KS003")  # a session added: delete the tables, the others keep their ids
  for table in cache.CACHE_TABLES:
    os.remove(os.path.join(root, table))
  added = ibl_alf.eids(root)
  assert {k: added[k] for k in first} == first and len(added) == 3


def test_option_order_and_repeats_give_one_data_set_name(ibl_cache):
  root, eid = ibl_cache
  expected = [f"ibl_binned/{eid}_beryl_rate2_good", f"spike_events/{eid}_beryl_rate2_good"]
  for options in (["beryl", "rate2", "good"], ["good", "beryl", "rate2"], ["rate2", "good", "beryl", "good"]):
    assert prepare.ibl_dataset_names(root, [eid], options=options) == expected
  with pytest.raises(ValueError, match=rf"'{eid}_good_beryl'.*named '{eid}_beryl_good'"):
    prepare.build([f"ibl_binned/{eid}_good_beryl"], "unused", manual_dir=root)
  # A malformed option is named as such (it was reported as a bad session id).
  for bad in ("rate-1", "RATE2", "rate1e3", ""):
    with pytest.raises(ValueError, match=rf"--ibl_options: '{re.escape(bad)}' is not an option"):
      prepare.ibl_dataset_names(root, [eid], options=["beryl", bad])
  with pytest.raises(ValueError, match="--ibl_sessions: 'nope' is not an IBL session id"):
    prepare.ibl_dataset_names(root, ["nope"], options=["good"])


def test_config_names_round_trip():
  eid = "4b00df29-3769-43be-bb40-128b1cba6d35"
  options = configs.IblOptions(regions="beryl", min_firing_rate=2.0, good_units_only=True)
  name = configs.config_name(eid, options)
  assert name == f"{eid}_beryl_rate2_good"
  assert configs.parse_config_name(name) == (eid, options)
  assert configs.parse_config_name(eid) == (eid, configs.IblOptions())
  assert configs.parse_config_name("synthetic_000") is None
  with pytest.raises(ValueError, match="unknown or repeated option 'allen2'"):
    configs.parse_config_name(f"{eid}_allen2")


# ------------------------------------------------------------------------------------------
# Both builders, and training on the built session
# ------------------------------------------------------------------------------------------


def test_built_data_sets_read_back(ibl_cache, ibl_data_dir):
  root, eid = ibl_cache
  expected = preprocess.load_session(root, eid)
  name = f"ibl_binned/{eid}"
  info = pipeline.session_info(name, ibl_data_dir)
  assert info.session_id == eid and info.region_names == tuple(expected["regions"])
  for split in ("train", "val", "test"):
    arrays = pipeline.load_split(name, ibl_data_dir, split)
    rows = np.flatnonzero(expected["trial_split"] == split)
    np.testing.assert_array_equal(arrays["trial_index"], expected["trial_index"][rows])
    np.testing.assert_array_equal(arrays["spikes"], expected["spikes"][rows])
    for field in schema.TRIAL_FIELDS + schema.BIN_FIELDS:
      np.testing.assert_allclose(arrays[field], expected[field][rows], rtol=1e-6)
  assert "rates" not in arrays

  ev = tfds_lib.load_event_session(f"spike_events/{eid}", ibl_data_dir)
  assert ev.session_id == eid and ev.behaviour_name == "wheel_speed,whisker_motion_energy"
  assert list(ev.unit_regions) == list(expected["regions"])
  assert ev.unit_ids[0] == f"{eid}/probe00/0"
  assert len(ev.trial_starts) == 20  # 3 s apart: no 2 s window overlaps another
  np.testing.assert_allclose(ev.trial_starts, np.sort(expected["align_times"]) - 0.5)
  test = ev.splits["test"]
  np.testing.assert_allclose(np.sort(test[:, 0]), expected["align_times"][expected["trial_split"] == "test"] - 0.5)
  # Spikes of the windows: the binned counts of the same trials, summed.
  assert len(ev.spike_times) == int(expected["spikes"].sum())
  np.testing.assert_allclose(ev.behaviour_values[:, 0], ibl_alf.WHEEL_SLOPE, rtol=1e-5)
  assert ev.behaviour_values.shape == (20 * schema.N_BINS, 2)


def test_poyo_scores_of_an_ibl_session_are_named_after_its_behaviours(ibl_cache, ibl_data_dir):
  import jax  # pylint: disable=g-import-not-at-top
  from mtm_jax.evaluation import poyo as poyo_eval  # pylint: disable=g-import-not-at-top

  _, eid = ibl_cache
  ev = tfds_lib.load_event_session(f"spike_events/{eid}", ibl_data_dir)
  data = windows_lib.prepare([ev], "test", windows_lib.WindowConfig(bucket_lengths=(512,)))
  mesh = jax.make_mesh(
    (2, 1), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2, devices=jax.devices()[:2]
  )
  perfect = lambda params, batch: batch["output_values"]
  scores, stitched = poyo_eval.evaluate_data(
    None, None, data, task="behaviour", batch_size=2, mesh=mesh, predictor=perfect
  )
  names = list(convert.BEHAVIOUR_NAMES)
  assert names == ["wheel_speed", "whisker_motion_energy"]
  assert sorted(k for k in scores if k != "sessions") == sorted(["behaviour_r2"] + [f"behaviour_r2_{n}" for n in names])
  assert set(scores["sessions"][eid]) == {"behaviour_r2"} | {f"behaviour_r2_{n}" for n in names}
  np.testing.assert_allclose(scores["behaviour_r2_whisker_motion_energy"], 1.0, atol=1e-5)
  baseline = poyo_eval.baseline_scores(data, stitched, bin_size=0.02, lags=2)
  assert {f"baseline_r2_{n}" for n in names} <= set(baseline)


def test_pretrain_runs_on_the_built_session(ibl_cache, ibl_data_dir, tmp_path):
  from mtm_jax.configs import ndt1 as ndt1_config

  _, eid = ibl_cache
  config = ndt1_config.get_config("tiny")
  config.data.datasets = f"ibl_binned/{eid}"
  config.data.data_dir = ibl_data_dir
  config.masking.mode = "neuron"  # one scheme: one compilation (MtM's draw is tested elsewhere)
  config.train.steps = config.train.log_every = 2
  config.train.eval_every = config.train.checkpoint_every = 2
  result = trainer.train(registry.get("ndt1"), config, str(tmp_path / "run"))
  assert result
  metrics = [line for line in open(tmp_path / "run" / "metrics.jsonl", encoding="utf-8")]
  assert metrics and all("nan" not in line.lower() for line in metrics)


def _small_test_split_session(tmp_path) -> tuple[str, str]:
  """(data_dir, data set) of a built session whose 8 test trials have choice counts
  {-1: 1, 1: 7}; its 28 training trials hold both choices."""
  root = str(tmp_path / "one_cache")
  folder = ibl_alf.write_session(root, n_trials=44)  # 40 kept trials: 28 train / 4 val / 8 test
  kept = np.setdiff1d(np.arange(44), ibl_alf.DROPPED_ROWS)
  test_rows = kept[schema.split_trials(len(kept))["test"]]
  path = os.path.join(folder, "alf", "_ibl_trials.table.pqt")
  trials = pd.read_parquet(path)
  choice = trials["choice"].to_numpy().copy()
  choice[test_rows] = 1.0
  choice[test_rows[0]] = -1.0
  trials["choice"] = choice
  trials.to_parquet(path)
  (eid,) = ibl_alf.eids(root).values()
  data_dir = str(tmp_path / "tfds")
  prepare.build([f"ibl_binned/{eid}"], data_dir, manual_dir=root)
  return data_dir, f"ibl_binned/{eid}"


def test_evaluate_a_small_session_keeps_the_activity_metrics_and_skips_what_cannot_run(tmp_path, caplog):
  """The user's session: 8 test trials, one of choice -1. Choice accuracy cannot run even
  with 2 folds and the wheel speed is constant (ibl_alf), so both are skipped with their
  reasons; everything else is written."""
  import json  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from mtm_jax.configs import ndt1 as ndt1_config  # pylint: disable=g-import-not-at-top
  from mtm_jax.evaluation import report  # pylint: disable=g-import-not-at-top

  data_dir, name = _small_test_split_session(tmp_path)
  test = pipeline.load_split(name, data_dir, "test", ("spikes", "choice"))
  labels, counts = np.unique(test["choice"], return_counts=True)
  assert dict(zip(labels.tolist(), counts.tolist())) == {-1.0: 1, 1.0: 7}
  config = ndt1_config.get_config("tiny")  # 3 head steps
  config.data.datasets, config.data.data_dir = name, data_dir
  config.masking.mode = "neuron"
  config.train.steps = config.train.log_every = config.train.eval_every = config.train.checkpoint_every = 2
  workdir = str(tmp_path / "run")
  trainer.train(registry.get("ndt1"), config, workdir)

  results = registry.evaluate_workdir(workdir)
  with open(os.path.join(workdir, "metrics.json"), encoding="utf-8") as f:
    saved = json.load(f)
  assert saved == results and saved["n_trials"] == 8
  for metric in report.METRICS + ("whisker_motion_energy_r2", "head_choice_accuracy", "head_whisker_motion_energy_r2"):
    assert np.isfinite(saved[metric]), metric
  assert saved["decoding_folds"] == {"whisker_motion_energy_r2": 5}
  skipped = saved["skipped"]
  assert sorted(skipped) == ["choice_accuracy", "head_wheel_speed_r2", "wheel_speed_r2"]
  assert not set(skipped) & set(saved)
  assert "each class needs at least 4 trials for 2 folds; class counts are {-1: 1, 1: 7}" in skipped["choice_accuracy"]
  assert "constant" in skipped["wheel_speed_r2"] and "constant" in skipped["head_wheel_speed_r2"]
  warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "skipped" in r.getMessage()]
  assert len(warnings) == 3 and all(len(w.splitlines()) == 1 for w in warnings)
  assert "| choice_accuracy | skipped |" in report.table({"neuron": saved}, report.METRICS + ("choice_accuracy",))

  # --nodecoding: the activity metrics only (the same numbers) ...
  result = subprocess.run(
    [sys.executable, "-m", "experiments.evaluate", f"--workdir={workdir}", "--nodecoding"],
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "| wheel_speed_r2 | skipped |" in result.stdout
  with open(os.path.join(workdir, "metrics.json"), encoding="utf-8") as f:
    activity = json.load(f)
  for metric in report.METRICS:
    assert activity[metric] == pytest.approx(saved[metric], rel=1e-6), metric
  # ... and the decoders' results of the run before are kept (they were overwritten with
  # "decoding turned off"): the same scores, the same reasons for those it could not run.
  assert activity["skipped"] == saved["skipped"]
  for metric in ("whisker_motion_energy_r2",) + report.HEAD_METRICS:
    if metric not in saved["skipped"]:
      assert activity[metric] == saved[metric], metric


def test_build_lists_and_names_many_sessions(tmp_path):
  root = str(tmp_path / "cache")
  ibl_alf.write_session(root)
  ibl_alf.write_session(root, seed=1, subject="KS002")
  found = ibl_alf.eids(root)
  assert sorted(found) == ["testlab/Subjects/KS001/2024-01-02/001", "testlab/Subjects/KS002/2024-01-02/001"]
  names = prepare.ibl_dataset_names(root, ["all"], options=["cosmos"])
  assert sorted(names) == sorted(f"{b}/{e}_cosmos" for e in found.values() for b in ("ibl_binned", "spike_events"))
  with pytest.raises(ValueError, match="not an IBL session id"):
    prepare.ibl_dataset_names(root, ["KS001"])
  absent = "4b00df29-3769-43be-bb40-128b1cba6d35"
  with pytest.raises(alf.IblDataError, match=f"session {absent}: not in the ONE cache tables .* lists 2 sessions"):
    alf.read_session(cache.open_cache(root), absent)


# ------------------------------------------------------------------------------------------
# Validation: each bad input has its own error naming the file
# ------------------------------------------------------------------------------------------
