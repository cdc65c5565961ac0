"""IBL sessions whose files pass every format check but would be misread: times stored as
float32 (used, with a warning naming the file). Refused inputs (float16 or integer
times): test_ibl_builds.py.

Sessions are written in the exact ALF layout (tests/ibl_alf.py); every test runs with
socket connections refused.
"""

import os
import re

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.usefixtures("no_network")  # ibl_alf's fixtures (tests/conftest.py)

import ibl_alf
from ibl_alf import probe_file
from data_builders import prepare
from mtm_jax.datasets import pipeline, recording
from mtm_jax.datasets.ibl import preprocess

KEPT = [k for k in range(ibl_alf.N_TRIALS) if k not in ibl_alf.DROPPED_ROWS]  # the 20 trials the table rules keep


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
