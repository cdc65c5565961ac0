"""Tokens: token types, batch keys, the tokens of one window and padding to a bucket (collate).

One token per spike plus a start (t=0) and an end (t=L) token per unit kept, and one
output query per behaviour timestamp of the window. Batches are padded to one of a few
fixed token lengths (buckets) so XLA compiles a bounded number of shapes.

A batch is a dict (B windows, L tokens, Q output queries, D behaviour dimensions):
  unit_index [B, L] int32, timestamps [B, L] float32, token_type [B, L] int32,
  input_mask [B, L] bool (INPUT_KEYS); session_index [B] int32;
  output_timestamps, output_task, output_mask [B, Q] (QUERY_KEYS): what the model reads
  (MODEL_KEYS); output_values [B, Q, D] float32 and output_weights [B, Q] float32
  (TARGET_KEYS): what the loss reads.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from mtm_jax.datasets.events import buckets as buckets_lib
from mtm_jax.datasets.events import windows as windows_lib

# Token types of the input sequence.
SPIKE, START, END = 0, 1, 2

INPUT_KEYS = ("unit_index", "timestamps", "token_type", "input_mask")  # [B, L]
QUERY_KEYS = ("output_timestamps", "output_task", "output_mask")  # [B, Q]
MODEL_KEYS = INPUT_KEYS + ("session_index",) + QUERY_KEYS  # what the model reads
TARGET_KEYS = ("output_values", "output_weights")  # [B, Q, D], [B, Q]: what the loss reads
BATCH_KEYS = MODEL_KEYS + TARGET_KEYS


@dataclasses.dataclass(frozen=True)
class Window:
  """The tokens and output queries of one window (unpadded)."""

  unit_index: np.ndarray  # [n] int32 vocabulary rows
  timestamps: np.ndarray  # [n] float32 seconds from the window start
  token_type: np.ndarray  # [n] int32 SPIKE / START / END
  output_timestamps: np.ndarray  # [q] float32 seconds from the window start
  output_values: np.ndarray  # [q, D] float32, divided by the scale
  output_weights: np.ndarray  # [q] float32
  behaviour_index: np.ndarray  # [q] int64 index into the session's behaviour arrays
  session_row: int
  dropped_spikes: int  # spikes dropped to fit the largest bucket


def _kept_spikes(
  data: windows_lib.EventData,
  session_position: int,
  start: float,
  stop: float,
  rng: np.random.Generator,
  unit_dropout: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
  """The units a window keeps (unit dropout draws from `rng`) and their spikes in [start, stop):
  keep [k] sorted unit indices, times [s], units [s], and room: the spike tokens the largest
  bucket has left beside the 2 k start/end tokens."""
  s = data.sessions[session_position]
  n_units = len(s.unit_ids)
  keep = np.arange(n_units)
  if unit_dropout:
    k = windows_lib.sample_unit_count(rng, n_units, data.config.unit_dropout)
    keep = np.sort(rng.choice(n_units, size=k, replace=False))
  kept = np.zeros(n_units, bool)
  kept[keep] = True
  lo, hi = np.searchsorted(s.spike_times, [start, stop], side="left")
  times, units = s.spike_times[lo:hi], s.spike_units[lo:hi]
  on = kept[units]
  return keep, times[on], units[on], data.config.bucket_lengths[-1] - 2 * len(keep)


def token_count(data, session_position: int, start: float, interval_end: float, rng, unit_dropout: bool) -> int:
  """len(make_window(...).unit_index) for the same arguments (data: an EventData; rng: a
  np.random.Generator in the same state), without building the tokens: what a process
  needs of the rows of a batch that it does not build, to pad its own rows to the bucket
  of the whole batch."""
  stop = min(start + data.config.window_length, interval_end)
  keep, times, _, room = _kept_spikes(data, session_position, start, stop, rng, unit_dropout)
  return 2 * len(keep) + min(len(times), room)


def make_window(
  data: windows_lib.EventData,
  session_position: int,
  start: float,
  interval_end: float,
  rng: np.random.Generator,
  unit_dropout: bool,
) -> Window:
  """Tokens of [start, min(start + L, interval_end)) of a session (L = window length).

  Start tokens (t=0) and end tokens (t=L) for every kept unit, spike tokens in time order
  between them. A window needing more tokens than the largest bucket keeps a random
  subset of its spikes (all start/end tokens stay) and reports how many it dropped."""
  s = data.sessions[session_position]
  length = data.config.window_length
  stop = min(start + length, interval_end)
  keep, times, units, room = _kept_spikes(data, session_position, start, stop, rng, unit_dropout)
  dropped = max(0, len(times) - room)
  if dropped:
    chosen = np.sort(rng.choice(len(times), size=room, replace=False))
    times, units = times[chosen], units[chosen]
  rows = data.vocab.unit_rows(s.session_id)
  k = len(keep)
  unit_index = np.concatenate([rows[keep], rows[units], rows[keep]]).astype(np.int32)
  timestamps = np.concatenate([np.zeros(k), times - start, np.full(k, length)]).astype(np.float32)
  token_type = np.concatenate([np.full(k, START), np.full(len(times), SPIKE), np.full(k, END)]).astype(np.int32)

  blo, bhi = np.searchsorted(s.behaviour_timestamps, [start, stop], side="left")
  return Window(
    unit_index=unit_index,
    timestamps=timestamps,
    token_type=token_type,
    output_timestamps=(s.behaviour_timestamps[blo:bhi] - start).astype(np.float32),
    output_values=(np.asarray(s.behaviour_values[blo:bhi], np.float32) / data.scale).astype(np.float32),
    output_weights=np.asarray(s.behaviour_weights[blo:bhi], np.float32),
    behaviour_index=np.arange(blo, bhi, dtype=np.int64),
    session_row=data.vocab.session_row(s.session_id),
    dropped_spikes=int(dropped),
  )


def collate(
  windows: Sequence[Window | None], data: windows_lib.EventData, n_tokens: int | None = None
) -> dict[str, np.ndarray]:
  """Pads windows into one batch (see BATCH_KEYS); None entries become all-padding rows.

  Token arrays are [B, L] with L the smallest bucket holding n_tokens (default: the tokens
  of the longest window; a process building some rows of a batch passes the longest of the
  whole batch); output arrays are [B, Q] with Q = data.max_outputs."""
  n = max([len(w.unit_index) for w in windows if w is not None] + [1]) if n_tokens is None else n_tokens
  length = buckets_lib.bucket_length(n, data.config.bucket_lengths)
  b, q, d = len(windows), data.max_outputs, data.n_dims
  out = dict(
    unit_index=np.zeros((b, length), np.int32),
    timestamps=np.zeros((b, length), np.float32),
    token_type=np.zeros((b, length), np.int32),
    input_mask=np.zeros((b, length), bool),
    session_index=np.zeros((b,), np.int32),
    output_timestamps=np.zeros((b, q), np.float32),
    output_values=np.zeros((b, q, d), np.float32),
    output_weights=np.zeros((b, q), np.float32),
    output_task=np.zeros((b, q), np.int32),
    output_mask=np.zeros((b, q), bool),
  )
  for i, w in enumerate(windows):
    if w is None:
      continue
    n, m = len(w.unit_index), len(w.output_timestamps)
    if m > q:
      raise ValueError(f"a window holds {m} behaviour samples, more than max_outputs={q}")
    out["unit_index"][i, :n] = w.unit_index
    out["timestamps"][i, :n] = w.timestamps
    out["token_type"][i, :n] = w.token_type
    out["input_mask"][i, :n] = True
    out["session_index"][i] = w.session_row
    out["output_timestamps"][i, :m] = w.output_timestamps
    out["output_values"][i, :m] = w.output_values
    out["output_weights"][i, :m] = w.output_weights
    out["output_mask"][i, :m] = True
  return out
