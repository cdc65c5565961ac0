"""A training run's checkpoints written in the background (Orbax async), watched.

A Saver reports each checkpoint when it has finished ("saved checkpoint of step N"), and
a failed write (a full disk) at the first step boundary after it failed: SaveFailed, a
one-line exit naming the step, the directory and the OS error. The failed step's tmp
directory is removed where it can be (else a re-run moves it aside); the checkpoints
before it are untouched, so a re-run resumes from the newest of them.
"""

from __future__ import annotations

import contextlib
import os
import shutil

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from mtm_jax.training import checkpoint


class SaveFailed(SystemExit):
  """A checkpoint could not be written (a full disk, a lost mount). A SystemExit whose
  code is its one-line message: a program exits with status 1 and prints only that line
  (no traceback); re-running resumes from the newest checkpoint that was written."""

  def __init__(self, step: int, directory: str, reason: str, stopped_at: int | None, newest: int | None):
    stopped = f"; training stopped at step {stopped_at}" if stopped_at is not None else ""
    resume = (
      f"the newest checkpoint is step {newest} (re-run to resume once the cause is fixed)"
      if newest is not None
      else "no checkpoint was written (re-run to start again once the cause is fixed)"
    )
    super().__init__(
      f"error: checkpoint of step {step} could not be written to {directory}: {reason}{stopped}; {resume}"
    )
    self.step, self.directory, self.reason, self.stopped_at = step, directory, reason, stopped_at


def _cause(error: BaseException) -> str:
  """The OS error behind `error` ("[Errno 28] No space left on device"), found through its
  causes and contexts; else its first line."""
  seen = set()
  while error is not None and id(error) not in seen:
    if isinstance(error, OSError) and error.errno is not None:
      return f"[Errno {error.errno}] {error.strerror}"
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  return checkpoint.first_line(error) if error is not None else "unknown error"


class Saver:
  """The checkpoints of one training run (see `save`), written in the background.

  failure(step, wait) is cheap without `wait` (it never blocks): it logs "saved
  checkpoint of step N" once the pending save has finished, and returns SaveFailed when
  it could not be written (`step`: the step training reached), else None."""

  def __init__(
    self,
    mngr: ocp.CheckpointManager,
    config: ml_collections.ConfigDict,
    sessions: list[dict],
    key: jax.Array,
    provenance: dict | None = None,
  ):
    self.mngr, self.config, self.sessions, self.key, self.provenance = mngr, config, sessions, key, provenance
    self.pending = None  # the step being written
    self.failed = []  # steps whose save failed

  def save(self, step: int, state, progress: dict) -> None:
    """Starts writing the checkpoint of `step` (progress: data_state, nonfinite_in_a_row);
    raises the previous save's SaveFailed first, if it failed."""
    failed = self.failure(step, wait=True)
    if failed is not None:
      raise failed
    checkpoint.save(
      self.mngr, step, state, self.config, self.sessions, key=self.key, provenance=self.provenance, **progress
    )
    self.pending = step

  def failure(self, step: int | None, wait: bool = False) -> SaveFailed | None:
    if self.pending is None or (not wait and self.mngr.is_saving_in_progress()):
      return None
    pending, self.pending = self.pending, None
    try:
      self.mngr.wait_until_finished()  # returns at once when not `wait`: the save is over
    except Exception as error:  # pylint: disable=broad-except  # any write failure
      self.failed.append(pending)
      self.mngr.reload()
      return SaveFailed(
        pending, str(self.mngr.directory), _cause(error), step, max(self.mngr.all_steps(), default=None)
      )
    logging.info("saved checkpoint of step %d", pending)
    return None

  def close(self) -> None:
    """Closes the manager, then removes the tmp directories of the failed saves where it
    can (Orbax's abandoned writes may still add to one; a re-run moves it aside). The
    checkpoints before them are untouched. After a failed save, Orbax's background
    writer may raise its error once more (already reported); closing again finishes."""
    try:
      self.mngr.close()
    except Exception as error:  # pylint: disable=broad-except
      if not self.failed:
        raise
      logging.debug("closing the checkpoints after the failed save: %s", checkpoint.first_line(error))
      self.mngr.close()
    directory = str(self.mngr.directory)
    for name in os.listdir(directory) if self.failed else ():
      if checkpoint.TMP_MARK in name and int(name.split(".")[0]) in self.failed:
        shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


@contextlib.contextmanager
def saving(
  mngr: ocp.CheckpointManager,
  config: ml_collections.ConfigDict,
  sessions: list[dict],
  key: jax.Array,
  provenance: dict | None = None,
):
  """A Saver for the block (provenance: training.provenance.record, saved with each checkpoint); on leaving it, waits for the last save and closes `mngr`
  (raising that save's SaveFailed if the block ended normally; logging it if the block
  raised, whose exception goes on)."""
  saver = Saver(mngr, config, sessions, key, provenance)
  try:
    yield saver
  except BaseException:
    failed = saver.failure(None, wait=True)
    if failed is not None:
      logging.error("%s", failed.code)
    saver.close()
    raise
  failed = saver.failure(None, wait=True)
  saver.close()
  if failed is not None:
    raise failed
