"""Two processes writing the same thing at once: a data set built twice into one data_dir,
two training runs in one workdir, two study processes on one run, files read while they are
written. Where the other writer matters it is a real process; the lock's holder is this
test process where that makes the race deterministic (it holds the lock until the others
have met it)."""

import errno
import fcntl
import json
import os

import numpy as np
import pytest

from mtm_jax import files
from mtm_jax.studies import poyo as poyo_study


def _read(path) -> str:
  with open(path, encoding="utf-8") as f:
    return f.read()


def test_a_write_that_fails_midway_leaves_the_previous_file_whole(tmp_path):
  folder = str(tmp_path / "study")
  summary = dict(heldout="h", pool=["a"], split="test", scratch=dict(behaviour_r2=0.5, baseline_r2=0.25))
  poyo_study.write_outputs(summary, folder)
  written = {n: _read(os.path.join(folder, n)) for n in os.listdir(folder)}
  with pytest.raises(TypeError, match="not JSON serializable"):  # json.dump fails after writing part of the file
    poyo_study.write_outputs(dict(summary, seconds=object()), folder)
  assert {n: _read(os.path.join(folder, n)) for n in os.listdir(folder)} == written  # no temporary file either
  assert json.loads(written["poyo_study.json"]) == summary

  path = os.path.join(folder, "table.md")
  with files.atomic_write(path) as f:
    f.write("old\n")
  with pytest.raises(KeyError):
    with files.atomic_write(path) as f:
      f.write("half of a new")
      f.flush()
      assert _read(path) == "old\n"  # a reader meanwhile sees the old file
      raise KeyError("a failure while writing")
  assert _read(path) == "old\n" and sorted(os.listdir(folder)) == sorted(written) + ["table.md"]
  with files.atomic_write(path, "wb") as f:
    np.save(f, np.arange(3))
  np.testing.assert_array_equal(np.load(path), np.arange(3))
  with pytest.raises(ValueError, match="expected 'w' or 'wb'"):
    with files.atomic_write(path, "a"):
      pass


def test_without_file_locks_the_block_runs_after_a_warning(tmp_path, monkeypatch, caplog):
  """Lustre without flock, NFS without a lock daemon: the work goes on, unprotected."""

  def no_flock(fd, operation):
    raise OSError(errno.ENOSYS, "Function not implemented")

  monkeypatch.setattr(fcntl, "flock", no_flock)
  ran = []
  with files.exclusive(str(tmp_path / "x.lock"), "in use"):
    ran.append(True)
  assert ran and "no file lock can be taken here" in caplog.text
