"""Small IBL sessions written in the exact ALF layout of a ONE cache, for the IBL tests,
and the tests' shared set-up: no network (`offline`, the autouse `no_network`), one
session's cache (`ibl_cache`) and its built data sets (`ibl_data_dir`).

Known by construction (what the tests check against):
  trials        N_TRIALS rows; stimOn at 10 + 3 k s (+ 0.1 k ms); reaction time 0.3 s, except
                row 1 (choice 0), row 2 (NaN stimOn_times), row 3 (reaction time 2.5 s) and
                row 4 (NaN feedback_times), which the trial filter drops;
  wheel         position = WHEEL_SLOPE * t rad, sampled every ~7 ms: speed WHEEL_SLOPE rad/s;
  left camera   motion energy = ME_SLOPE * t + 1 at 60 Hz: linear, so interpolation is exact;
  probes        probe00 in alf/probe00/pykilosort/ (clusters 0..5, cluster 4 silent),
                probe01 in alf/probe01/ (clusters 0..3); Poisson spikes from 0 s to 5 s
                after the last stimOn, so every trial window lies inside both sortings
                (keep_spikes cuts a sorting short); channels carry the Allen ids
                ATLAS_IDS; clusters.metrics.pqt has firing_rate and label.
"""

from __future__ import annotations

import contextlib
import os
import socket

import numpy as np
import pandas as pd
import pytest

N_TRIALS = 24
DROPPED_ROWS = (1, 2, 3, 4)
WHEEL_SLOPE = 2.0
ME_SLOPE = 0.5
ATLAS_IDS = {"probe00": [382, 382, 423, 423, 0, 0], "probe01": [215, 215, 382, 8]}  # CA1, CA2, void, APN, grey
PROBES = {"probe00": "alf/probe00/pykilosort", "probe01": "alf/probe01"}
N_CLUSTERS = {"probe00": 6, "probe01": 4}
SILENT = {"probe00": (4,), "probe01": ()}
CLUSTER_CHANNEL = {"probe00": [0, 1, 2, 3, 4, 5], "probe01": [3, 2, 1, 0]}
LABELS = {"probe00": [1, 1 / 3, 1, 2 / 3, 1, 0], "probe01": [1, 1, 0, 1]}
RATE = 20.0  # Hz per cluster


def session_dir(root, subject="KS001", date="2024-01-02", number="001", lab="testlab") -> str:
  return os.path.join(str(root), lab, "Subjects", subject, date, number)


def write_session(root, seed: int = 0, n_trials: int = N_TRIALS, **where) -> str:
  """Writes one session of n_trials trials under the cache root; returns its folder."""
  rng = np.random.default_rng(seed)
  path = session_dir(root, **where)
  alf = os.path.join(path, "alf")
  os.makedirs(alf, exist_ok=True)
  k = np.arange(n_trials)
  stim = 10.0 + 3.0 * k + 1e-4 * k
  first_move = stim + 0.3
  feedback = stim + 0.5
  choice = np.where(k % 2 == 0, 1.0, -1.0)
  choice[1] = 0.0
  stim_col = stim.copy()
  stim_col[2] = np.nan
  first_move[3] = stim[3] + 2.5
  feedback[4] = np.nan
  contrast = np.array([1.0, 0.25, 0.125, 0.0625, 0.0])[k % 5]
  right = k % 3 == 0
  trials = pd.DataFrame(
    {
      "intervals_0": stim - 0.4,
      "intervals_1": stim + 2.0,
      "stimOn_times": stim_col,
      "goCue_times": stim_col,
      "response_times": feedback,
      "firstMovement_times": first_move,
      "feedback_times": feedback,
      "choice": choice,
      "feedbackType": np.where(k % 4 == 0, -1.0, 1.0),
      "contrastLeft": np.where(right, np.nan, contrast),
      "contrastRight": np.where(right, contrast, np.nan),
      "probabilityLeft": np.array([0.5, 0.2, 0.8])[k % 3],
      "rewardVolume": np.where(k % 4 == 0, 0.0, 1.5),
    }
  )
  trials.to_parquet(os.path.join(alf, "_ibl_trials.table.pqt"))
  end = stim[-1] + 5.0
  wheel_t = np.cumsum(rng.uniform(0.004, 0.01, size=int(end / 0.007) + 10))
  np.save(os.path.join(alf, "_ibl_wheel.timestamps.npy"), wheel_t)
  np.save(os.path.join(alf, "_ibl_wheel.position.npy"), WHEEL_SLOPE * wheel_t)
  cam_t = np.arange(0.0, end, 1 / 60)
  np.save(os.path.join(alf, "_ibl_leftCamera.times.npy"), cam_t)
  np.save(os.path.join(alf, "leftCamera.ROIMotionEnergy.npy"), ME_SLOPE * cam_t + 1.0)
  for probe, collection in PROBES.items():
    folder = os.path.join(path, collection)
    os.makedirs(folder, exist_ok=True)
    times, clusters = [], []
    for c in range(N_CLUSTERS[probe]):
      if c in SILENT[probe]:
        continue
      n = rng.poisson(RATE * end)
      times.append(np.sort(rng.uniform(0, end, n)))
      clusters.append(np.full(n, c))
    times, clusters = np.concatenate(times), np.concatenate(clusters)
    order = np.argsort(times, kind="stable")
    np.save(os.path.join(folder, "spikes.times.npy"), times[order])
    np.save(os.path.join(folder, "spikes.clusters.npy"), clusters[order].astype(np.uint32))
    np.save(os.path.join(folder, "clusters.channels.npy"), np.array(CLUSTER_CHANNEL[probe], np.int64))
    n = N_CLUSTERS[probe]
    pd.DataFrame(
      {
        "cluster_id": np.arange(n),
        "firing_rate": [0.0 if c in SILENT[probe] else RATE for c in range(n)],
        "label": LABELS[probe],
      }
    ).to_parquet(os.path.join(folder, "clusters.metrics.pqt"))
    np.save(os.path.join(folder, "channels.brainLocationIds_ccf_2017.npy"), np.array(ATLAS_IDS[probe], np.int64))
  return path


def eids(root) -> dict[str, str]:
  """{relative session path: eid} of a cache root (builds its tables when missing)."""
  from mtm_jax.datasets.ibl import cache

  return {s["path"]: s["eid"] for s in cache.list_sessions(str(root))}


# ------------------------------------------------------------------------------------------
# Set-up shared by the IBL tests
# ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def offline():
  """Any attempt to open a network connection inside fails with an AssertionError."""

  def refuse(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args}")

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(socket.socket, "connect", refuse)
    patch.setattr(socket, "create_connection", refuse)
    patch.setattr(socket, "getaddrinfo", refuse)
    yield


@pytest.fixture
def no_network():
  """Network access refused for the test (the IBL tests' `pytestmark`)."""
  with offline():
    yield


@pytest.fixture(scope="session")
def ibl_cache(tmp_path_factory):
  """(cache root, eid) of one well-formed session; its cache tables built by the reader."""
  root = str(tmp_path_factory.mktemp("one_cache"))
  write_session(root)
  with offline():  # session fixtures are set up before the per-test patch
    (eid,) = eids(root).values()
  return root, eid


@pytest.fixture(scope="session")
def ibl_data_dir(ibl_cache, tmp_path_factory):
  """A TFDS data_dir holding both data sets of the session, built from the cache."""
  root, eid = ibl_cache
  data_dir = str(tmp_path_factory.mktemp("ibl_tfds"))
  with offline():
    from data_builders import prepare  # pylint: disable=import-outside-toplevel

    prepare.build([f"ibl_binned/{eid}", f"spike_events/{eid}"], data_dir, manual_dir=root)
  return data_dir


def probe_file(session, probe, name):
  """The path of a probe's ALF file in a written session."""
  return os.path.join(session, PROBES[probe], name)


def keep_spikes(session, probe, start=-np.inf, end=np.inf):
  """Keeps only the spikes of a probe in [start, end): a sorting that starts late or stops early."""
  times = np.load(probe_file(session, probe, "spikes.times.npy"))
  keep = (times >= start) & (times < end)
  for name in ("spikes.times.npy", "spikes.clusters.npy"):
    path = probe_file(session, probe, name)
    np.save(path, np.load(path)[keep])
