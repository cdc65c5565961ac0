"""A user's own NWB files (DANDI layouts): one data set per file, events and binned, built into one data dir,
and pretraining on all of them (POYO, spike-token MtM, NDT1-MtM)."""

import datetime
import os
import re
import subprocess
import sys

import numpy as np
import pynwb
import pytest

from data_builders import prepare
from mtm_jax.configs import ndt1 as ndt1_config
from mtm_jax.configs import poyo as poyo_config
from mtm_jax.configs import poyo_mtm as poyo_mtm_config
from mtm_jax.datasets import nwb, nwb_sets, pipeline, provenance, schema
from mtm_jax.datasets.events import tfds as tfds_lib
from mtm_jax.tasks import registry
from mtm_jax.training import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENGTHS = (1.2, 1.5, 1.8)  # trial k lasts LENGTHS[k % 3] s: median 1.5 s = 75 bins, a third shorter
N_TRIALS = 30


def write_dandi(path, *, series=("velocity",), rate=None, seed=0, container=None, description=None):
  """A DANDI-like NWB file: 4 units on electrodes with locations, 30 trials of 1.2-1.8 s with
  0.3 s gaps (no split column), behaviour TimeSeries `series` (2 columns) at 100 Hz with
  timestamps, or rate + starting_time; container: the series inside a BehavioralTimeSeries
  of that name; description: the series' description (default pynwb's)."""
  os.makedirs(os.path.dirname(str(path)), exist_ok=True)
  f = pynwb.NWBFile(
    session_description="dandi-like",
    identifier=os.path.basename(str(path)),
    session_start_time=datetime.datetime(2021, 1, 1, tzinfo=datetime.timezone.utc),
  )
  device = f.create_device(name="probe")
  group = f.create_electrode_group(name="shank0", description="", location="brain", device=device)
  for loc in ("CA1", "CA1", "DG", "VISp"):
    f.add_electrode(location=loc, group=group)
  starts = np.cumsum([0.2] + [LENGTHS[k % 3] + 0.3 for k in range(N_TRIALS - 1)])
  end = starts[-1] + LENGTHS[(N_TRIALS - 1) % 3] + 0.2
  rng = np.random.default_rng(seed)
  for u in range(4):
    f.add_unit(spike_times=np.sort(rng.uniform(0, end, size=int(20 * end))), electrodes=[u])
  for k, start in enumerate(starts):
    f.add_trial(start_time=float(start), stop_time=float(start + LENGTHS[k % 3]))
  module = f.create_processing_module(name="behavior", description="behaviour")
  if container:
    module = module.add(pynwb.behavior.BehavioralTimeSeries(name=container))
  n = int(end * 100) + 1
  for i, name in enumerate(series):
    values = np.stack([np.sin(np.arange(n) * 0.01 + i), np.cos(np.arange(n) * 0.01)], axis=1)
    timing = dict(rate=rate, starting_time=0.0) if rate else dict(timestamps=np.arange(n) * 0.01)
    text = {} if description is None else dict(description=description)
    ts = pynwb.TimeSeries(name=name, data=values, unit="m/s", **timing, **text)
    module.add_timeseries(ts) if container else module.add(ts)
  with pynwb.NWBHDF5IO(str(path), "w") as io:
    io.write(f)
  return str(path)


def test_names_listing_and_collisions(tmp_path):
  manual = tmp_path / "dandi"
  write_dandi(manual / "sub-A" / "sub-A_ses-1_behavior+ecephys.nwb")
  write_dandi(manual / "sub-B" / "sub-B_ses-2.nwb", rate=100.0)
  assert nwb_sets.list_files(str(manual)) == {
    "nwb_sub_a_ses_1_behavior_ecephys": os.path.join("sub-A", "sub-A_ses-1_behavior+ecephys.nwb"),
    "nwb_sub_b_ses_2": os.path.join("sub-B", "sub-B_ses-2.nwb"),
  }
  names = prepare.nwb_dataset_names(str(manual), ["sub-B_ses-2", "nwb_sub_a_ses_1_behavior_ecephys"], ["nwb_binned"])
  assert names == ["nwb_binned/nwb_sub_b_ses_2", "nwb_binned/nwb_sub_a_ses_1_behavior_ecephys"]
  assert prepare.nwb_dataset_names(str(manual), ["sub-B_ses-2.nwb"]) == [
    "spike_events/nwb_sub_b_ses_2",
    "nwb_binned/nwb_sub_b_ses_2",
  ]
  with pytest.raises(ValueError, match=r"--nwb_files: no NWB file under .* for \['sub-C'\]"):
    prepare.nwb_dataset_names(str(manual), ["sub-C"])
  # The program lists them.
  listed = subprocess.run(
    [sys.executable, "-m", "data_builders.build", "--list_nwb", f"--manual_dir={manual}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert listed.returncode == 0, listed.stderr
  assert listed.stdout.splitlines() == [
    f"nwb_sub_a_ses_1_behavior_ecephys  {os.path.join('sub-A', 'sub-A_ses-1_behavior+ecephys.nwb')}",
    f"nwb_sub_b_ses_2  {os.path.join('sub-B', 'sub-B_ses-2.nwb')}",
  ]
  # Two files of one data set name are refused, naming both.
  write_dandi(manual / "other" / "sub_B_ses_2.nwb")
  collision = (
    r"the NWB files 'other/sub_B_ses_2.nwb' and 'sub-B/sub-B_ses-2.nwb' would both be data set 'nwb_sub_b_ses_2'"
  )
  with pytest.raises(ValueError, match=collision):
    prepare.nwb_dataset_names(str(manual), ["all"])
  with pytest.raises(ValueError, match=collision):
    prepare.build(["spike_events/nwb_sub_a_ses_1_behavior_ecephys"], str(tmp_path / "tfds"), manual_dir=str(manual))


def test_the_behaviour_series_by_flag_or_the_only_one(tmp_path):
  two = write_dandi(tmp_path / "two.nwb", series=("velocity", "position"))
  with pytest.raises(
    ValueError, match=re.escape(f"{two}: processing/behavior holds 2 TimeSeries ['position', 'velocity']")
  ):
    nwb.read_nwb(two, behaviour=None)
  with pytest.raises(ValueError, match="--nwb_behaviour=<name>"):
    nwb.read_nwb(two, behaviour=None)
  s = nwb.read_nwb(two, behaviour="position")
  assert s.behaviour_name == "position" and s.source_info["split_source"] == "seeded"
  np.testing.assert_allclose(s.behaviour_values[:3, 0], np.sin(np.arange(3) * 0.01 + 1), rtol=1e-6)
  assert nwb.read_nwb(write_dandi(tmp_path / "one.nwb"), behaviour=None).behaviour_name == "velocity"
  nested = write_dandi(tmp_path / "nested.nwb", container="BehavioralTimeSeries")
  assert nwb.read_nwb(nested, behaviour=None).behaviour_name == "BehavioralTimeSeries/velocity"
  # The series is part of the data set's identity: another one asked for is refused until rebuilt.
  manual, data_dir = tmp_path / "m", str(tmp_path / "tfds")
  write_dandi(manual / "two.nwb", series=("velocity", "position"))
  names = ["spike_events/nwb_two", "nwb_binned/nwb_two"]
  with pytest.raises(prepare.BuildError, match="(?s)2 of 2 data sets failed.*holds 2 TimeSeries"):
    prepare.build(names, data_dir, str(manual), keep_going=True)
  prepare.build(names, data_dir, str(manual), nwb_options=dict(behaviour="velocity", window=1.0))
  assert pipeline.load_split("nwb_binned/nwb_two", data_dir, "train")["spikes"].shape[1] == 50  # 1 s of 20 ms bins
  prepare.build(names, data_dir, str(manual))  # no request: the built ones
  for name in names:
    with pytest.raises(provenance.SourceChangedError, match=r"--nwb_behaviour=position \(built with velocity\)"):
      prepare.build([name], data_dir, str(manual), nwb_options=dict(behaviour="position"))
  with pytest.raises(provenance.SourceChangedError, match=r"--nwb_window=1.5 \(built with 1.0\)"):
    prepare.build(["nwb_binned/nwb_two"], data_dir, str(manual), nwb_options=dict(window=1.5))
  prepare.build(names, data_dir, str(manual), rebuild=names, nwb_options=dict(behaviour="position"))
  assert tfds_lib.load_event_session("spike_events/nwb_two", data_dir).behaviour_name == "position"
  with pytest.raises(ValueError, match=r"the binned window is 2.5 s; expected a multiple of 0.02 s up to 2.0 s"):
    prepare.build(
      ["nwb_binned/nwb_two"], str(tmp_path / "t2"), str(manual), nwb_options=dict(behaviour="velocity", window=2.5)
    )


def test_behaviour_dimension_names_by_flag_or_from_the_description(tmp_path):
  from mtm_jax.datasets.events import session as session_lib  # pylint: disable=g-import-not-at-top

  plain = write_dandi(tmp_path / "plain.nwb")
  assert session_lib.output_names([nwb.read_nwb(plain, behaviour=None)]) == ["dim0", "dim1"]
  s = nwb.read_nwb(plain, behaviour=None, behaviour_dims=["vx", "vy"])
  assert s.behaviour_name == "vx,vy" and session_lib.output_names([s]) == ["vx", "vy"]
  assert s.source_info["behaviour_series"] == "velocity" and s.source_info["behaviour_dims"] == "vx,vy"
  with pytest.raises(
    ValueError,
    match=re.escape(f"{plain}: --nwb_behaviour_dims=a,b,c names 3 dimensions, but the behaviour series ")
    + r"processing/behavior/velocity has 2 columns",
  ):
    nwb.read_nwb(plain, behaviour=None, behaviour_dims=["a", "b", "c"])
  # A description (or comments) that is exactly one name per column names them; anything else does not.
  described = write_dandi(tmp_path / "described.nwb", description="x, y")
  assert nwb.read_nwb(described, behaviour=None).behaviour_name == "x,y"
  for text in ("hand velocity, in m/s", "x,y,z", "x,x"):
    other = write_dandi(tmp_path / f"other{len(text)}.nwb", description=text)
    assert nwb.read_nwb(other, behaviour=None).behaviour_name == "velocity", text
  # The names are part of the data set's identity (as --nwb_behaviour), on both builders.
  manual, data_dir = tmp_path / "m", str(tmp_path / "tfds")
  write_dandi(manual / "one.nwb")
  names = ["spike_events/nwb_one", "nwb_binned/nwb_one"]
  prepare.build(names, data_dir, str(manual), nwb_options=dict(dims="px,py", window=1.0))
  assert tfds_lib.load_event_session("spike_events/nwb_one", data_dir).behaviour_name == "px,py"
  assert provenance.open_built("nwb_binned/nwb_one", data_dir).info.metadata["behaviour_name"] == "px,py"
  for name in names:
    with pytest.raises(provenance.SourceChangedError, match=r"--nwb_behaviour_dims=u,v \(built with px,py\)"):
      prepare.build([name], data_dir, str(manual), nwb_options=dict(dims="u,v"))
  built = subprocess.run(
    [sys.executable, "-m", "data_builders.build", "--nwb_files=all", "--nwb_behaviour_dims=a,b,c"]
    + [f"--manual_dir={manual}", f"--data_dir={tmp_path / 'other'}", "--nwb_builders=spike_events"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert built.returncode == 1 and "one.nwb: --nwb_behaviour_dims=a,b,c names 3 dimensions" in built.stderr


def _short(config, steps=2):
  config.train.steps = config.train.eval_every = config.train.checkpoint_every = steps
  config.train.log_every = 1
  return config


def test_several_files_in_one_data_dir_and_pretraining_on_all(tmp_path):
  manual, data_dir = tmp_path / "000999", str(tmp_path / "tfds")
  files = [
    write_dandi(manual / "sub-A" / "sub-A_ses-1_behavior+ecephys.nwb", seed=0),  # timestamps
    write_dandi(manual / "sub-A" / "sub-A_ses-2_behavior+ecephys.nwb", seed=1, rate=100.0),  # rate + starting_time
    write_dandi(manual / "sub-B" / "sub-B_ses-1_behavior+ecephys.nwb", seed=2, series=("velocity", "pupil")),
  ]
  built = subprocess.run(
    [sys.executable, "-m", "data_builders.build", "--nwb_files=all", "--nwb_behaviour=velocity", "--nwb_window=1.5"]
    + [f"--manual_dir={manual}", f"--data_dir={data_dir}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert built.returncode == 0, built.stderr
  stems = ["nwb_sub_a_ses_1_behavior_ecephys", "nwb_sub_a_ses_2_behavior_ecephys", "nwb_sub_b_ses_1_behavior_ecephys"]
  assert len(built.stdout.splitlines()) == 6
  events = [f"spike_events/{s}" for s in stems]
  binned = [f"nwb_binned/{s}" for s in stems]
  for name, path in zip(events, files):
    back, source = tfds_lib.load_event_session(name, data_dir), nwb.read_nwb(path, behaviour="velocity")
    assert back.session_id == os.path.basename(path)[:-4] and list(back.unit_regions) == ["CA1", "CA1", "DG", "VISp"]
    long = source.trial_ends - source.trial_starts >= 1.5  # the 1.2 s trials are left out, the others cut to 1.5 s
    np.testing.assert_array_equal(back.trial_starts, source.trial_starts[long])
    np.testing.assert_allclose(back.trial_ends - back.trial_starts, 1.5)
  for name in binned:
    info, train = pipeline.session_info(name, data_dir), pipeline.load_split(name, data_dir, "train")
    assert info.region_names == ("CA1", "CA1", "DG", "VISp") and train["spikes"].shape[1:] == (75, 4)
    meta = provenance.open_built(name, data_dir).info.metadata
    assert meta["source_info"]["dropped_short_trials"] == N_TRIALS // 3  # the 1.2 s trials
    assert meta["window"] == 1.5 and meta["behaviour_name"] == "velocity"
    n = sum(len(pipeline.load_split(name, data_dir, s)["spikes"]) for s in schema.SPLIT_FRACTIONS)
    assert n == N_TRIALS - N_TRIALS // 3
  # Pretraining on all of them, a few steps per family.
  config = _short(poyo_config.get_config("tiny"))
  config.data.datasets, config.data.data_dir = ",".join(events), data_dir
  assert np.isfinite(trainer.train(registry.get("poyo"), config, str(tmp_path / "poyo"))["loss"])
  config = _short(poyo_mtm_config.get_config("tiny"))
  config.mesh.data = 2  # batch 4 over 2 of the 8 test devices
  config.data.context = 1.5  # whole trials of the window (model.context shares it)
  config.data.datasets, config.data.data_dir = ",".join(events), data_dir
  assert np.isfinite(trainer.train(registry.get("poyo_mtm"), config, str(tmp_path / "poyo_mtm"))["loss"])
  config = _short(ndt1_config.get_config("tiny,stitch"))
  config.data.datasets, config.data.data_dir = ",".join(binned), data_dir
  assert np.isfinite(trainer.train(registry.get(config.family), config, str(tmp_path / "ndt1"))["loss"])
  # ... and NDT1 scores them: 75 bins (forward prediction: the last tenth), no IBL fields to decode.
  scores = registry.evaluate_workdir(str(tmp_path / "ndt1"), "test")
  assert np.isfinite(scores["co_smoothing_bps"]) and np.isfinite(scores["forward_prediction_bps"])
  assert "has no 'choice' field" in scores["sessions"][binned[0]]["skipped"]["head_choice_accuracy"]
