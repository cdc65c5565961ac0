"""Event-tokenised spiking data for POYO: the session schema, windows, tokens and batches.

A session (host only, NumPy) is a dict:
  session_id            str, unique across sessions (it prefixes the unit ids)
  spike_times           [S] float64 seconds, sorted
  spike_units           [S] int32, index into the units of each spike
  unit_ids              [U] str, unique across sessions
  unit_regions          [U] str, brain region of each unit ("unknown" when not recorded)
  behaviour_name        str, e.g. "hand_vel"; "a,b" names each of D = 2 dimensions (output_names)
  behaviour_timestamps  [T] float64 seconds, strictly increasing
  behaviour_values      [T, D] float32
  behaviour_weights     [T] float32 >= 0, loss weight per timestamp (e.g. reach 5.0, hold 0.1)
  trial_starts, trial_ends  [K] float64, sorted, non-overlapping [start, end) trials
  splits                {"train"|"val"|"test": [n, 2] float64} sorted, disjoint [start, end)

Extra keys are allowed and ignored. POYO reads 1 s windows inside the intervals of a split
(never across them): one token per spike plus a start and an end token per unit, and one
output query per behaviour timestamp. Batches are padded to one of a few fixed token
lengths (buckets) so XLA compiles a bounded number of shapes. See docs/event_data.md.

Training batches form a grain `MapDataset` indexed by step: batch i is a pure function of
(seed, i), with fresh window offsets every epoch, so a resumed run reads the same batches.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Sequence

import grain
import numpy as np

from mtm_jax.datasets import provenance
from mtm_jax.datasets import schema

SPLITS = ("train", "val", "test")
SESSION_FIELDS = ("session_id", "spike_times", "spike_units", "unit_ids", "unit_regions", "behaviour_name",
                  "behaviour_timestamps", "behaviour_values", "behaviour_weights", "trial_starts",
                  "trial_ends", "splits")

# Token types of the input sequence.
SPIKE, START, END = 0, 1, 2

BATCH_KEYS = ("unit_index", "timestamps", "token_type", "input_mask", "session_index", "output_timestamps",
              "output_values", "output_weights", "output_task", "output_mask")


# ------------------------------------------------------------------------------------------
# Schema
# ------------------------------------------------------------------------------------------


def split_intervals(trial_starts: np.ndarray, trial_ends: np.ndarray, seed: int = 0,
                    fractions=schema.SPLIT_FRACTIONS) -> dict[str, np.ndarray]:
  """Trials drawn into train/val/test (70/10/20 by default) with a fixed seed.

  Returns {split: [n, 2] float64 [start, end) intervals, sorted by start}."""
  starts, ends = np.asarray(trial_starts, np.float64), np.asarray(trial_ends, np.float64)
  parts = schema.split_trials(len(starts), seed=seed, fractions=fractions)
  return {name: np.stack([starts[idx], ends[idx]], axis=1).reshape(-1, 2) for name, idx in parts.items()}


def _check_intervals(intervals, where: str, name: str) -> np.ndarray:
  """[n, 2] float64 intervals, finite, start < end, sorted and non-overlapping."""
  iv = schema.field_array({name: intervals}, name, where, np.float64)
  if iv.ndim != 2 or iv.shape[1] != 2:
    raise ValueError(f"{where}: {name} must be [n, 2] (start, end) intervals, got shape {iv.shape}")
  if not np.all(np.isfinite(iv)):
    raise ValueError(f"{where}: {name} has non-finite interval bounds")
  bad = np.flatnonzero(iv[:, 1] <= iv[:, 0])
  if len(bad):
    raise ValueError(f"{where}: {name} interval {bad[0]} is inverted or empty: "
                     f"start {iv[bad[0], 0]} >= end {iv[bad[0], 1]}")
  if np.any(np.diff(iv[:, 0]) < 0):
    raise ValueError(f"{where}: {name} intervals are not sorted by start time")
  overlap = np.flatnonzero(iv[1:, 0] < iv[:-1, 1])
  if len(overlap):
    k = overlap[0]
    raise ValueError(f"{where}: {name} intervals {k} [{iv[k, 0]}, {iv[k, 1]}) and {k + 1} "
                     f"[{iv[k + 1, 0]}, {iv[k + 1, 1]}) overlap")
  return iv


def validate_event_session(session: dict, where: str) -> None:
  """Raises ValueError naming `where` and the field when an event session is malformed."""
  missing = [k for k in SESSION_FIELDS if k not in session]
  if missing:
    raise ValueError(f"{where}: missing fields {missing}")
  if not isinstance(session["session_id"], str) or not session["session_id"]:
    raise ValueError(f"{where}: 'session_id' must be a non-empty string, got {session['session_id']!r}")
  unit_ids, regions = schema.field_array(session, "unit_ids", where), schema.field_array(session, "unit_regions", where)
  if unit_ids.ndim != 1 or regions.ndim != 1:
    raise ValueError(f"{where}: 'unit_ids' and 'unit_regions' must be 1-D, got shapes {unit_ids.shape}, {regions.shape}")
  n_units = len(unit_ids)
  if n_units == 0:
    raise ValueError(f"{where}: 'unit_ids' is empty (a session needs units)")
  if len(regions) != n_units:
    raise ValueError(f"{where}: 'unit_regions' has {len(regions)} entries for {n_units} units")
  if len(set(unit_ids.tolist())) != n_units:
    raise ValueError(f"{where}: 'unit_ids' are not unique")

  times, units = schema.field_array(session, "spike_times", where), schema.field_array(session, "spike_units", where)
  if times.ndim != 1 or units.ndim != 1:
    raise ValueError(f"{where}: 'spike_times' and 'spike_units' must be 1-D, got shapes {times.shape}, {units.shape}")
  if len(times) != len(units):
    raise ValueError(f"{where}: 'spike_times' has {len(times)} spikes but 'spike_units' has {len(units)}")
  if not np.issubdtype(times.dtype, np.floating):
    raise ValueError(f"{where}: 'spike_times' must be float seconds, got dtype {times.dtype}")
  if not np.all(np.isfinite(times)):
    raise ValueError(f"{where}: 'spike_times' has {int(np.sum(~np.isfinite(times)))} NaN/inf times")
  unsorted = np.flatnonzero(np.diff(times) < 0)
  if len(unsorted):
    raise ValueError(f"{where}: 'spike_times' are not sorted (spike {unsorted[0] + 1} at {times[unsorted[0] + 1]} "
                     f"comes after {times[unsorted[0]]})")
  if len(units) and not np.issubdtype(units.dtype, np.integer):
    raise ValueError(f"{where}: 'spike_units' must be integer unit indices, got dtype {units.dtype}")
  if len(units) and (units.min() < 0 or units.max() >= n_units):
    raise ValueError(f"{where}: 'spike_units' must index the {n_units} units, got range "
                     f"[{units.min()}, {units.max()}]")

  stamps, values, weights = (schema.field_array(session, k, where) for k in
                             ("behaviour_timestamps", "behaviour_values", "behaviour_weights"))
  for name, array in (("behaviour_timestamps", stamps), ("behaviour_values", values), ("behaviour_weights", weights)):
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
      raise ValueError(f"{where}: '{name}' must be numbers, got dtype {array.dtype}")
  if stamps.ndim != 1:
    raise ValueError(f"{where}: 'behaviour_timestamps' must be 1-D, got shape {stamps.shape}")
  if not np.all(np.isfinite(stamps)):
    raise ValueError(f"{where}: 'behaviour_timestamps' has NaN/inf timestamps")
  if np.any(np.diff(stamps) <= 0):
    raise ValueError(f"{where}: 'behaviour_timestamps' must be strictly increasing (sorted, no repeats)")
  if values.ndim != 2 or values.shape[0] != len(stamps) or values.shape[1] == 0:
    raise ValueError(f"{where}: 'behaviour_values' must be [{len(stamps)}, dims], got shape {values.shape}")
  if not np.all(np.isfinite(values)):
    raise ValueError(f"{where}: 'behaviour_values' has NaN/inf values")
  if weights.shape != stamps.shape:
    raise ValueError(f"{where}: 'behaviour_weights' must have shape {stamps.shape}, got {weights.shape}")
  if not np.all(np.isfinite(weights)) or np.any(weights < 0):
    raise ValueError(f"{where}: 'behaviour_weights' must be finite and >= 0")

  starts, ends = (schema.field_array(session, k, where, np.float64) for k in ("trial_starts", "trial_ends"))
  if starts.shape != ends.shape or starts.ndim != 1:
    raise ValueError(f"{where}: 'trial_starts' {starts.shape} and 'trial_ends' {ends.shape} must be 1-D, same length")
  _check_intervals(np.stack([starts, ends], axis=1), where, "'trial_starts'/'trial_ends'")

  splits = session["splits"]
  if not isinstance(splits, dict) or not splits:
    raise ValueError(f"{where}: 'splits' must be a non-empty dict {{split: [n, 2] intervals}}")
  unknown = sorted(set(splits) - set(SPLITS))
  if unknown:
    raise ValueError(f"{where}: 'splits' has unknown names {unknown}; expected a subset of {list(SPLITS)}")
  for name, iv in splits.items():
    _check_intervals(iv, where, f"split {name!r}")
  combined = np.concatenate([schema.field_array(splits, name, where, np.float64).reshape(-1, 2) for name in splits])
  _check_intervals(combined[np.argsort(combined[:, 0], kind="stable")], where, "'splits' (all splits together)")


def interval_data(session: dict, start: float, end: float) -> dict[str, np.ndarray]:
  """The spikes and behaviour samples of one [start, end) interval (views, in time order).

  Returns spike_times [s], spike_units [s], behaviour_timestamps [t], behaviour_values [t, D],
  behaviour_weights [t]."""
  times, stamps = session["spike_times"], session["behaviour_timestamps"]
  lo, hi = np.searchsorted(times, [start, end], side="left")
  blo, bhi = np.searchsorted(stamps, [start, end], side="left")
  return dict(
      spike_times=times[lo:hi],
      spike_units=session["spike_units"][lo:hi],
      behaviour_timestamps=stamps[blo:bhi],
      behaviour_values=session["behaviour_values"][blo:bhi],
      behaviour_weights=session["behaviour_weights"][blo:bhi],
  )


def restrict_to_splits(session: dict, names: Sequence[str]) -> dict:
  """The session holding only the data inside the intervals of the `names` splits."""
  missing = [n for n in names if n not in session["splits"]]
  if missing:
    raise ValueError(f"session {session['session_id']!r}: no splits {missing}; it has {sorted(session['splits'])}")
  intervals = np.concatenate([np.asarray(session["splits"][n], np.float64).reshape(-1, 2) for n in names])
  intervals = intervals[np.argsort(intervals[:, 0], kind="stable")]
  parts = [interval_data(session, s, e) for s, e in intervals]
  out = dict(session)
  for key in ("spike_times", "spike_units", "behaviour_timestamps", "behaviour_values", "behaviour_weights"):
    out[key] = np.concatenate([p[key] for p in parts]) if parts else session[key][:0]
  out["splits"] = {n: session["splits"][n] for n in names}
  return out


# ------------------------------------------------------------------------------------------
# Global vocabulary of units and sessions
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """Embedding rows of units and sessions: row 0 is padding, then sessions in order.

  Unit row of unit u of session s = 1 + (units of the sessions before s) + u; session row
  of s = 1 + its position. New sessions (fine-tuning) are appended with `extend`."""

  session_ids: tuple[str, ...]
  session_unit_counts: tuple[int, ...]
  unit_ids: tuple[str, ...]

  @property
  def n_unit_rows(self) -> int:
    return 1 + len(self.unit_ids)

  @property
  def n_session_rows(self) -> int:
    return 1 + len(self.session_ids)

  def session_row(self, session_id: str) -> int:
    if session_id not in self.session_ids:
      raise ValueError(f"vocabulary: unknown session {session_id!r}; it has {len(self.session_ids)} sessions")
    return 1 + self.session_ids.index(session_id)

  def unit_rows(self, session_id: str) -> np.ndarray:
    """[U] int32 embedding rows of the session's units, in the session's unit order."""
    i = self.session_row(session_id) - 1
    offset = 1 + sum(self.session_unit_counts[:i])
    return np.arange(offset, offset + self.session_unit_counts[i], dtype=np.int32)

  def extend(self, sessions: Sequence[dict]) -> Vocabulary:
    """This vocabulary with the sessions it does not hold yet appended (in order)."""
    ids, counts, units = list(self.session_ids), list(self.session_unit_counts), list(self.unit_ids)
    for s in sessions:
      if s["session_id"] in ids:
        i = ids.index(s["session_id"])
        offset = sum(counts[:i])
        if tuple(units[offset : offset + counts[i]]) != tuple(str(u) for u in s["unit_ids"]):
          raise ValueError(f"vocabulary: session {s['session_id']!r} has different unit ids than the vocabulary")
        continue
      ids.append(s["session_id"])
      counts.append(len(s["unit_ids"]))
      units.extend(str(u) for u in s["unit_ids"])
    if len(set(units)) != len(units):
      raise ValueError("vocabulary: unit ids are not unique across sessions")
    return Vocabulary(tuple(ids), tuple(counts), tuple(units))

  def to_dict(self) -> dict:
    return dict(session_ids=list(self.session_ids), session_unit_counts=list(self.session_unit_counts),
                unit_ids=list(self.unit_ids))

  @classmethod
  def from_dict(cls, d: dict) -> Vocabulary:
    return cls(tuple(d["session_ids"]), tuple(int(c) for c in d["session_unit_counts"]), tuple(d["unit_ids"]))


def build_vocabulary(sessions: Sequence[dict]) -> Vocabulary:
  """The vocabulary of `sessions`, in the given order."""
  return Vocabulary((), (), ()).extend(sessions)


# ------------------------------------------------------------------------------------------
# Windows, tokens, batches
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WindowConfig:
  """How windows are cut, augmented, tokenised and padded."""

  window_length: float = 1.0  # seconds
  bucket_lengths: tuple[int, ...] = (512, 1024, 2048, 4096)  # token lengths a batch is padded to
  unit_dropout: tuple[int, int, int] | None = (30, 100, 300)  # (min, mode, max) units kept; None keeps all
  max_outputs: int | None = None  # output queries per window; None: the most any window of the split needs
  eval_step: float = 0.5  # seconds between evaluation windows


@dataclasses.dataclass(frozen=True)
class EventData:
  """One split of one or more sessions, ready to be cut into windows.

  scale: [D] float32 divisor of the behaviour values (std over the training split); multiply
  predictions by it to get the original units. max_outputs: Q, output queries per window."""

  sessions: tuple[dict, ...]
  split: str
  vocab: Vocabulary
  scale: np.ndarray
  max_outputs: int
  config: WindowConfig
  intervals: np.ndarray  # [N, 3] float64 (session position, start, end), in session then time order

  @property
  def n_dims(self) -> int:
    return int(self.scale.shape[0])


def behaviour_scale(sessions: Sequence[dict], split: str = "train") -> np.ndarray:
  """[D] float32 standard deviation of the behaviour values inside `split`, pooled over the
  sessions (1 where a dimension is constant)."""
  chunks = []
  for s in sessions:
    if split not in s["splits"]:
      raise ValueError(f"session {s['session_id']!r}: no split {split!r} to compute the behaviour scale from "
                       f"(it has {sorted(s['splits'])}); pass scale= from the training data")
    chunks += [interval_data(s, a, b)["behaviour_values"] for a, b in s["splits"][split]]
  values = np.concatenate(chunks).astype(np.float64) if chunks else np.zeros((0, 1))
  if len(values) == 0:
    raise ValueError(f"split {split!r} holds no behaviour samples to compute the behaviour scale from")
  std = values.std(axis=0)
  return np.where(std > 0, std, 1.0).astype(np.float32)


def output_names(sessions: Sequence[dict]) -> list[str]:
  """Names of the D behaviour dimensions: the comma-separated parts of behaviour_name when
  it names each dimension and every session agrees (IBL: wheel_speed,
  whisker_motion_energy), else dim0 ... dim{D-1}."""
  dims = {int(np.shape(s["behaviour_values"])[1]) for s in sessions}
  named = {tuple(str(s["behaviour_name"]).split(",")) for s in sessions}
  if len(dims) == 1 and len(named) == 1:
    (parts,), (d,) = named, dims
    if len(parts) == d and d > 1 and len(set(parts)) == d and all(parts):
      return list(parts)
  return [f"dim{d}" for d in range(max(dims, default=0))]


def max_outputs_needed(sessions: Sequence[dict], split: str, window_length: float) -> int:
  """The most behaviour timestamps any [t, t + window_length) window inside `split` holds
  (counted over [t, t + window_length + 1 us) so that rounding never makes it too small)."""
  best = 1
  for s in sessions:
    for a, b in s["splits"][split]:
      stamps = interval_data(s, a, b)["behaviour_timestamps"]
      if len(stamps):
        ends = np.searchsorted(stamps, stamps + window_length + 1e-6, side="left")
        best = max(best, int(np.max(ends - np.arange(len(stamps)))))
  return best


def prepare(sessions: Sequence[dict], split: str, config: WindowConfig = WindowConfig(),
            vocab: Vocabulary | None = None, scale: np.ndarray | None = None) -> EventData:
  """Checks the sessions and collects the intervals of `split`.

  vocab defaults to the vocabulary of `sessions`; scale to their training-split std."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
  if not sessions:
    raise ValueError("prepare: no sessions given")
  if sorted(config.bucket_lengths) != list(config.bucket_lengths) or min(config.bucket_lengths) < 1:
    raise ValueError(f"WindowConfig.bucket_lengths must be positive and increasing, got {config.bucket_lengths}")
  if config.unit_dropout is not None:
    lo, mode, hi = config.unit_dropout
    if not 1 <= lo <= mode <= hi:
      raise ValueError(f"WindowConfig.unit_dropout must be (min, mode, max) with 1 <= min <= mode <= max, "
                       f"got {config.unit_dropout}")
  sessions = tuple(sessions)
  vocab = build_vocabulary(sessions) if vocab is None else vocab.extend(sessions)
  dims = {int(np.shape(s["behaviour_values"])[1]) for s in sessions}
  if len(dims) != 1:
    raise ValueError(f"prepare: sessions have behaviours of different dimensions {sorted(dims)}")
  rows = []
  for i, s in enumerate(sessions):
    if split not in s["splits"]:
      raise ValueError(f"session {s['session_id']!r}: no split {split!r}; it has {sorted(s['splits'])}")
    n_units = len(s["unit_ids"])  # evaluation windows keep every unit
    if 2 * n_units > config.bucket_lengths[-1]:
      raise ValueError(f"session {s['session_id']!r}: {n_units} units need {2 * n_units} start/end tokens, more "
                       f"than the largest bucket {config.bucket_lengths[-1]}; raise WindowConfig.bucket_lengths")
    for a, b in s["splits"][split]:
      rows.append((i, a, b))
  if not rows:
    raise ValueError(f"split {split!r} has no intervals in any session")
  scale = behaviour_scale(sessions) if scale is None else np.asarray(scale, np.float32)
  if scale.shape != (dims.pop(),):
    raise ValueError(f"prepare: scale must have one entry per behaviour dimension, got shape {scale.shape}")
  needed = max_outputs_needed(sessions, split, config.window_length)
  if config.max_outputs is not None and config.max_outputs < needed:
    raise ValueError(f"WindowConfig.max_outputs={config.max_outputs} is too small: a window of split {split!r} "
                     f"holds up to {needed} behaviour samples")
  return EventData(sessions=sessions, split=split, vocab=vocab, scale=scale,
                   max_outputs=needed if config.max_outputs is None else config.max_outputs,
                   config=config, intervals=np.array(rows, np.float64))


def sample_unit_count(rng: np.random.Generator, n_units: int, bounds: tuple[int, int, int] | None) -> int:
  """Units kept by unit dropout: round(Triangular(min, mode, max)), capped at n_units."""
  if bounds is None:
    return n_units
  lo, mode, hi = bounds
  k = lo if lo == hi else int(np.clip(np.round(rng.triangular(lo, mode, hi)), lo, hi))
  return min(k, n_units)


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


def make_window(data: EventData, session_position: int, start: float, interval_end: float,
                rng: np.random.Generator, unit_dropout: bool) -> Window:
  """Tokens of [start, min(start + L, interval_end)) of a session (L = window length).

  Start tokens (t=0) and end tokens (t=L) for every kept unit, spike tokens in time order
  between them. A window needing more tokens than the largest bucket keeps a random
  subset of its spikes (all start/end tokens stay) and reports how many it dropped."""
  s = data.sessions[session_position]
  length = data.config.window_length
  stop = min(start + length, interval_end)
  n_units = len(s["unit_ids"])
  keep = np.arange(n_units)
  if unit_dropout:
    k = sample_unit_count(rng, n_units, data.config.unit_dropout)
    keep = np.sort(rng.choice(n_units, size=k, replace=False))
  kept = np.zeros(n_units, bool)
  kept[keep] = True

  lo, hi = np.searchsorted(s["spike_times"], [start, stop], side="left")
  times, units = s["spike_times"][lo:hi], s["spike_units"][lo:hi]
  on = kept[units]
  times, units = times[on], units[on]
  room = data.config.bucket_lengths[-1] - 2 * len(keep)
  dropped = max(0, len(times) - room)
  if dropped:
    chosen = np.sort(rng.choice(len(times), size=room, replace=False))
    times, units = times[chosen], units[chosen]
  rows = data.vocab.unit_rows(s["session_id"])
  k = len(keep)
  unit_index = np.concatenate([rows[keep], rows[units], rows[keep]]).astype(np.int32)
  timestamps = np.concatenate([np.zeros(k), times - start, np.full(k, length)]).astype(np.float32)
  token_type = np.concatenate([np.full(k, START), np.full(len(times), SPIKE), np.full(k, END)]).astype(np.int32)

  blo, bhi = np.searchsorted(s["behaviour_timestamps"], [start, stop], side="left")
  return Window(
      unit_index=unit_index,
      timestamps=timestamps,
      token_type=token_type,
      output_timestamps=(s["behaviour_timestamps"][blo:bhi] - start).astype(np.float32),
      output_values=(np.asarray(s["behaviour_values"][blo:bhi], np.float32) / data.scale).astype(np.float32),
      output_weights=np.asarray(s["behaviour_weights"][blo:bhi], np.float32),
      behaviour_index=np.arange(blo, bhi, dtype=np.int64),
      session_row=data.vocab.session_row(s["session_id"]),
      dropped_spikes=int(dropped),
  )


def bucket_length(n_tokens: int, buckets: Sequence[int]) -> int:
  """The smallest bucket holding n_tokens (the largest if none does)."""
  for b in buckets:
    if n_tokens <= b:
      return int(b)
  return int(buckets[-1])


def collate(windows: Sequence[Window | None], data: EventData) -> dict[str, np.ndarray]:
  """Pads windows into one batch (see BATCH_KEYS); None entries become all-padding rows.

  Token arrays are [B, L] with L the smallest bucket holding the longest window; output
  arrays are [B, Q] with Q = data.max_outputs."""
  n = max([len(w.unit_index) for w in windows if w is not None] + [1])
  length = bucket_length(n, data.config.bucket_lengths)
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


class _TrainingWindows:
  """Window g of the infinite training stream (epoch = g // windows_per_epoch).

  Each interval of duration D yields n = max(1, floor(D / L)) back-to-back windows per
  epoch, shifted by a fresh random offset in [0, D - n L] every epoch; the windows of an
  epoch are visited in a fresh random order. Everything is drawn from (seed, epoch, ...)."""

  def __init__(self, data: EventData, seed: int):
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

  def windows(self, gs: Sequence[int]) -> list[Window]:
    dropout = self.data.config.unit_dropout is not None
    return [make_window(self.data, session, start, end, np.random.default_rng([self.seed, 2, int(g)]), dropout)
            for g, (session, start, end) in zip(gs, self.starts(gs))]


class _TrainingBatch:
  """Batch i of the training stream: windows i*B ... i*B + B - 1."""

  def __init__(self, data: EventData, batch_size: int, seed: int):
    self.windows, self.batch_size, self.data = _TrainingWindows(data, seed), batch_size, data

  def __call__(self, i: int) -> dict[str, np.ndarray]:
    b = self.batch_size
    return collate(self.windows.windows(range(int(i) * b, (int(i) + 1) * b)), self.data)


def training_batches(data: EventData, batch_size: int, seed: int) -> grain.MapDataset:
  """Infinite MapDataset of batches (see BATCH_KEYS); batch i depends only on (seed, i).

  Iterate from a step with mtm_jax.datasets.pipeline.iterate_from(ds, step)."""
  if batch_size < 1:
    raise ValueError(f"batch size must be >= 1, got {batch_size}")
  return grain.MapDataset.range(sys.maxsize).map(_TrainingBatch(data, batch_size, seed))


def token_length_report(data: EventData, batch_size: int, seed: int, n_batches: int) -> dict:
  """How the first n_batches training batches use the buckets.

  Returns bucket_counts {bucket: batches}, truncated_windows (windows that lost spikes to fit
  the largest bucket), dropped_spikes, max_tokens (before truncation) and windows."""
  stream = _TrainingWindows(data, seed)
  buckets = {int(b): 0 for b in data.config.bucket_lengths}
  truncated = dropped = longest = 0
  for i in range(n_batches):
    windows = stream.windows(range(i * batch_size, (i + 1) * batch_size))
    n = max(len(w.unit_index) for w in windows)
    buckets[bucket_length(n, data.config.bucket_lengths)] += 1
    truncated += sum(w.dropped_spikes > 0 for w in windows)
    dropped += sum(w.dropped_spikes for w in windows)
    longest = max([longest] + [len(w.unit_index) + w.dropped_spikes for w in windows])
  return dict(bucket_counts=buckets, truncated_windows=int(truncated), dropped_spikes=int(dropped),
              max_tokens=int(longest), windows=n_batches * batch_size)


# ------------------------------------------------------------------------------------------
# Evaluation: sliding windows, predictions put back on the session's timeline
# ------------------------------------------------------------------------------------------


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


def evaluation_batches(data: EventData, batch_size: int) -> grain.MapDataset:
  """MapDataset of (batch, meta) over the sliding windows, without unit dropout.

  batch: see BATCH_KEYS (the last batch is padded with all-padding rows). meta:
    session_position [B] int32 position in data.sessions (-1 on padding rows),
    window_start [B] float64 absolute start time of each window (seconds),
    behaviour_index [B, Q] int64 index into the session's behaviour arrays (-1 on padding),
    dropped_spikes [B] int32 spikes dropped to fit the largest bucket."""
  windows = evaluation_windows(data)

  def make_batch(i):
    rows = windows[i * batch_size : (i + 1) * batch_size]
    made = [make_window(data, int(s), float(a), float(b), np.random.default_rng([0, 3, i * batch_size + j]), False)
            for j, (s, a, b) in enumerate(rows)]
    padded = made + [None] * (batch_size - len(made))
    meta = dict(
        session_position=np.full(batch_size, -1, np.int32),
        window_start=np.zeros(batch_size, np.float64),
        behaviour_index=np.full((batch_size, data.max_outputs), -1, np.int64),
        dropped_spikes=np.zeros(batch_size, np.int32),
    )
    for j, ((s, a, _), w) in enumerate(zip(rows, made)):
      meta["session_position"][j], meta["window_start"][j] = int(s), a
      meta["behaviour_index"][j, : len(w.behaviour_index)] = w.behaviour_index
      meta["dropped_spikes"][j] = w.dropped_spikes
    return collate(padded, data), meta

  n_batches = -(-len(windows) // batch_size)
  return grain.MapDataset.range(n_batches).map(make_batch)


def stitch_predictions(data: EventData, metas: Sequence[dict], predictions: Sequence[np.ndarray]) -> list[dict]:
  """Averages overlapping window predictions per behaviour timestamp, per session.

  predictions: one [B, Q, D] array per evaluation batch (in scaled units, as the model
  outputs them). Returns, per session of data.sessions, a dict with timestamps [T] float64,
  prediction [T, D] float32 (rescaled to the original units), target [T, D] float32 and
  weights [T] float32 over the behaviour samples the windows covered."""
  sums = [np.zeros((len(s["behaviour_timestamps"]), data.n_dims)) for s in data.sessions]
  counts = [np.zeros(len(s["behaviour_timestamps"]), np.int64) for s in data.sessions]
  for meta, pred in zip(metas, predictions):
    pred = np.asarray(pred, np.float64)
    for j, s in enumerate(meta["session_position"]):
      if s < 0:
        continue
      idx = meta["behaviour_index"][j]
      valid = idx >= 0
      np.add.at(sums[s], idx[valid], pred[j][valid])
      np.add.at(counts[s], idx[valid], 1)
  out = []
  for s, total, count in zip(data.sessions, sums, counts):
    seen = count > 0
    out.append(dict(
        timestamps=s["behaviour_timestamps"][seen],
        prediction=(total[seen] / count[seen][:, None] * data.scale).astype(np.float32),
        target=np.asarray(s["behaviour_values"][seen], np.float32),
        weights=np.asarray(s["behaviour_weights"][seen], np.float32),
    ))
  return out


# ------------------------------------------------------------------------------------------
# Reading a built spike_events data set
# ------------------------------------------------------------------------------------------


def load_event_session(dataset: str, data_dir: str, splits: Sequence[str] = SPLITS) -> dict:
  """A session read back from a built spike_events data set, holding the data of `splits`.

  The result follows the session schema; its 'splits' holds only the splits read."""
  builder = provenance.open_built(dataset, data_dir)
  meta = builder.info.metadata
  for field in ("session_id", "unit_ids", "unit_regions", "behaviour_name", "behaviour_dim", "trial_intervals",
                "split_intervals"):
    if field not in meta:
      raise ValueError(f"data set {dataset!r}: metadata has no {field!r}; was it built by data_builders.spike_events?")
  parts = []
  for split in splits:
    if split not in builder.info.splits:
      raise ValueError(f"data set {dataset!r}: no split {split!r}; it has {sorted(builder.info.splits)}")
    source = builder.as_data_source(split=split)
    parts += source.__getitems__(list(range(len(source)))) if len(source) else []
  parts.sort(key=lambda e: float(e["interval_start"]))
  dim = int(meta["behaviour_dim"])

  def cat(key, dtype, shape=(0,)):
    arrays = [np.asarray(e[key], dtype) for e in parts]
    return np.concatenate(arrays) if arrays else np.zeros(shape, dtype)

  trials = np.asarray(meta["trial_intervals"], np.float64).reshape(-1, 2)
  return dict(
      session_id=str(meta["session_id"]),
      spike_times=cat("spike_times", np.float64),
      spike_units=cat("spike_units", np.int32),
      unit_ids=np.array(meta["unit_ids"], dtype=object),
      unit_regions=np.array(meta["unit_regions"], dtype=object),
      behaviour_name=str(meta["behaviour_name"]),
      behaviour_timestamps=cat("behaviour_timestamps", np.float64),
      behaviour_values=cat("behaviour_values", np.float32, (0, dim)).reshape(-1, dim),
      behaviour_weights=cat("behaviour_weights", np.float32),
      trial_starts=trials[:, 0],
      trial_ends=trials[:, 1],
      splits={s: np.asarray(meta["split_intervals"][s], np.float64).reshape(-1, 2) for s in splits},
  )
