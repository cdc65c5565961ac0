"""Two processes writing the same thing at once: a data set built twice into one data_dir,
two training runs in one workdir, two study processes on one run, files read while they are
written. Where the other writer matters it is a real process; the lock's holder is this
test process where that makes the race deterministic (it holds the lock until the others
have met it)."""

import errno
import fcntl
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from data_builders import prepare
from mtm_jax import files
from mtm_jax.configs import ndt1 as ndt1_config
from mtm_jax.datasets import pipeline
from mtm_jax.studies import poyo as poyo_study, runs
from mtm_jax.tasks import registry
from mtm_jax.training import trainer, workdir as workdir_lib
from tests.conftest import DATASET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAITING = f"waiting for another process building {DATASET}"
BUILT = f"built {DATASET} ("  # the log line of a build (not "already built")
ENV = dict(os.environ, MTM_JAX_HUGE_PAGES="0")  # no re-run at start: faster


def _start(log_path, *args) -> subprocess.Popen:
  with open(log_path, "w", encoding="utf-8") as log:
    return subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT)


def _start_build(data_dir, log_path, *args) -> subprocess.Popen:
  return _start(log_path, "data_builders.build", f"--dataset={DATASET}", f"--data_dir={data_dir}", *args)


def _read(path) -> str:
  with open(path, encoding="utf-8") as f:
    return f.read()


def _wait_for_line(procs, logs, text, timeout=120.0) -> None:
  """Waits until every log holds `text`; fails if a process ends first."""
  deadline = time.monotonic() + timeout
  while not all(text in _read(log) for log in logs):
    for p, log in zip(procs, logs):
      assert p.poll() is None or text in _read(log), f"ended without {text!r}:\n{_read(log)[-3000:]}"
    assert time.monotonic() < deadline, f"no {text!r} after {timeout} s"
    time.sleep(0.1)


def _finish(proc, log) -> str:
  proc.wait(timeout=300)
  return _read(log)


def _same_data(data_dir, reference) -> None:
  for split in ("train", "val", "test"):
    got, want = pipeline.load_split(DATASET, data_dir, split), pipeline.load_split(DATASET, reference, split)
    assert sorted(got) == sorted(want)
    for field in want:
      np.testing.assert_array_equal(got[field], want[field], err_msg=f"{split}/{field}")


def test_two_processes_building_one_data_set_at_once_both_end_with_it(data_dir, tmp_path):
  """Both builds start while the data set's lock is held and meet it; released, they race:
  one builds, the other waits for it and uses its data set. Before the lock, one of them
  failed (`Failed to finalize writing of split "train"`: the other removed its folder)."""
  target = str(tmp_path / "tfds")
  logs = [str(tmp_path / "a.log"), str(tmp_path / "b.log")]
  with files.waiting(prepare.lock_path(target, DATASET), "testing"):
    procs = [_start_build(target, log) for log in logs]
    _wait_for_line(procs, logs, WAITING)
  outputs = [_finish(p, log) for p, log in zip(procs, logs)]
  assert [p.returncode for p in procs] == [0, 0], "\n".join(outputs)
  text = "".join(outputs)
  assert text.count(BUILT) == 1 and text.count(f"{DATASET}: already built") == 1, text
  assert f"lock file {prepare.lock_path(target, DATASET)}" in text
  assert os.listdir(os.path.join(target, *DATASET.split("/"))) == ["1.0.0"]
  _same_data(target, data_dir)


def test_a_waiting_build_keeps_the_other_build_and_then_uses_it(data_dir, tmp_path):
  """This test is the process building the data set (its lock held, its TFDS incomplete.*
  folder being written). Another build waits instead of removing that folder as a killed
  build's (it did, and built again), then uses the finished data set as it is."""
  target = str(tmp_path / "tfds")
  config_dir = os.path.join(target, *DATASET.split("/"))
  version = os.path.join(config_dir, "1.0.0")
  log = str(tmp_path / "b.log")
  with files.waiting(prepare.lock_path(target, DATASET), "testing"):
    in_progress = os.path.join(config_dir, "incomplete.TEST01_1.0.0")
    shutil.copytree(os.path.join(data_dir, *DATASET.split("/"), "1.0.0"), in_progress)
    proc = _start_build(target, log)
    _wait_for_line([proc], [log], WAITING)
    time.sleep(0.5)
    assert os.path.isdir(in_progress) and proc.poll() is None
    os.rename(in_progress, version)  # the build is complete (TFDS's last step)
    info = os.stat(os.path.join(version, "dataset_info.json"))
  output = _finish(proc, log)
  assert proc.returncode == 0, output
  assert f"{DATASET}: already built" in output and BUILT not in output and "removing" not in output, output
  after = os.stat(os.path.join(version, "dataset_info.json"))
  assert (after.st_ino, after.st_mtime_ns) == (info.st_ino, info.st_mtime_ns)  # not built again
  assert os.listdir(config_dir) == ["1.0.0"]
  _same_data(target, data_dir)


def test_a_rebuild_made_by_another_process_while_waiting_is_not_made_again(data_dir, tmp_path, caplog):
  """Two `--rebuild` of one data set at once (the hosts of one job): the second uses the
  first's rebuild. One without another rebuild meanwhile still rebuilds."""
  target = str(tmp_path / "tfds")
  version = os.path.join(target, *DATASET.split("/"), "1.0.0")
  shutil.copytree(os.path.join(data_dir, *DATASET.split("/"), "1.0.0"), version)
  info_path = os.path.join(version, "dataset_info.json")
  caplog.set_level("INFO")
  done = []
  with files.waiting(prepare.lock_path(target, DATASET), "testing"):
    waiter = threading.Thread(target=lambda: done.append(prepare.build([DATASET], target, rebuild=[DATASET])))
    waiter.start()
    deadline = time.monotonic() + 60
    while WAITING not in caplog.text:
      assert waiter.is_alive() and time.monotonic() < deadline, caplog.text
      time.sleep(0.05)
    shutil.copytree(version, version + ".new")  # this process's rebuild, complete
    shutil.rmtree(version)
    os.rename(version + ".new", version)
    rebuilt = os.stat(info_path)
  waiter.join(60)
  assert done == [[version]] and "not rebuilt again" in caplog.text
  after = os.stat(info_path)
  assert (after.st_ino, after.st_mtime_ns) == (rebuilt.st_ino, rebuilt.st_mtime_ns)
  prepare.build([DATASET], target, rebuild=[DATASET])  # nobody else: rebuilt
  assert os.stat(info_path).st_ino != rebuilt.st_ino
  _same_data(target, data_dir)


def _tree(folder) -> dict:
  """{path: (content, mtime)} of every file under `folder`, hidden ones too."""
  out = {}
  for path in glob.glob(os.path.join(folder, "**"), recursive=True, include_hidden=True):
    if os.path.isfile(path):
      with open(path, "rb") as f:
        out[path] = (f.read(), os.path.getmtime(path))
  return out


def _pretrain(data_dir, workdir) -> list[str]:
  """The program and flags of a tiny NDT1 pretraining in `workdir`."""
  return [
    "experiments.pretrain",
    "--config=mtm_jax/configs/ndt1.py:tiny",
    f"--config.data.datasets={DATASET}",
    f"--config.data.data_dir={data_dir}",
    f"--workdir={workdir}",
  ]


def test_a_second_run_in_a_workdir_in_use_stops_at_once_and_changes_nothing(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  os.makedirs(os.path.join(workdir, "checkpoints", "5", "state"))
  with open(os.path.join(workdir, "checkpoints", "5", "state", "d"), "wb") as f:
    f.write(b"the first run's checkpoint")
  with open(os.path.join(workdir, "metrics.jsonl"), "w", encoding="utf-8") as f:
    f.write('{"step": 5, "loss": 1.0}\n')
  log = str(tmp_path / "second.log")
  with workdir_lib.claimed(workdir):  # this test is the first run
    before = _tree(workdir)
    start = time.monotonic()
    proc = _start(
      log,
      *_pretrain(data_dir, workdir),
    )
    output = _finish(proc, log)
    assert proc.returncode == 1, output
    assert _tree(workdir) == before
  lock = os.path.join(workdir, workdir_lib.LOCK_FILE)
  expected = (
    f"error: InUseError: {workdir} is in use by another run (pid {os.getpid()} on host {socket.gethostname()}, "
    f"lock file {lock})"
  )
  assert expected in output.splitlines(), output
  assert "loss" not in output and time.monotonic() - start < 60, output


def test_every_process_of_a_job_stops_when_its_workdir_is_in_use(data_dir, tmp_path):
  """Two processes of one job (multi-host): process 0 finds the lock held and tells the other."""
  workdir = str(tmp_path / "run")
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  logs = [str(tmp_path / f"process{i}.log") for i in (0, 1)]
  with workdir_lib.claimed(workdir):
    procs = [
      _start(
        log,
        *_pretrain(data_dir, workdir),
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={i}",
        "--jax_num_cpu_devices=1",
        "--jax_cpu_collectives_implementation=gloo",
      )
      for i, log in enumerate(logs)
    ]
    outputs = [_finish(p, log) for p, log in zip(procs, logs)]
  assert [p.returncode for p in procs] == [1, 1], "\n".join(outputs)
  assert f"error: InUseError: {workdir} is in use by another run (pid {os.getpid()}" in outputs[0]
  assert f"error: InUseError: {workdir} is in use by another run (process 0 of this job found" in outputs[1]
  assert os.listdir(workdir) == [workdir_lib.LOCK_FILE]


def test_a_run_that_fails_at_start_leaves_no_workdir_behind(tmp_path):
  """Before, the workdir the run created stayed, empty; one that existed stays."""
  config = ndt1_config.get_config("tiny")
  config.data.datasets, config.data.data_dir = DATASET, str(tmp_path / "no_data")
  workdir = tmp_path / "new" / "run"
  with pytest.raises(FileNotFoundError, match="not (found|prepared) under"):
    trainer.train(registry.get("ndt1"), config, str(workdir))
  assert not workdir.exists()
  workdir.mkdir()
  with pytest.raises(FileNotFoundError, match="not (found|prepared) under"):
    trainer.train(registry.get("ndt1"), config, str(workdir))
  assert workdir.is_dir()
  with workdir_lib.claimed(str(workdir)):  # and it is free again
    pass


def test_a_workdir_that_is_a_file_is_one_clear_error_and_the_file_stays(tmp_path):
  """Before, a raw FileExistsError from os.makedirs."""
  path = tmp_path / "notes.txt"
  path.write_text("mine")
  config = ndt1_config.get_config("tiny")
  config.data.datasets, config.data.data_dir = DATASET, str(tmp_path / "no_data")
  with pytest.raises(NotADirectoryError, match=rf"--workdir: {path} is a file, not a directory"):
    trainer.train(registry.get("ndt1"), config, str(path))
  assert path.read_text() == "mine"


def test_a_study_process_waits_for_a_run_another_trains_then_reuses_it(tmp_path, monkeypatch, caplog):
  run = str(tmp_path / "study" / "pretrain" / "mtm" / "n01")
  trained_elsewhere = threading.Event()
  monkeypatch.setattr(runs, "finished", lambda workdir, steps: trained_elsewhere.is_set())
  trained = []
  monkeypatch.setattr(runs.trainer, "train", lambda task, config, workdir: trained.append(workdir))
  caplog.set_level("INFO")
  result = []
  with runs._run_lock(run, "training"):  # another study process training this run
    study = threading.Thread(target=lambda: result.append(runs.train_run(ndt1_config.get_config("tiny"), run, False)))
    study.start()
    deadline = time.monotonic() + 30
    while f"waiting for another process training {run}" not in caplog.text:
      assert study.is_alive() and time.monotonic() < deadline, caplog.text
      time.sleep(0.05)
    trained_elsewhere.set()
  study.join(30)
  assert result == [True] and trained == []
  trained_elsewhere.clear()
  assert runs.train_run(ndt1_config.get_config("tiny"), run, False) and trained == [run]


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
