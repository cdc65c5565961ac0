"""How a training run stops early and together: SIGTERM (preemption) and failed
checkpoint saves, agreed by every process at the loop's sync steps."""

from __future__ import annotations

import contextlib
import signal
import threading

import jax
import numpy as np


PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: a preempted run saved its checkpoint; re-run to resume


class Preempted(SystemExit):
  """SIGTERM reached a training run, which saved a checkpoint of its current step and
  stopped. A SystemExit, so the programs exit with PREEMPTED_EXIT_CODE without a
  traceback (a scheduler sees a failed job and restarts it; re-running resumes)."""

  def __init__(self, step: int):
    super().__init__(PREEMPTED_EXIT_CODE)
    self.step = step


@contextlib.contextmanager
def sigterm_flag():
  """A threading.Event set when SIGTERM arrives while the block runs (handled in the
  main thread only; elsewhere the event never sets and SIGTERM keeps its handler)."""
  flag = threading.Event()
  if threading.current_thread() is not threading.main_thread():
    yield flag
    return
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: flag.set())
  try:
    yield flag
  finally:
    signal.signal(signal.SIGTERM, previous)


def _any_process(*flags: bool) -> tuple[bool, ...]:
  """Each flag True on every process when it is True on any (all processes stop
  together). A collective: every process must call it at the same steps."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  gathered = multihost_utils.process_allgather(np.asarray(flags))  # [processes, flags]
  return tuple(bool(x) for x in np.any(np.reshape(gathered, (-1, len(flags))), axis=0))


def stop_signals(sigterm: threading.Event, check_saves, done: int, sync: bool):
  """(SIGTERM arrived, a failed save's exception or None) after step `done`. One process
  looks every step (without waiting for a save); several agree at the sync steps only,
  so that the hot path has no per-step collective."""
  if jax.process_count() == 1:
    return sigterm.is_set(), check_saves(done, False)
  if not sync:
    return False, None
  failed = check_saves(done, False)
  stop, failed_anywhere = _any_process(sigterm.is_set(), failed is not None)
  if failed_anywhere and failed is None:
    failed = SystemExit(
      f"error: another process could not write its checkpoint; stopped at step {done} (re-run to resume)"
    )
  return stop, failed
