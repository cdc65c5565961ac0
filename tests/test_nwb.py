"""The NWB reader (Neural Latents Benchmark layout) and building NWB files into spike_events."""

import datetime
import logging
import os
import re

import h5py
import numpy as np
import pynwb
import pytest

from data_builders import prepare
from mtm_jax.tasks import registry
from mtm_jax.configs import poyo as poyo_config
from mtm_jax.training import trainer
from mtm_jax.datasets import nwb, provenance, recording
from mtm_jax.datasets.events import batches
from mtm_jax.datasets.events import session
from mtm_jax.datasets.events import tfds as tfds_lib
from mtm_jax.datasets.events import windows

N_TRIALS = 10
LABELS = ["train"] * 6 + ["val"] * 2 + ["test"] * 2
LOCATIONS = ["M1", "PMd", "M1"]


def _spikes(seed: int = 0, until: float = 20.0) -> list[np.ndarray]:
  """Sorted spike times of 3 units over 0-20 s (those before `until`)."""
  rng = np.random.default_rng(seed)
  return [t[t < until] for t in (np.sort(rng.uniform(0, 20, size=n)) for n in (50, 80, 30))]


def write_nwb(
  path,
  *,
  units=True,
  electrodes=True,
  trials=True,
  split=True,
  behaviour="hand_vel",
  rate=None,
  unsorted=False,
  overlap=False,
  seed=0,
  observed=(0.0, 20.0),
  spikes_until=20.0,
  behaviour_until=20.0,
  dtypes=None,
):
  """A small NLB-like NWB file: 3 units observed over 0-20 s (`obs_intervals`; None: no
  such column), 10 trials of 2 s, hand velocity at 100 Hz. The spikes (behaviour) end at
  spikes_until (behaviour_until); dtypes {dataset inside the file, e.g. units/spike_times:
  dtype} rewrites datasets in another dtype."""
  f = pynwb.NWBFile(
    session_description="test",
    identifier=os.path.basename(str(path)),
    session_start_time=datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc),
  )
  if units:
    if electrodes:
      device = f.create_device(name="array")
      group = f.create_electrode_group(name="g", description="", location="motor cortex", device=device)
      for loc in LOCATIONS:
        f.add_electrode(location=loc, group=group)
    for u, times in enumerate(_spikes(seed, spikes_until)):
      if unsorted and u == 1:
        times = times[::-1]
      extra = dict(electrodes=[u]) if electrodes else {}
      if observed is not None:
        extra["obs_intervals"] = [list(observed)]
      f.add_unit(spike_times=times, **extra)
  if trials:
    if split:
      f.add_trial_column(name="split", description="NLB split")
    for k in range(N_TRIALS):
      start = 2.0 * k - (0.5 if overlap and k == 3 else 0.0)
      f.add_trial(start_time=start, stop_time=2.0 * k + 2.0, **({"split": LABELS[k]} if split else {}))
  if behaviour:
    module = f.create_processing_module(name="behavior", description="behaviour")
    stamps = np.arange(int(round(100 * behaviour_until))) * 0.01
    values = np.stack([np.sin(stamps), np.cos(stamps)], axis=1)
    timing = dict(rate=rate, starting_time=0.0) if rate else dict(timestamps=stamps)
    module.add(pynwb.TimeSeries(name=behaviour, data=values, unit="cm/s", **timing))
  with pynwb.NWBHDF5IO(str(path), "w") as io:
    io.write(f)
  with h5py.File(str(path), "r+") as h5:
    for name, dtype in (dtypes or {}).items():
      data = h5[name][:]
      attrs = dict(h5[name].attrs)
      del h5[name]
      h5.create_dataset(name, data=data.astype(dtype))
      h5[name].attrs.update(attrs)
      if f"{name}_index" in h5:  # a ragged column's index refers to its data by reference
        h5[f"{name}_index"].attrs["target"] = h5[name].ref
  return str(path)


def test_reader_returns_the_arrays(tmp_path):
  path = write_nwb(tmp_path / "sess.nwb")
  s = nwb.read_nwb(path)
  spikes = _spikes()
  all_times = np.concatenate(spikes)
  np.testing.assert_array_equal(s.spike_times, np.sort(all_times))
  assert s.spike_times.dtype == np.float64 and s.spike_units.dtype == np.int32
  for u, times in enumerate(spikes):
    np.testing.assert_array_equal(s.spike_times[s.spike_units == u], times)
  assert list(s.unit_ids) == ["sess/0", "sess/1", "sess/2"] and list(s.unit_regions) == LOCATIONS
  np.testing.assert_array_equal(s.trial_starts, 2.0 * np.arange(N_TRIALS))
  np.testing.assert_array_equal(s.trial_ends, 2.0 * np.arange(N_TRIALS) + 2.0)
  for name in session.SPLITS:  # from the split column
    expected = [[2.0 * k, 2.0 * k + 2.0] for k in range(N_TRIALS) if LABELS[k] == name]
    np.testing.assert_array_equal(s.splits[name], expected)
  assert s.source_info["split_source"] == "column"
  np.testing.assert_allclose(s.behaviour_timestamps, np.arange(2000) * 0.01)
  np.testing.assert_allclose(s.behaviour_values[:, 0], np.sin(np.arange(2000) * 0.01), rtol=1e-6)
  assert s.behaviour_values.shape == (2000, 2) and (s.behaviour_weights == 1).all()
  strided = nwb.read_nwb(path, behaviour_stride=10, session_id="x")
  np.testing.assert_allclose(strided.behaviour_timestamps, np.arange(200) * 0.1)
  assert strided.unit_ids[0] == "x/0"


def test_reader_fallbacks(tmp_path, caplog):
  """No electrodes -> region 'unknown'; no split column -> seeded 70/10/20; rate-based
  behaviour; a trial overlapping the previous one is left out."""
  path = write_nwb(tmp_path / "plain.nwb", electrodes=False, split=False, rate=100.0, overlap=True)
  s = nwb.read_nwb(path, split_seed=3)
  assert list(s.unit_regions) == ["unknown"] * 3
  assert s.source_info["split_source"] == "seeded" and s.source_info["dropped_overlapping_trials"] == 1
  assert f"{path}: 1 of {N_TRIALS} trials overlap an earlier trial and are left out" in caplog.text  # not silently
  assert len(s.trial_starts) == N_TRIALS - 1
  assert [len(s.splits[n]) for n in session.SPLITS] == [6, 1, 2]  # 70/10/20 of 9 trials
  np.testing.assert_allclose(s.behaviour_timestamps, np.arange(2000) / 100.0)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(units=False), "no Units table"),
    (dict(behaviour=None), "no processing module 'behavior'"),
    (dict(behaviour="cursor_pos"), "no behaviour 'hand_vel' in processing/behavior \\(it has \\['cursor_pos'\\]\\)"),
    (dict(unsorted=True), "Units row 1 \\(id 1\\): spike_times are not sorted"),
    (dict(trials=False), "no trials table"),
    (
      dict(dtypes={"units/spike_times": np.float16}),
      "Units spike_times are stored as float16, which resolves only 0.0156 s at their largest time",
    ),
    (
      dict(dtypes={"intervals/trials/stop_time": np.int64}),
      re.escape("trials stop_time are stored as integers (int64)"),
    ),
    (
      dict(observed=None, spikes_until=1.5),
      r"none of the 10 trials \(0.000 .. 20.000 s\) lies inside every recording: the spike recording \(its first to "
      r"last spike, 0.\d+ .. 1.\d+ s\) holds 0",
    ),
  ],
)
def test_reader_errors_name_the_file(tmp_path, kwargs, message):
  path = write_nwb(tmp_path / "bad.nwb", **kwargs)
  with pytest.raises(ValueError, match=f"{re.escape(path)}: {message}"):
    nwb.read_nwb(path)


def test_float32_times_are_used_with_a_warning_naming_the_file_and_dtype(tmp_path):
  float32 = ["units/spike_times", "intervals/trials/start_time", "processing/behavior/hand_vel/timestamps"]
  path = write_nwb(tmp_path / "f32.nwb", dtypes=dict.fromkeys(float32, np.float32))
  with pytest.warns(recording.LowPrecisionTimesWarning) as caught:
    s = nwb.read_nwb(path)
  messages = sorted(str(w.message) for w in caught if w.category is recording.LowPrecisionTimesWarning)
  assert len(messages) == 3, messages
  for what, t_max in (("Units spike_times", np.concatenate(_spikes()).max()), ("trials start_time", 18.0)):
    ms = 1e3 * float(np.spacing(np.float32(t_max)))
    assert any(
      m.startswith(f"{path}: {what} are stored as float32") and f"resolves only {ms:.3g} ms" in m for m in messages
    )
  assert any("processing/behavior/hand_vel timestamps are stored as float32" in m for m in messages)
  # Used as stored: every trial, the spikes at their float32 times.
  np.testing.assert_array_equal(s.trial_starts, 2.0 * np.arange(N_TRIALS))
  np.testing.assert_array_equal(s.spike_times, np.sort(np.concatenate(_spikes()).astype(np.float32)))
  assert s.spike_times.dtype == np.float64


@pytest.mark.parametrize("observed", [(0.0, 13.0), None])  # obs_intervals, else the first to the last spike
def test_trials_past_the_units_recording_are_left_out_and_counted(tmp_path, caplog, observed):
  path = write_nwb(tmp_path / "short.nwb", observed=observed, spikes_until=13.0)
  with caplog.at_level(logging.WARNING):
    s = nwb.read_nwb(path)
  first = min(t[0] for t in _spikes(until=13.0))  # 0.055 s: without obs_intervals, trial 0 starts before it
  kept = [1, 2, 3, 4, 5] if observed is None else [0, 1, 2, 3, 4, 5]
  assert observed or first > 0.0
  np.testing.assert_array_equal(s.trial_starts, 2.0 * np.array(kept))
  assert s.source_info["dropped_outside_spike_recording"] == N_TRIALS - len(kept)
  assert s.source_info["dropped_outside_behaviour_recording"] == 0
  assert s.source_info["split_source"] == "seeded"  # the split column's val and test trials are gone
  assert sum(len(iv) for iv in s.splits.values()) == len(kept)
  recorded = "the observation intervals (obs_intervals) of units ['0', '1', '2']" if observed else "the spike recording"
  assert f"{path}: {N_TRIALS - len(kept)} of {N_TRIALS} trials lie outside {recorded}" in caplog.text


def test_trials_past_the_behaviour_series_are_left_out_and_counted(tmp_path, caplog):
  path = write_nwb(tmp_path / "short.nwb", behaviour_until=15.0)  # samples 0 .. 14.99 s
  with caplog.at_level(logging.WARNING):
    s = nwb.read_nwb(path)
  np.testing.assert_array_equal(s.trial_starts, 2.0 * np.arange(7))  # [14, 16) on have no behaviour to the end
  assert s.source_info["dropped_outside_behaviour_recording"] == 3
  assert s.source_info["dropped_outside_spike_recording"] == 0
  assert f"{path}: 3 of {N_TRIALS} trials lie outside the behaviour series processing/behavior/hand_vel" in caplog.text
  for start, end in zip(s.trial_starts, s.trial_ends):  # every trial kept has its samples
    assert len(session.interval_data(s, start, end)["behaviour_timestamps"]) == 200


def test_build_nwb_directory_end_to_end(tmp_path, capsys, caplog):
  manual = tmp_path / "manual"
  manual.mkdir()
  path = write_nwb(manual / "sub-Test_desc-train_behavior+ecephys.nwb")
  data_dir = str(tmp_path / "tfds")
  caplog.set_level(logging.INFO)
  prepare.build(["spike_events/nwb"], data_dir, manual_dir=str(manual))
  # One line says what was built; TFDS's own prints ("Unknown size") and its warning about
  # a version folder that does not exist yet are not shown.
  assert capsys.readouterr().out == ""
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
  assert [r.getMessage().split(" (")[0] for r in caplog.records if "built " in r.getMessage()] == [
    "built spike_events/nwb"
  ]
  back = tfds_lib.load_event_session("spike_events/nwb", data_dir)
  source = nwb.read_nwb(path)
  assert back.session_id == "sub-Test_desc-train_behavior+ecephys"
  assert list(back.unit_ids) == list(source.unit_ids) and list(back.unit_regions) == LOCATIONS
  # The trials tile 0-20 s: every spike and behaviour sample is stored.
  for key in ("spike_times", "spike_units", "behaviour_timestamps", "behaviour_values", "trial_starts"):
    np.testing.assert_array_equal(getattr(back, key), getattr(source, key), err_msg=key)
  for name in session.SPLITS:
    np.testing.assert_array_equal(back.splits[name], source.splits[name])
  data = windows.prepare([back], "train", windows.WindowConfig(bucket_lengths=(256,)))
  assert batches.training_batches(data, batch_size=2, seed=0)[0]["unit_index"].shape == (2, 256)
  # ... and POYO trains on it and scores its test trials.
  config = poyo_config.get_config("tiny")
  config.data.datasets, config.data.data_dir = "spike_events/nwb", data_dir
  config.train.steps = config.train.eval_every = config.train.checkpoint_every = 4
  trainer.train(registry.get("poyo"), config, str(tmp_path / "run"))
  scores = registry.evaluate_workdir(str(tmp_path / "run"), "test")
  assert scores["step"] == 4 and np.isfinite(scores["behaviour_r2"]) and np.isfinite(scores["baseline_r2"])
  # A second NWB file makes the generic config ambiguous.
  write_nwb(manual / "other.nwb")
  with pytest.raises(ValueError, match="2 files match"):
    prepare.build(["spike_events/nwb"], str(tmp_path / "tfds2"), manual_dir=str(manual))


def _files_and_mtimes(path):
  return sorted((os.path.join(d, f), os.stat(os.path.join(d, f)).st_mtime_ns) for d, _, fs in os.walk(path) for f in fs)


def test_a_replaced_nwb_file_is_refused_until_rebuilt(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  first = write_nwb(manual / "first_session.nwb")
  data_dir = str(tmp_path / "tfds")
  other = tmp_path / "nlb"
  (other / "sub").mkdir(parents=True)
  write_nwb(other / "sub" / "sub-Jenkins_ses-small_desc-train_behavior+ecephys.nwb", seed=2)
  prepare.build(["spike_events/nlb_mc_maze_small"], data_dir, manual_dir=str(other))
  untouched = _files_and_mtimes(os.path.join(data_dir, "spike_events", "nlb_mc_maze_small"))
  prepare.build(["spike_events/nwb"], data_dir, manual_dir=str(manual))
  assert prepare.build(["spike_events/nwb"], data_dir, manual_dir=str(manual))  # the same file: reused
  os.remove(first)
  second = write_nwb(manual / "second_session.nwb", seed=1)
  changed = (
    rf"{re.escape(first)}: removed; .*matching '\*\.nwb' are now \['second_session\.nwb'\], the data set "
    r"was built from \['first_session\.nwb'\]; rebuild it with `python -m data_builders\.build "
    r"--rebuild=spike_events/nwb"
  )
  with pytest.raises(provenance.SourceChangedError, match=changed):
    prepare.build(["spike_events/nwb"], data_dir, manual_dir=str(manual))
  with pytest.raises(provenance.SourceChangedError, match=changed):
    tfds_lib.load_event_session("spike_events/nwb", data_dir)
  prepare.build(["spike_events/nwb"], data_dir, manual_dir=str(manual), rebuild=["spike_events/nwb"])
  back = tfds_lib.load_event_session("spike_events/nwb", data_dir)
  assert back.session_id == "second_session"
  np.testing.assert_array_equal(back.spike_times, nwb.read_nwb(second).spike_times)
  # The same file name, other contents.
  write_nwb(manual / "second_session.nwb", seed=3)
  with pytest.raises(provenance.SourceChangedError, match=rf"{re.escape(second)}: content changed"):
    tfds_lib.load_event_session("spike_events/nwb", data_dir)
  assert _files_and_mtimes(os.path.join(data_dir, "spike_events", "nlb_mc_maze_small")) == untouched
  assert tfds_lib.load_event_session("spike_events/nlb_mc_maze_small", data_dir).session_id == "nlb_mc_maze_small"
  # Building it with another --manual_dir: the error says which folder it was built from.
  with pytest.raises(
    provenance.SourceChangedError,
    match=rf"built from {re.escape(str(other))}; the files are now read from {re.escape(str(manual))}",
  ):
    prepare.build(["spike_events/nlb_mc_maze_small"], data_dir, manual_dir=str(manual))


def test_nlb_configs_find_their_training_file(tmp_path):
  from data_builders.spike_events import spike_events

  configs = {c.name: c for c in spike_events.Builder.BUILDER_CONFIGS}
  folder = tmp_path / "000128" / "sub-Jenkins"
  folder.mkdir(parents=True)
  train = folder / "sub-Jenkins_ses-full_desc-train_behavior+ecephys.nwb"
  for name in (train.name, "sub-Jenkins_ses-full_desc-test_ecephys.nwb"):
    (folder / name).touch()
  assert configs["nlb_mc_maze"].nwb_file(str(tmp_path)) == str(train)
  assert configs["nlb_mc_rtt"].behaviour == "finger_vel" and configs["nlb_mc_maze"].behaviour_stride == 10
  with pytest.raises(ValueError, match="no file matching"):
    configs["nlb_mc_rtt"].nwb_file(str(tmp_path))
