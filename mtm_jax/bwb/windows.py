"""TS2 test window starts, bit for bit as BrainWideBench's sampler makes them, in NumPy.

BWB's TS2 test loop draws 1 s windows at a stride of one 20 ms bin over (task-aligned time ∩
test chunks) with torch_brain's `SequentialFixedWindowSampler`: for each interval
[start, end) it takes `t` from `torch.arange(start, end, step, dtype=torch.float64)`, keeps
those with `t + window <= end`, and appends one last window `end - window` when the last kept
window ends before `end`. The scorer matches predictions to the ground truth by these starts in
exact float64, so a start one ulp off scores nothing (and silently).

`torch.arange` on the CPU does not compute `start + k * step`. Its kernel fills the output in
SIMD vectors of 4 doubles, two vectors per loop iteration: element i < 8 * (n // 8) is
`b + j * step` with `b = start + step * (i - j)` and `j = i % 4`; the remaining n % 8 elements
are `start + step * i`. On x86 machines with AVX2 (also AVX-512 ones, which run the same
kernel) the compiler fuses every such multiply-add into one FMA, rounded once; the baseline
kernel (no AVX2) rounds the product and the sum separately. n = ceil((end - start) / step).
This was read from ATen's RangeFactoriesKernel.cpp and checked against torch on thousands of
random intervals (tests/test_bwb_windows.py).
"""

from __future__ import annotations

import numpy as np

WINDOW = 1.0  # seconds: TS2's scored window (COSMOOTH_TARGET_WINDOW = FORECAST_BASE_WINDOW)
STEP = 0.02  # seconds: one bin
KERNELS = ("avx2", "default")
_LANES = 4  # doubles per SIMD vector in torch's arange kernel (AVX2 and baseline alike)
_GRAIN = 32768  # at::internal::GRAIN_SIZE: longer ranges are split over threads


def _two_sum(a, b):
  """s, e with s = fl(a + b) and a + b = s + e exactly (Knuth)."""
  s = a + b
  bb = s - a
  return s, (a - (s - bb)) + (b - bb)


def _split(x):
  """hi, lo with x = hi + lo, each fitting in 26 bits (Veltkamp)."""
  c = 134217729.0 * x  # 2**27 + 1
  hi = c - (c - x)
  return hi, x - hi


def _two_prod(a, b):
  """p, e with p = fl(a * b) and a * b = p + e exactly (Dekker); no overflow or underflow."""
  p = a * b
  ah, al = _split(a)
  bh, bl = _split(b)
  return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def _sum_round_to_odd(a, b):
  """a + b rounded to odd: exact when representable, else the neighbour with an odd last bit."""
  s, e = _two_sum(a, b)
  fix = (e != 0) & ((s.view(np.int64) & 1) == 0)
  return np.where(fix, np.nextafter(s, np.where(e > 0, np.inf, -np.inf)), s)


def fma(a, b, c) -> np.ndarray:
  """a * b + c rounded once to float64, elementwise (broadcast), as a fused multiply-add.

  Boldo and Melquiond's emulation: the exact product as p + e, the exact sum c + p as s + t,
  then round(s + round_to_odd(t + e)) is the correctly rounded result (no underflow or
  overflow: true for times and steps in seconds)."""
  a, b, c = np.broadcast_arrays(*(np.asarray(x, np.float64) for x in (a, b, c)))
  p, e = _two_prod(a, b)
  s, t = _two_sum(c, p)
  return s + _sum_round_to_odd(t, e)


def torch_arange(start: float, end: float, step: float, kernel: str = "avx2") -> np.ndarray:
  """(n,) float64: what `torch.arange(start, end, step, dtype=torch.float64)` returns on a CPU.

  kernel: "avx2" (x86 with AVX2 or AVX-512: fused multiply-adds) or "default" (torch's baseline
  kernel, ATEN_CPU_CAPABILITY=default: separate roundings). Raises ValueError for a non-positive
  step, end < start, or more than 32768 values (torch then splits the range over threads, and
  the values depend on the thread count)."""
  if kernel not in KERNELS:
    raise ValueError(f"torch_arange: kernel {kernel!r}; expected one of {KERNELS}")
  start, end, step = float(start), float(end), float(step)
  if not step > 0 or not end >= start:
    raise ValueError(f"torch_arange: expected step > 0 and end >= start; got {start}, {end}, {step}")
  n = int(np.ceil((end - start) / step))
  if n > _GRAIN:
    raise ValueError(f"torch_arange: {n} values exceed {_GRAIN}, where torch's values depend on its threads")
  i = np.arange(n)
  lane = i % _LANES
  vectorized = i < (n // (2 * _LANES)) * (2 * _LANES)
  k = np.where(vectorized, i - lane, i).astype(np.float64)
  if kernel == "avx2":
    base = fma(step, k, start)
    return np.where(vectorized, fma(lane.astype(np.float64), step, base), base)
  base = start + step * k
  return np.where(vectorized, base + lane * step, base)


def window_starts(starts, ends, window: float = WINDOW, step: float = STEP, drop_short: bool = False, kernel="avx2"):
  """(W,) float64: the window starts torch_brain's SequentialFixedWindowSampler yields, in order.

  starts, ends: (I,) interval bounds in seconds (one session's sampling intervals). An interval
  shorter than `window` raises ValueError (the sampler's default) or, with drop_short, is
  skipped. Windows are [t, t + window)."""
  starts, ends = np.asarray(starts, np.float64), np.asarray(ends, np.float64)
  if starts.ndim != 1 or starts.shape != ends.shape:
    raise ValueError(f"window_starts: expected (I,) starts and ends; got {starts.shape} and {ends.shape}")
  out = []
  for start, end in zip(starts, ends, strict=True):
    if end - start < window:
      if drop_short:
        continue
      raise ValueError(f"window_starts: interval ({start!r}, {end!r}) is shorter than the window {window}")
    t = torch_arange(start, end, step, kernel)
    t = t[t + window <= end]
    if t.size == 0:
      raise ValueError(f"window_starts: interval ({start!r}, {end!r}) holds no window (torch_brain fails here)")
    out.append(t)
    if t[-1] + window < end:
      out.append(np.array([end - window]))
  return np.concatenate(out) if out else np.zeros(0, np.float64)


def intersect(a_starts, a_ends, b_starts, b_ends) -> tuple[np.ndarray, np.ndarray]:
  """(starts, ends) of the intersection of two sets of disjoint sorted intervals, as
  temporaldata's `Interval.__and__` computes it (the sampling intervals of BWB's TS2 split:
  task-aligned domain & ts2_<split>_domain)."""
  from temporaldata import Interval  # noqa: PLC0415 - the optional session-file library, loaded on use

  out = Interval(np.asarray(a_starts, np.float64), np.asarray(a_ends, np.float64)) & Interval(
    np.asarray(b_starts, np.float64), np.asarray(b_ends, np.float64)
  )
  return np.asarray(out.start, np.float64), np.asarray(out.end, np.float64)
