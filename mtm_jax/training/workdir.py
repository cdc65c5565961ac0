"""One run at a time in a workdir.

Two runs in one workdir would interleave their checkpoints (Orbax) and metrics. A run
holds <workdir>/.lock (mtm_jax.files.exclusive) from before it touches anything until it
ends; a second run stops at once with

  InUseError: <workdir> is in use by another run (pid N on host H, lock file <workdir>/.lock)

and changes nothing. The lock ends with the process, however it ends (SIGKILL too), so a
killed run's workdir is free for the re-run that resumes it.

Several processes of one job (multi-host) share the workdir, and Orbax coordinates their
writes: only process 0 takes the lock, and every process learns whether it got it (one
broadcast before anything is touched), so all of them stop when it is in use. A
per-process lock would let process k of a second job start touching the workdir while
its process 0 is refused.

A workdir this run created stays only if the run wrote something there: when the start
fails (a missing data set, a bad checkpoint), an empty workdir is removed again.
"""

from __future__ import annotations

import contextlib
import os

import jax
import numpy as np

from mtm_jax import files

LOCK_FILE = ".lock"


def _remove_if_unused(workdir: str, lock_path: str) -> None:
  """Removes `workdir` when it holds no file but its lock file (empty folders only)."""
  for folder, _, names in os.walk(workdir):
    if any(os.path.join(folder, n) != lock_path for n in names):
      return
  with contextlib.suppress(FileNotFoundError):
    os.remove(lock_path)
  for folder, _, _ in sorted(os.walk(workdir), key=lambda w: -len(w[0])):  # deepest first
    with contextlib.suppress(OSError):  # one that is not empty (now) stays
      os.rmdir(folder)


def _agree(error: Exception | None, workdir: str, lock_path: str) -> Exception | None:
  """Process 0's outcome, for every process of a multi-host job (one broadcast)."""
  if jax.process_count() == 1:
    return error
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  free = bool(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
  if free or error is not None:
    return error
  return files.InUseError(
    f"{workdir} is in use by another run (process 0 of this job found its lock file {lock_path} held by "
    f"{files.holder(lock_path)})"
  )


@contextlib.contextmanager
def claimed(workdir: str):
  """Creates `workdir` (absolute) if missing and holds it for one run: raises
  NotADirectoryError when it is a file, files.InUseError when another run holds it; removes it again if this call created it
  and the block fails before writing anything there."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise NotADirectoryError(
      f"--workdir: {workdir} is a file, not a directory; give a directory for the run's checkpoints and logs"
    )
  created = not os.path.isdir(workdir)
  os.makedirs(workdir, exist_ok=True)
  lock_path = os.path.join(workdir, LOCK_FILE)
  with contextlib.ExitStack() as stack:
    error = None
    if jax.process_index() == 0:
      try:
        stack.enter_context(files.exclusive(lock_path, f"{workdir} is in use by another run"))
      except files.InUseError as e:
        error = e
    error = _agree(error, workdir, lock_path)
    if error is not None:
      raise error
    try:
      yield workdir
    except BaseException:
      if created and jax.process_index() == 0:  # still holding the lock: no other run is using it
        _remove_if_unused(workdir, lock_path)
      raise
