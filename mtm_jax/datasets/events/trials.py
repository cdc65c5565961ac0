"""Whole trials as spike tokens, with their binned counts: the data of the spike-token MtM family.

Every interval of a split is one trial of `context` seconds (MtM's 2 s IBL trials), read
whole with every unit (no unit dropout, no windows). A trial's tokens are a start token
(t = 0) and an end token (t = context) per unit and one token per spike, in time order
between them (tokens.make_window's layout); its counts are the spikes binned at
`bin_size` on the trial's grid (binning.bin_spikes), the targets of masked modelling.

A batch (B trials, L tokens, N unit slots = the most units of any session, T bins):
  unit_index, timestamps, token_type, input_mask [B, L]   as POYO's (tokens.INPUT_KEYS)
  token_unit [B, L] int32     the token's unit slot (its position among its session's units)
  session_index [B] int32     session row of the vocabulary
  unit_rows [B, N] int32      unit-table row of each slot (0 = padding)
  unit_regions [B, N] int32   region id of each slot within its session (-1 = padding)
  counts [B, T, N] float32    spikes per bin and slot
  valid [B] bool              False on rows that only pad a partial batch
Batches are padded to a token bucket (buckets.bucket_length) chosen from the token counts
of the whole global batch, so every process compiles the same shapes and builds only its
rows (`rows`, mtm_jax.parallel.mesh.process_rows).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Sequence

import grain
import numpy as np

from mtm_jax.datasets.events import buckets as buckets_lib
from mtm_jax.datasets.events import binning
from mtm_jax.datasets.events import session as session_lib
from mtm_jax.datasets.events import tokens as tokens_lib
from mtm_jax.datasets.events import vocabulary as vocabulary_lib

BATCH_KEYS = tokens_lib.INPUT_KEYS + ("token_unit", "session_index", "unit_rows", "unit_regions", "counts", "valid")


@dataclasses.dataclass(frozen=True)
class TrialConfig:
  context: float = 2.0  # seconds per trial
  bin_size: float = 0.02  # seconds per bin of the counts (the training targets)
  bucket_lengths: tuple[int, ...] = (1024, 2048, 3072, 4096, 6144, 8192, 12288, 16384)
  max_tokens: int = 0  # > 0: the most tokens a trial may have (config.data.max_tokens); 0: no cap

  @property
  def n_bins(self) -> int:
    return int(round(self.context / self.bin_size))


@dataclasses.dataclass(frozen=True)
class TrialData:
  """The trials of one split of some sessions, tokenised (host arrays).

  trials [K, 3] float64 (session position, start, end) in session then time order; per
  trial k: unit[k] [n_k] int32 slots, times[k] [n_k] float32 seconds from the trial
  start, types[k] [n_k] int32; counts [K, T, N] uint16; regions [S, N] int32 and
  unit_rows [S, N] int32 per session; region_names[s]: the region of each id of session s."""

  sessions: tuple[session_lib.EventSession, ...]
  split: str
  vocab: vocabulary_lib.Vocabulary
  config: TrialConfig
  n_units: int
  trials: np.ndarray
  unit: list[np.ndarray]
  times: list[np.ndarray]
  types: list[np.ndarray]
  counts: np.ndarray
  regions: np.ndarray
  unit_rows: np.ndarray
  region_names: list[tuple[str, ...]]

  def __len__(self) -> int:
    return len(self.trials)

  def session_trials(self, position: int) -> np.ndarray:
    """[K_s] int: the trials of session `position`, in time order."""
    return np.flatnonzero(self.trials[:, 0] == position)

  def token_counts(self) -> np.ndarray:
    """[K] int: tokens of each trial."""
    return np.array([len(u) for u in self.unit], np.int64)


def region_ids(regions: Sequence[str]) -> tuple[np.ndarray, tuple[str, ...]]:
  """(ids [U] int32, names): each unit's region as an index into the sorted region names."""
  names, ids = np.unique(np.asarray([str(r) for r in regions]), return_inverse=True)
  return ids.astype(np.int32).reshape(-1), tuple(str(n) for n in names)


def trial_tokens(session: session_lib.EventSession, start: float, config: TrialConfig):
  """(slots [n] int32, times [n] float32, types [n] int32) of the trial [start, start + context):
  start tokens at 0, the spikes (times from the trial start, computed in float64), end
  tokens at `context`."""
  part = session_lib.interval_data(session, start, start + config.context)
  n_units = len(session.unit_ids)
  every = np.arange(n_units, dtype=np.int32)
  slots = np.concatenate([every, part["spike_units"].astype(np.int32), every])
  rel = (np.asarray(part["spike_times"], np.float64) - start).astype(np.float32)
  times = np.concatenate([np.zeros(n_units, np.float32), rel, np.full(n_units, config.context, np.float32)])
  types = np.concatenate(
    [np.full(n_units, tokens_lib.START), np.full(len(rel), tokens_lib.SPIKE), np.full(n_units, tokens_lib.END)]
  ).astype(np.int32)
  return slots, times, types


def prepare(
  sessions: Sequence[session_lib.EventSession],
  split: str,
  config: TrialConfig = TrialConfig(),
  vocab: vocabulary_lib.Vocabulary | None = None,
  n_units: int | None = None,
) -> TrialData:
  """The trials of `split` of `sessions`, tokenised; vocab defaults to theirs, n_units
  (unit slots) to the most units of any session. ValueError naming the session when a
  trial is not `context` seconds long or a session lacks the split, or has more tokens
  than config.max_tokens (> 0). The returned config's buckets are config.bucket_lengths
  grown by the ladder (buckets.grow_buckets) to hold the longest trial."""
  if not sessions:
    raise ValueError("trials.prepare: no sessions given")
  sessions = tuple(sessions)
  vocab = vocabulary_lib.build_vocabulary(sessions) if vocab is None else vocab.extend(sessions)
  widest = max(len(s.unit_ids) for s in sessions)
  n_units = widest if n_units is None else n_units
  if n_units < widest:
    raise ValueError(f"trials.prepare: n_units={n_units} is fewer than the {widest} units of a session")
  if abs(config.n_bins * config.bin_size - config.context) > 1e-9:
    raise ValueError(f"TrialConfig: bin_size {config.bin_size} does not divide the context {config.context}")
  rows, unit, times, types, counts = [], [], [], [], []
  regions = np.full((len(sessions), n_units), -1, np.int32)
  unit_rows = np.zeros((len(sessions), n_units), np.int32)
  names = []
  for i, s in enumerate(sessions):
    if split not in s.splits:
      raise ValueError(f"session {s.session_id!r}: no split {split!r}; it has {sorted(s.splits)}")
    intervals = np.asarray(s.splits[split], np.float64).reshape(-1, 2)
    lengths = intervals[:, 1] - intervals[:, 0]
    wrong = np.flatnonzero(np.abs(lengths - config.context) > 1e-6)
    if len(wrong):
      raise ValueError(
        f"session {s.session_id!r}: split {split!r} interval {wrong[0]} lasts {lengths[wrong[0]]:.6f} s; "
        f"spike-token MtM reads whole trials of context={config.context} s"
      )
    ids, region_names = region_ids(s.unit_regions)
    regions[i, : len(ids)] = ids
    unit_rows[i, : len(ids)] = vocab.unit_rows(s.session_id)
    names.append(region_names)
    binned = binning.bin_spikes(s, intervals, config.bin_size, config.n_bins)  # [K_s, T, U]
    counts.append(np.pad(binned, [(0, 0), (0, 0), (0, n_units - binned.shape[2])]))
    for start, end in intervals:
      rows.append((i, start, end))
      u, t, y = trial_tokens(s, start, config)
      unit.append(u), times.append(t), types.append(y)
  if not rows:
    raise ValueError(f"split {split!r} has no trials in any session")
  lengths = np.array([len(u) for u in unit])
  longest = int(np.argmax(lengths))
  where = (
    f"session {sessions[rows[longest][0]].session_id!r} has a trial of split {split!r} (from {rows[longest][1]:.3f} s)"
  )
  grown = buckets_lib.fit_buckets(config.bucket_lengths, lengths[longest], config.max_tokens, where, "trial")
  config = dataclasses.replace(config, bucket_lengths=grown)
  return TrialData(
    sessions=sessions,
    split=split,
    vocab=vocab,
    config=config,
    n_units=n_units,
    trials=np.array(rows, np.float64),
    unit=unit,
    times=times,
    types=types,
    counts=np.concatenate(counts).astype(np.uint16),
    regions=regions,
    unit_rows=unit_rows,
    region_names=names,
  )


def collate(data: TrialData, indices: Sequence[int], n_tokens: int) -> dict[str, np.ndarray]:
  """The batch of trials `indices` (-1 = a padding row), padded to the bucket of n_tokens."""
  length = buckets_lib.bucket_length(n_tokens, data.config.bucket_lengths)
  b, n, t = len(indices), data.n_units, data.config.n_bins
  out = dict(
    unit_index=np.zeros((b, length), np.int32),
    timestamps=np.zeros((b, length), np.float32),
    token_type=np.zeros((b, length), np.int32),
    input_mask=np.zeros((b, length), bool),
    token_unit=np.zeros((b, length), np.int32),
    session_index=np.zeros((b,), np.int32),
    unit_rows=np.zeros((b, n), np.int32),
    unit_regions=np.full((b, n), -1, np.int32),
    counts=np.zeros((b, t, n), np.float32),
    valid=np.zeros((b,), bool),
  )
  for r, k in enumerate(indices):
    if k < 0:
      continue
    s = int(data.trials[k, 0])
    m = min(len(data.unit[k]), length)  # the largest bucket keeps the first tokens (checked by the caller)
    rows = data.unit_rows[s]
    out["unit_index"][r, :m] = rows[data.unit[k][:m]]
    out["token_unit"][r, :m] = data.unit[k][:m]
    out["timestamps"][r, :m] = data.times[k][:m]
    out["token_type"][r, :m] = data.types[k][:m]
    out["input_mask"][r, :m] = True
    out["session_index"][r] = data.vocab.session_row(data.sessions[s].session_id)
    out["unit_rows"][r] = rows
    out["unit_regions"][r] = data.regions[s]
    out["counts"][r] = data.counts[k]
    out["valid"][r] = True
  return out


def check_buckets(data: TrialData) -> None:
  """ValueError naming the session of a trial with more tokens than the largest bucket."""
  counts = data.token_counts()
  worst = int(np.argmax(counts))
  if counts[worst] > data.config.bucket_lengths[-1]:
    sid = data.sessions[int(data.trials[worst, 0])].session_id
    raise ValueError(
      f"session {sid!r}: a trial of split {data.split!r} has {counts[worst]} tokens, more than the "
      f"largest bucket {data.config.bucket_lengths[-1]}; prepare grows the buckets to the longest trial"
    )


class _TrainingBatch:
  """Batch i: trials i*B ... of the stream of epochs (a fresh permutation each, drawn from
  (seed, epoch)); only `rows` of them are built, padded to the bucket of the whole batch."""

  def __init__(self, data: TrialData, batch_size: int, seed: int, rows: slice | None):
    self.data, self.batch_size, self.seed, self.rows = data, batch_size, seed, rows
    self.n_tokens = data.token_counts()

  def __call__(self, i: int) -> dict[str, np.ndarray]:
    k = len(self.data)
    orders = {}  # epoch -> its permutation (a batch spans at most a few epochs)
    picks = []
    for g in range(int(i) * self.batch_size, (int(i) + 1) * self.batch_size):
      epoch, pos = divmod(g, k)
      if epoch not in orders:
        orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(k)
      picks.append(int(orders[epoch][pos]))
    mine = picks if self.rows is None else picks[self.rows]
    return collate(self.data, mine, int(self.n_tokens[picks].max()))


def training_batches(data: TrialData, batch_size: int, seed: int, rows: slice | None = None) -> grain.MapDataset:
  """Infinite MapDataset of batches (BATCH_KEYS); batch i depends only on (seed, i) and
  mixes the trials of every session. rows: this process's rows of each global batch."""
  if batch_size < 1:
    raise ValueError(f"batch size must be >= 1, got {batch_size}")
  check_buckets(data)
  return grain.MapDataset.range(sys.maxsize).map(_TrainingBatch(data, batch_size, seed, rows))


def evaluation_batches(data: TrialData, batch_size: int, rows: slice | None = None) -> list[dict[str, np.ndarray]]:
  """Every trial once, in order, in batches of batch_size (the last padded with invalid rows)."""
  check_buckets(data)
  n_tokens = data.token_counts()
  out = []
  for start in range(0, len(data), batch_size):
    picks = [k if k < len(data) else -1 for k in range(start, start + batch_size)]
    real = [k for k in picks if k >= 0]
    mine = picks if rows is None else picks[rows]
    out.append(collate(data, mine, int(n_tokens[real].max())))
  return out
