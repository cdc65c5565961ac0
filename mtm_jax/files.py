"""Files that several processes may write at once: whole-file replacement and locks.

atomic_write(path): the file is written beside `path` under a temporary name and renamed
over it (os.replace) only when complete, so a reader sees the old file or the new one,
never part of one, and of two processes writing it at once the last one's whole file stays.
A failure while writing leaves `path` as it was and no temporary file.

Locks are `filelock` locks (flock) on a file: `waiting` waits for the process that holds
it (one log line), `exclusive` fails at once (InUseError). The holder writes
"pid N on host H" into the lock file, which those it keeps out name in their message.
The lock ends with the process that holds it, however it ends (SIGKILL included): a
lock file left behind holds nothing. Where the file system has no locks (Lustre mounted
without flock, NFS without a lock daemon) or the folder is read-only, the block runs
without one, after a warning.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import socket

import filelock
from absl import logging

# OS errors that mean "no lock can be taken here" (not "another process holds it").
_NO_LOCKS = frozenset({errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EROFS, errno.EACCES, errno.EPERM})


class InUseError(RuntimeError):
  """Another process holds the lock of what this one was about to write."""


@contextlib.contextmanager
def atomic_write(path, mode: str = "w", **open_args):
  """Opens a temporary file beside `path` (mode "w" or "wb"; open_args: e.g. encoding,
  newline) for the block, and replaces `path` with it when the block ends without error."""
  if mode not in ("w", "wb"):
    raise ValueError(f"atomic_write({path!r}): mode {mode!r}; expected 'w' or 'wb'")
  path = os.path.abspath(os.fspath(path))
  folder, name = os.path.split(path)
  tmp = os.path.join(folder, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
  # O_EXCL: the name is this writer's alone; 0o666 less the umask, as open() would make it.
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    try:
      f = os.fdopen(fd, mode, **open_args)
    except BaseException:
      os.close(fd)
      raise
    with f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def _record_holder(fd: int) -> None:
  """filelock's on_acquired: the lock file says who holds it."""
  os.ftruncate(fd, 0)
  os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)


def holder(path: str) -> str:
  """Who holds lock file `path`, as its holder wrote it ("pid N on host H")."""
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read().strip()
  except OSError:
    text = ""
  return text or "its holder not recorded yet"


def _acquire(lock: filelock.BaseFileLock, on_busy) -> bool:
  """Takes `lock`, calling on_busy(holder) first when another process holds it; False when
  no lock can be taken there (warned)."""
  path = lock.lock_file
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
      lock.acquire(blocking=False)
    except filelock.Timeout:
      on_busy(holder(path))
      lock.acquire()
  except OSError as error:
    if error.errno not in _NO_LOCKS:
      raise
    logging.warning("%s: no file lock can be taken here (%s); going on without one", path, error)
    return False
  return True


@contextlib.contextmanager
def _held(path: str, on_busy):
  lock = filelock.FileLock(path, on_acquired=_record_holder)
  locked = _acquire(lock, on_busy)
  try:
    yield
  finally:
    if locked:
      lock.release()


def waiting(path: str, doing: str):
  """Holds lock file `path` for the block (a context manager); while another process holds
  it, logs `waiting for another process <doing> (pid N on host H, lock file <path>)` and waits."""

  def on_busy(who: str) -> None:
    logging.info("waiting for another process %s (%s, lock file %s)", doing, who, path)

  return _held(path, on_busy)


def exclusive(path: str, what: str):
  """Holds lock file `path` for the block (a context manager); when another process holds it,
  raises InUseError(`<what> (pid N on host H, lock file <path>)`) at once."""

  def on_busy(who: str) -> None:
    raise InUseError(f"{what} ({who}, lock file {path})")

  return _held(path, on_busy)
