"""Token buckets: the few fixed token lengths a batch is padded to, so XLA compiles a
bounded number of shapes, and how they grow from the data (a ladder of rungs)."""

from __future__ import annotations

from typing import Sequence


def next_rung(bucket: int) -> int:
  """The rung after `bucket` on the ladder 1024, 1536, 2048, 3072, 4096, 6144, ... (2^k and
  1.5 * 2^k, multiples of 8): at most 1.5x the previous, so a batch padded to the smallest
  rung holding it is at most a third padding, as the presets' ladders."""
  power = 1 << (max(int(bucket), 8).bit_length() - 1)  # the largest power of 2 <= bucket
  rung = power * 3 // 2 if power * 3 // 2 > bucket else 2 * power
  return -(-rung // 8) * 8


def grow_buckets(buckets: Sequence[int], n_tokens: int) -> tuple[int, ...]:
  """`buckets`, continued past its largest by next_rung until one holds n_tokens (unchanged
  when one does): the buckets grow from the data, adding only the rungs it needs (one
  compile each) and no more memory than its longest item's rung."""
  out = [int(b) for b in buckets]
  while out[-1] < n_tokens:
    out.append(next_rung(out[-1]))
  return tuple(out)


def fit_buckets(buckets: Sequence[int], n_tokens: int, max_tokens: int, where: str, item: str) -> tuple[int, ...]:
  """grow_buckets(buckets, n_tokens) for the longest `item` (a trial, a window) of a split,
  of n_tokens; with a cap max_tokens > 0 (config.data.max_tokens) a longer one is a
  ValueError naming it (`where`: "session 'x' has a trial of split 'val' (from 2.000 s)")."""
  if 0 < max_tokens < n_tokens:
    raise ValueError(
      f"config.data.max_tokens={max_tokens}: {where} of {n_tokens} tokens; raise max_tokens to at least that, "
      f"or set it to 0 (buckets then grow to the longest {item})"
    )
  return grow_buckets(buckets, n_tokens)


def bucket_length(n_tokens: int, buckets: Sequence[int]) -> int:
  """The smallest bucket holding n_tokens (the largest if none does)."""
  for b in buckets:
    if n_tokens <= b:
      return int(b)
  return int(buckets[-1])
