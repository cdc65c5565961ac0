"""Batches: the training stream and the evaluation windows as grain MapDatasets.

Training batches form a MapDataset indexed by step: batch i is a pure function of
(seed, i), with fresh window offsets every epoch, so a resumed run reads the same batches.
Evaluation batches slide over the intervals of the split without unit dropout and carry
what stitching needs (stitching.py).

Multi-host: with `rows` (a slice of the global batch, mtm_jax.parallel.mesh.process_rows),
a process builds only those rows of every batch, bit for bit the same as the rows of the
global batch: the windows and their random draws depend only on the row's position in the
global batch, and the bucket is the one of the whole global batch (chosen from the token
counts of the other rows, `tokens.token_count`, which build no tokens), so every process
compiles the same shapes.
"""

from __future__ import annotations

import sys
from typing import Sequence

import grain
import numpy as np

from mtm_jax.datasets.events import buckets as buckets_lib
from mtm_jax.datasets.events import tokens as tokens_lib
from mtm_jax.datasets.events import windows as windows_lib


class _TrainingWindows:
  """Window g of the infinite training stream (epoch = g // windows_per_epoch).

  Each interval of duration D yields n = max(1, floor(D / L)) back-to-back windows per
  epoch, shifted by a fresh random offset in [0, D - n L] every epoch; the windows of an
  epoch are visited in a fresh random order. Everything is drawn from (seed, epoch, ...)."""

  def __init__(self, data: windows_lib.EventData, seed: int):
    self.data, self.seed = data, seed
    length = data.config.window_length
    durations = data.intervals[:, 2] - data.intervals[:, 1]
    self.counts = np.maximum(1, np.floor(durations / length + 1e-9).astype(np.int64))  # [N]
    self.slack = np.maximum(0.0, durations - self.counts * length)  # [N]
    self.first = np.concatenate([[0], np.cumsum(self.counts)])  # [N + 1]
    self.per_epoch = int(self.first[-1])

  def starts(self, gs: Sequence[int]) -> list[tuple[int, float, float]]:
    """(session position, window start, interval end) of each window g in gs."""
    out, orders = [], {}
    for g in gs:
      epoch, pos = divmod(int(g), self.per_epoch)
      if epoch not in orders:
        orders[epoch] = np.random.default_rng([self.seed, 0, epoch]).permutation(self.per_epoch)
      w = orders[epoch][pos]
      k = int(np.searchsorted(self.first, w, side="right") - 1)
      offset = 0.0
      if self.slack[k] > 0:
        offset = np.random.default_rng([self.seed, 1, epoch, k]).uniform(0.0, self.slack[k])
      session, a, b = self.data.intervals[k]
      out.append((int(session), float(a + offset + (w - self.first[k]) * self.data.config.window_length), float(b)))
    return out

  def windows(self, gs: Sequence[int]) -> list[tokens_lib.Window]:
    return self.build(gs, None)[0]

  def build(self, gs: Sequence[int], rows: slice | None) -> tuple[list[tokens_lib.Window], int]:
    """The windows of `rows` of the batch of windows gs (all of them when rows is None) and
    the most tokens any window of gs holds."""
    dropout = self.data.config.unit_dropout is not None
    starts = self.starts(gs)

    def args(j):
      session, start, end = starts[j]
      return self.data, session, start, end, np.random.default_rng([self.seed, 2, int(gs[j])]), dropout

    return _build_rows(
      len(gs),
      _row_range(len(gs), rows),
      lambda j: tokens_lib.make_window(*args(j)),
      lambda j: tokens_lib.token_count(*args(j)),
    )


def _row_range(n_rows: int, rows: slice | None) -> range:
  """The rows of a batch of n_rows that `rows` selects (all of them when None)."""
  return range(n_rows) if rows is None else range(n_rows)[rows]


def _build_rows(n_rows: int, mine: range, make, count) -> tuple[list, int]:
  """([make(j) for j in mine], the most tokens of any row j < n_rows), counting the rows
  not made with count(j) (a None made row holds no tokens)."""
  made = [make(j) for j in mine]
  others = sorted(set(range(n_rows)) - set(mine))
  n = max([len(w.unit_index) for w in made if w is not None] + [count(j) for j in others] + [1])
  return made, n


class _TrainingBatch:
  """Batch i of the training stream: windows i*B ... i*B + B - 1 (only `rows` of them)."""

  def __init__(self, data: windows_lib.EventData, batch_size: int, seed: int, rows: slice | None = None):
    self.windows, self.batch_size, self.data, self.rows = _TrainingWindows(data, seed), batch_size, data, rows

  def __call__(self, i: int) -> dict[str, np.ndarray]:
    b = self.batch_size
    made, n_tokens = self.windows.build(range(int(i) * b, (int(i) + 1) * b), self.rows)
    return tokens_lib.collate(made, self.data, n_tokens)


def training_batches(
  data: windows_lib.EventData, batch_size: int, seed: int, rows: slice | None = None
) -> grain.MapDataset:
  """Infinite MapDataset of batches (see tokens.BATCH_KEYS); batch i depends only on (seed, i).

  rows: the rows of each global batch of batch_size this process builds (multi-host,
  mtm_jax.parallel.mesh.process_rows); they are those rows of the global batch, bit for bit,
  padded to its bucket. Iterate from a step with mtm_jax.datasets.pipeline.iterate_from(ds, step)."""
  if batch_size < 1:
    raise ValueError(f"batch size must be >= 1, got {batch_size}")
  return grain.MapDataset.range(sys.maxsize).map(_TrainingBatch(data, batch_size, seed, rows))


def token_length_report(data: windows_lib.EventData, batch_size: int, seed: int, n_batches: int) -> dict:
  """How the first n_batches training batches use the buckets.

  Returns bucket_counts {bucket: batches}, truncated_windows (windows that lost spikes to fit
  the largest bucket), dropped_spikes, max_tokens (before truncation) and windows."""
  stream = _TrainingWindows(data, seed)
  buckets = {int(b): 0 for b in data.config.bucket_lengths}
  truncated = dropped = longest = 0
  for i in range(n_batches):
    windows = stream.windows(range(i * batch_size, (i + 1) * batch_size))
    n = max(len(w.unit_index) for w in windows)
    buckets[buckets_lib.bucket_length(n, data.config.bucket_lengths)] += 1
    truncated += sum(w.dropped_spikes > 0 for w in windows)
    dropped += sum(w.dropped_spikes for w in windows)
    longest = max([longest] + [len(w.unit_index) + w.dropped_spikes for w in windows])
  return dict(
    bucket_counts=buckets,
    truncated_windows=int(truncated),
    dropped_spikes=int(dropped),
    max_tokens=int(longest),
    windows=n_batches * batch_size,
  )


def evaluation_batches(data: windows_lib.EventData, batch_size: int, rows: slice | None = None) -> grain.MapDataset:
  """MapDataset of (batch, meta) over the sliding windows, without unit dropout.

  batch: see tokens.BATCH_KEYS (the last batch is padded with all-padding rows). meta:
    session_position [B] int32 position in data.sessions (-1 on padding rows),
    window_start [B] float64 absolute start time of each window (seconds),
    behaviour_index [B, Q] int64 index into the session's behaviour arrays (-1 on padding),
    dropped_spikes [B] int32 spikes dropped to fit the largest bucket.
  rows: the rows of each global batch of batch_size this process builds (see
  training_batches); batch and meta then hold only those rows."""
  windows = windows_lib.evaluation_windows(data)

  def make_batch(i):
    placed = windows[i * batch_size : (i + 1) * batch_size]

    def args(j):
      s, a, b = placed[j]
      return data, int(s), float(a), float(b), np.random.default_rng([0, 3, i * batch_size + j]), False

    def make(j):  # rows past the last window are padding
      return tokens_lib.make_window(*args(j)) if j < len(placed) else None

    def count(j):
      return tokens_lib.token_count(*args(j)) if j < len(placed) else 0

    mine = _row_range(batch_size, rows)
    made, n_tokens = _build_rows(batch_size, mine, make, count)
    meta = dict(
      session_position=np.full(len(mine), -1, np.int32),
      window_start=np.zeros(len(mine), np.float64),
      behaviour_index=np.full((len(mine), data.max_outputs), -1, np.int64),
      dropped_spikes=np.zeros(len(mine), np.int32),
    )
    for r, (j, w) in enumerate(zip(mine, made)):
      if w is None:
        continue
      meta["session_position"][r], meta["window_start"][r] = int(placed[j][0]), placed[j][1]
      meta["behaviour_index"][r, : len(w.behaviour_index)] = w.behaviour_index
      meta["dropped_spikes"][r] = w.dropped_spikes
    return tokens_lib.collate(made, data, n_tokens), meta

  n_batches = -(-len(windows) // batch_size)
  return grain.MapDataset.range(n_batches).map(make_batch)
