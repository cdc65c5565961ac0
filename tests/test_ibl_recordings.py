"""IBL sessions whose files pass every format check but would be misread: times stored as
float32 (used, with a warning naming the file), and spike sortings that start after the
first trials or stop before the last (those trials dropped and counted, in the binned and
the event data sets alike). Refused inputs (float16 or integer times, no trial inside a
sorting): test_ibl_builds.py.

Sessions are written in the exact ALF layout (tests/ibl_alf.py); every test runs with
socket connections refused.
"""

import logging
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.usefixtures("no_network")  # ibl_alf's fixtures (tests/conftest.py)

import ibl_alf
from ibl_alf import probe_file
from data_builders import prepare
from mtm_jax.datasets import pipeline, provenance, recording
from mtm_jax.datasets.events import tfds as tfds_lib
from mtm_jax.datasets.ibl import convert, preprocess

KEPT = [k for k in range(ibl_alf.N_TRIALS) if k not in ibl_alf.DROPPED_ROWS]  # the 20 trials the table rules keep


def _stim(k):
  """stimOn_times of trial row k (tests/ibl_alf.py)."""
  return 10.0 + 3.0 * k + 1e-4 * k


def test_float32_times_are_used_with_a_warning_naming_the_file_dtype_and_resolution(tmp_path):
  root = str(tmp_path / "cache")
  session = ibl_alf.write_session(root)
  files = [
    probe_file(session, "probe00", "spikes.times.npy"),
    os.path.join(session, "alf", "_ibl_wheel.timestamps.npy"),
    os.path.join(session, "alf", "_ibl_leftCamera.times.npy"),
  ]
  for path in files:
    np.save(path, np.load(path).astype(np.float32))
  table = os.path.join(session, "alf", "_ibl_trials.table.pqt")
  trials = pd.read_parquet(table)
  trials["stimOn_times"] = trials["stimOn_times"].astype(np.float32)
  trials.to_parquet(table)
  (eid,) = ibl_alf.eids(root).values()
  with pytest.warns(recording.LowPrecisionTimesWarning) as caught:
    s = preprocess.load_session(root, eid)
  messages = [str(w.message) for w in caught if w.category is recording.LowPrecisionTimesWarning]
  assert len(messages) == 4, messages
  for path, what in zip(
    files + [table], ["spike times", "wheel times", "frame times", "times in column 'stimOn_times'"]
  ):
    (message,) = [m for m in messages if path in m]
    t_max = float(np.max(np.load(path))) if path.endswith(".npy") else float(trials["stimOn_times"].max())
    ms = 1e3 * float(np.spacing(np.float32(t_max)))
    assert re.search(
      rf"{eid}.*: {re.escape(what)} are stored as float32, not float64: .* resolves only {ms:.3g} ms", message
    )
  # The data is used as stored: the same trials, the spikes binned at their float32 times.
  np.testing.assert_array_equal(s["trial_index"], KEPT)
  times = np.load(files[0]).astype(np.float64)
  clusters = np.load(probe_file(session, "probe00", "spikes.clusters.npy"))
  stim = trials["stimOn_times"].to_numpy(np.float64)[KEPT]
  for k, t0 in enumerate(stim):
    expected, _ = np.histogram(times[clusters == 0], bins=t0 - 0.5 + 0.02 * np.arange(101))
    np.testing.assert_array_equal(s["spikes"][k, :, 0], expected)
  # ... and the data set builds.
  data_dir = str(tmp_path / "tfds")
  with pytest.warns(recording.LowPrecisionTimesWarning):
    prepare.build([f"ibl_binned/{eid}"], data_dir, manual_dir=root)
  assert len(pipeline.load_split(f"ibl_binned/{eid}", data_dir, "train")["spikes"]) == 14


def _equal_trial_for_trial(binned, events):
  """The event session holds the binned session's trials, in the same splits."""
  np.testing.assert_allclose(events.trial_starts, np.sort(binned["align_times"]) - 0.5)
  for split in ("train", "val", "test"):
    starts = np.sort(binned["align_times"][binned["trial_split"] == split]) - 0.5
    np.testing.assert_allclose(np.asarray(events.splits[split])[:, 0], starts)


def test_a_sorting_that_stops_10_trials_early_drops_them_in_both_data_sets(tmp_path, caplog):
  root = str(tmp_path / "cache")
  session = ibl_alf.write_session(root)
  ibl_alf.keep_spikes(session, "probe01", end=_stim(14) - 1.0)  # trials 14-23 start after its last spike
  (eid,) = ibl_alf.eids(root).values()
  with caplog.at_level(logging.WARNING):
    s = preprocess.load_session(root, eid)
  kept = [k for k in KEPT if k < 14]
  np.testing.assert_array_equal(s["trial_index"], kept)
  assert s["source_info"]["dropped_outside_spike_recording"] == 10
  assert s["source_info"]["dropped_outside_behaviour_recording"] == 0
  assert s["spikes"].shape[:2] == (10, 100) and s["spikes"].shape[2] == 9  # every unit kept
  spikes_file = probe_file(session, "probe01", "spikes.times.npy")
  assert any(
    f"10 of 20 trials lie outside the spike sorting of probe01 ({spikes_file}: times " in r.getMessage()
    for r in caplog.records
  ), caplog.text
  # Both data sets hold the same 10 trials and count the drop in their metadata.
  data_dir = str(tmp_path / "tfds")
  prepare.build([f"ibl_binned/{eid}", f"spike_events/{eid}"], data_dir, manual_dir=root)
  for name in (f"ibl_binned/{eid}", f"spike_events/{eid}"):
    info = provenance.open_built(name, data_dir).info.metadata["source_info"]
    assert info["dropped_outside_spike_recording"] == 10 and info["n_trials"] == 10, name
  built = np.concatenate(
    [pipeline.load_split(f"ibl_binned/{eid}", data_dir, x)["trial_index"] for x in ("train", "val", "test")]
  )
  np.testing.assert_array_equal(np.sort(built), kept)
  events = tfds_lib.load_event_session(f"spike_events/{eid}", data_dir)
  assert len(events.trial_starts) == 10 and events.trial_ends.max() <= np.load(spikes_file).max()
  _equal_trial_for_trial(s, events)


def test_a_sorting_that_starts_late_drops_the_first_trials(tmp_path):
  root = str(tmp_path / "cache")
  session = ibl_alf.write_session(root)
  ibl_alf.keep_spikes(session, "probe00", start=_stim(5) - 0.4)  # the windows of rows 0-5 start before it
  (eid,) = ibl_alf.eids(root).values()
  s = preprocess.load_session(root, eid)
  np.testing.assert_array_equal(s["trial_index"], [k for k in KEPT if k > 5])  # rows 1-4 were dropped already
  assert s["source_info"]["dropped_outside_spike_recording"] == 2
  assert s["source_info"]["n_trials"] == 18
  _equal_trial_for_trial(s, convert.event_session(s, session_id=eid))


def test_the_build_program_prints_a_float32_file_once_in_one_line(tmp_path):
  """What a user sees: one warning line per float32 file (both data sets read the session),
  no Python source lines."""
  root = str(tmp_path / "cache")
  session = ibl_alf.write_session(root)
  path = probe_file(session, "probe00", "spikes.times.npy")
  np.save(path, np.load(path).astype(np.float32))
  (eid,) = ibl_alf.eids(root).values()
  result = subprocess.run(
    [sys.executable, "-m", "data_builders.build", f"--ibl_sessions={eid}", f"--data_dir={tmp_path / 'tfds'}"]
    + [f"--manual_dir={root}"],
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stdout[-3000:]
  lines = [l for l in result.stdout.splitlines() if "float32" in l or "warnings.warn" in l]
  assert len(lines) == 1, result.stdout[-3000:]
  assert f"LowPrecisionTimesWarning: session {eid}" in lines[0] and path in lines[0], lines
