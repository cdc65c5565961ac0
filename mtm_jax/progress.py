"""Progress lines of a long computation: one line when a stage ends, with its elapsed time,
and for a stage of countable parts (masks, chunks, batches) at most one line every
`every` seconds while it runs, with the parts done and an estimate of the time left.

  with progress.Stage("co_smoothing") as stage:
    for i in range(n):
      ...
      stage.update(i + 1, n, "chunks")
    stage.note = f"{bps:.4f} bps"
  # co_smoothing: 120/1140 chunks after 10 s, about 85 s left
  # co_smoothing: 0.2134 bps (95.2 s)

The lines go to absl's INFO (the programs show this project's INFO lines by default);
`clock` and `log` are parameters so that tests can drive a stage with a fake clock.
"""

from __future__ import annotations

import time
from typing import Callable

from absl import logging


def seconds(t: float) -> str:
  """'4.2 s', '95 s', '3 min 20 s', '1 h 05 min' of a duration in seconds."""
  if t < 10:
    return f"{t:.1f} s"
  if t < 100:
    return f"{t:.0f} s"
  if t < 3600:
    m, s = divmod(int(round(t)), 60)
    return f"{m} min {s:02d} s"
  h, m = divmod(int(round(t)) // 60, 60)
  return f"{h} h {m:02d} min"


class Stage:
  """One stage of a computation (a context manager): `update` while it runs, its end line
    when the block ends without an error (or at `finish`): "<name>: <note> (<elapsed>)",
  the note "done" unless set (e.g. to the stage's score)."""

  def __init__(
    self,
    name: str,
    *,
    clock: Callable[[], float] = time.monotonic,
    log: Callable[..., None] = logging.info,
    every: float = 10.0,
  ):
    self.name, self.note = name, ""
    self._clock, self._log, self._every = clock, log, every
    self._start = clock()
    self._last = self._start  # when the last line was written
    self._finished = False

  def elapsed(self) -> float:
    return self._clock() - self._start

  def update(self, done: int, total: int, unit: str = "parts") -> None:
    """`done` of `total` parts are done: writes a line with the estimated time left when
    `every` seconds have passed since the stage began or its last line (none at the end)."""
    now = self._clock()
    if now - self._last < self._every or done >= total or done <= 0:
      return
    self._last = now
    elapsed = now - self._start
    left = elapsed * (total - done) / done
    self._log("%s: %d/%d %s after %s, about %s left", self.name, done, total, unit, seconds(elapsed), seconds(left))

  def finish(self) -> float:
    """Writes the end line (once) and returns the elapsed seconds."""
    elapsed = self.elapsed()
    if not self._finished:
      self._finished = True
      self._log("%s: %s (%s)", self.name, self.note or "done", seconds(elapsed))
    return elapsed

  def __enter__(self) -> Stage:
    return self

  def __exit__(self, kind, value, traceback) -> None:
    if kind is None:
      self.finish()
