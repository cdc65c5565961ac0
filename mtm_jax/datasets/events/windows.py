"""Windows: how they are cut (WindowConfig) and one split of sessions ready to cut (EventData).

POYO reads windows of L = 1 s inside the intervals of a split (never across them).
Training windows tile each interval with a fresh offset every epoch (batches.py);
evaluation windows slide by eval_step seconds and the last one ends at the interval's end
(`evaluation_windows`), so every behaviour timestamp is covered.

`prepare` grows the token buckets from the data, as trials.prepare does for trials: past
the largest of WindowConfig.bucket_lengths, up the ladder (buckets.grow_buckets) to the
rung that holds the longest window the split can have (`longest_window`), so no window
loses spikes; WindowConfig.max_tokens (> 0, config.data.max_tokens) caps that, a split
with a longer window being an error naming it.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from mtm_jax.datasets.events import buckets as buckets_lib
from mtm_jax.datasets.events import session as session_lib
from mtm_jax.datasets.events import vocabulary as vocabulary_lib


@dataclasses.dataclass(frozen=True)
class WindowConfig:
  """How windows are cut, augmented, tokenised and padded."""

  window_length: float = 1.0  # seconds
  bucket_lengths: tuple[int, ...] = (512, 1024, 2048, 4096)  # token lengths a batch is padded to (grown by prepare)
  max_tokens: int = 0  # > 0: the most tokens a window may have (config.data.max_tokens); 0: no cap
  unit_dropout: tuple[int, int, int] | None = (30, 100, 300)  # (min, mode, max) units kept; None keeps all
  max_outputs: int | None = None  # output queries per window; None: the most any window of the split needs
  eval_step: float = 0.5  # seconds between evaluation windows


@dataclasses.dataclass(frozen=True)
class EventData:
  """One split of one or more sessions, ready to be cut into windows.

  scale: [D] float32 divisor of the behaviour values (std over the training split); multiply
  predictions by it to get the original units. max_outputs: Q, output queries per window."""

  sessions: tuple[session_lib.EventSession, ...]
  split: str
  vocab: vocabulary_lib.Vocabulary
  scale: np.ndarray
  max_outputs: int
  config: WindowConfig
  intervals: np.ndarray  # [N, 3] float64 (session position, start, end), in session then time order

  @property
  def n_dims(self) -> int:
    return int(self.scale.shape[0])


def max_outputs_needed(sessions: Sequence[session_lib.EventSession], split: str, window_length: float) -> int:
  """The most behaviour timestamps any [t, t + window_length) window inside `split` holds
  (counted over [t, t + window_length + 1 us) so that rounding never makes it too small)."""
  best = 1
  for s in sessions:
    for a, b in s.splits[split]:
      stamps = session_lib.interval_data(s, a, b)["behaviour_timestamps"]
      if len(stamps):
        ends = np.searchsorted(stamps, stamps + window_length + 1e-6, side="left")
        best = max(best, int(np.max(ends - np.arange(len(stamps)))))
  return best


def longest_window(
  sessions: Sequence[session_lib.EventSession], split: str, config: WindowConfig
) -> tuple[int, int, float]:
  """(tokens, session position, start) of the window of `split` with the most tokens:
  2 per unit (at most the unit-dropout maximum) and the spikes of the busiest
  [t, t + window_length) inside an interval (counted over an extra 1 us, as
  max_outputs_needed). Exact for evaluation windows (every unit, any start) and an
  upper bound for training ones (random offsets and unit dropout)."""
  best = (0, 0, 0.0)
  for i, s in enumerate(sessions):
    units = len(s.unit_ids) if config.unit_dropout is None else min(len(s.unit_ids), config.unit_dropout[2])
    for a, b in s.splits[split]:
      lo, hi = np.searchsorted(s.spike_times, [a, b], side="left")
      times = np.asarray(s.spike_times[lo:hi], np.float64)
      counts = np.searchsorted(times, times + config.window_length + 1e-6, side="left") - np.arange(len(times))
      busiest = int(np.argmax(counts)) if len(times) else 0
      n = 2 * units + (int(counts[busiest]) if len(times) else 0)
      if n > best[0]:
        best = (n, i, float(times[busiest]) if len(times) else float(a))
  return best


def prepare(
  sessions: Sequence[session_lib.EventSession],
  split: str,
  config: WindowConfig = WindowConfig(),
  vocab: vocabulary_lib.Vocabulary | None = None,
  scale: np.ndarray | None = None,
) -> EventData:
  """Checks the sessions and collects the intervals of `split`.

  vocab defaults to the vocabulary of `sessions`; scale to their training-split std. The
  returned config's buckets are config.bucket_lengths grown to hold the longest window
  (see the module docstring); ValueError naming it when it has more than config.max_tokens
  (> 0)."""
  if split not in session_lib.SPLITS:
    raise ValueError(f"split must be one of {list(session_lib.SPLITS)}, got {split!r}")
  if not sessions:
    raise ValueError("prepare: no sessions given")
  if sorted(config.bucket_lengths) != list(config.bucket_lengths) or min(config.bucket_lengths) < 1:
    raise ValueError(f"WindowConfig.bucket_lengths must be positive and increasing, got {config.bucket_lengths}")
  if config.unit_dropout is not None:
    lo, mode, hi = config.unit_dropout
    if not 1 <= lo <= mode <= hi:
      raise ValueError(
        f"WindowConfig.unit_dropout must be (min, mode, max) with 1 <= min <= mode <= max, got {config.unit_dropout}"
      )
  sessions = tuple(sessions)
  vocab = vocabulary_lib.build_vocabulary(sessions) if vocab is None else vocab.extend(sessions)
  dims = {int(np.shape(s.behaviour_values)[1]) for s in sessions}
  if len(dims) != 1:
    raise ValueError(f"prepare: sessions have behaviours of different dimensions {sorted(dims)}")
  rows = []
  for i, s in enumerate(sessions):
    if split not in s.splits:
      raise ValueError(f"session {s.session_id!r}: no split {split!r}; it has {sorted(s.splits)}")
    for a, b in s.splits[split]:
      rows.append((i, a, b))
  if not rows:
    raise ValueError(f"split {split!r} has no intervals in any session")
  scale = session_lib.behaviour_scale(sessions) if scale is None else np.asarray(scale, np.float32)
  if scale.shape != (dims.pop(),):
    raise ValueError(f"prepare: scale must have one entry per behaviour dimension, got shape {scale.shape}")
  needed = max_outputs_needed(sessions, split, config.window_length)
  if config.max_outputs is not None and config.max_outputs < needed:
    raise ValueError(
      f"WindowConfig.max_outputs={config.max_outputs} is too small: a window of split {split!r} "
      f"holds up to {needed} behaviour samples"
    )
  tokens, position, start = longest_window(sessions, split, config)
  where = f"session {sessions[position].session_id!r} has a window of split {split!r} (from {start:.3f} s)"
  grown = buckets_lib.fit_buckets(config.bucket_lengths, tokens, config.max_tokens, where, "window")
  return EventData(
    sessions=sessions,
    split=split,
    vocab=vocab,
    scale=scale,
    max_outputs=needed if config.max_outputs is None else config.max_outputs,
    config=dataclasses.replace(config, bucket_lengths=grown),
    intervals=np.array(rows, np.float64),
  )


def sample_unit_count(rng: np.random.Generator, n_units: int, bounds: tuple[int, int, int] | None) -> int:
  """Units kept by unit dropout: round(Triangular(min, mode, max)), capped at n_units."""
  if bounds is None:
    return n_units
  lo, mode, hi = bounds
  k = lo if lo == hi else int(np.clip(np.round(rng.triangular(lo, mode, hi)), lo, hi))
  return min(k, n_units)


def evaluation_windows(data: EventData) -> np.ndarray:
  """[W, 3] float64 (session position, window start, interval end) of the sliding windows.

  Windows of length L start every eval_step seconds inside each interval of the split; the
  last one ends at the interval's end, so every timestamp is covered. An interval shorter
  than L gets one window (its tokens and queries stop at the interval's end)."""
  length, step = data.config.window_length, data.config.eval_step
  if step <= 0:
    raise ValueError(f"WindowConfig.eval_step must be > 0, got {step}")
  rows = []
  for session, a, b in data.intervals:
    starts = [a]
    if b - a > length + 1e-9:
      n = int(np.ceil((b - a - length) / step - 1e-9))
      starts = list(a + step * np.arange(n)) + [b - length]
    rows += [(session, s, b) for s in starts]
  return np.array(rows, np.float64)
