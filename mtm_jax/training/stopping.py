"""How a training run stops early and together: SIGTERM (preemption), SIGINT (Ctrl-C) and
failed checkpoint saves, agreed by every process at the loop's sync steps."""

from __future__ import annotations

import contextlib
import os
import signal
import threading

import jax
import numpy as np

from mtm_jax.training import interrupt


PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: a preempted run saved its checkpoint; re-run to resume
INTERRUPTED_EXIT_CODE = interrupt.EXIT_CODE  # 128 + SIGINT: Ctrl-C; the training loop saved its checkpoint first


class Preempted(SystemExit):
  """SIGTERM reached a training run, which saved a checkpoint of its current step and
  stopped. A SystemExit, so the programs exit with PREEMPTED_EXIT_CODE without a
  traceback (a scheduler sees a failed job and restarts it; re-running resumes)."""

  def __init__(self, step: int, code: int = PREEMPTED_EXIT_CODE):
    super().__init__(code)
    self.step = step


class Interrupted(Preempted):
  """Ctrl-C (SIGINT) reached a training run, which saved a checkpoint of its current step
  and stopped: exit status INTERRUPTED_EXIT_CODE, no traceback; re-running resumes."""

  def __init__(self, step: int):
    super().__init__(step, INTERRUPTED_EXIT_CODE)


class StopFlag(threading.Event):
  """Set by the first SIGTERM or SIGINT; `signum` is that signal."""

  signum: int | None = None


CTRL_C_NOTE = b"\nCtrl-C: stopping after this step and saving it (Ctrl-C again stops at once, without saving)\n"


@contextlib.contextmanager
def stop_flag():
  """A StopFlag set when SIGTERM or SIGINT (Ctrl-C) arrives while the block runs (handled
  in the main thread only; elsewhere the flag never sets and both signals keep their
  handlers). The first Ctrl-C prints a note at once (the step may take a while) and gives
  SIGINT back its default, so that a second one raises KeyboardInterrupt wherever the
  program is (even in the save: that checkpoint is then left half-written, and the next
  run reports it and resumes from the previous one)."""
  flag = StopFlag()
  if threading.current_thread() is not threading.main_thread():
    yield flag
    return

  def handler(signum, frame):
    del frame
    if not flag.is_set():
      flag.signum = signum
      flag.set()
    if signum == signal.SIGINT:
      os.write(2, CTRL_C_NOTE)
      signal.signal(signal.SIGINT, signal.default_int_handler)

  previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield flag
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


def stopped(flag: StopFlag, step: int) -> Preempted:
  """The exception a loop that saved `step` after `flag` was set raises: Interrupted for
  Ctrl-C, else Preempted (SIGTERM here, or on another process of the job)."""
  return Interrupted(step) if flag.signum == signal.SIGINT else Preempted(step)


def _any_process(*flags: bool) -> tuple[bool, ...]:
  """Each flag True on every process when it is True on any (all processes stop
  together). A collective: every process must call it at the same steps."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  gathered = multihost_utils.process_allgather(np.asarray(flags))  # [processes, flags]
  return tuple(bool(x) for x in np.any(np.reshape(gathered, (-1, len(flags))), axis=0))


def stop_signals(sigterm: threading.Event, check_saves, done: int, sync: bool):
  """(SIGTERM or SIGINT arrived, a failed save's exception or None) after step `done`.
  One process looks every step (without waiting for a save); several agree at the sync
  steps only, so that the hot path has no per-step collective."""
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
