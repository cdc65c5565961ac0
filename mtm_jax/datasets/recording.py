"""Checks shared by the readers of recorded files (IBL ALF sessions, NWB files).

Stored times: ALF and NWB store times as float64 seconds. `float64_times` takes a time
array as read from a file and returns it as float64:
  float64 (or wider)  as stored;
  float32             usable but rounded: float32 resolves 0.24 ms an hour into a recording
                      (np.spacing(np.float32(3600.0))), more than a user expects of spike
                      times. Used as stored, with a warning naming the file, the dtype and
                      the resolution at the array's largest time: a LowPrecisionTimesWarning
                      (shown once per file; the programs print it as one log line);
  float16             refused (2 s resolution an hour in, nothing past 65504 s);
  integers, others    refused (times are float seconds; integers are usually sample indices).

Recordings: a spike sorting or a behaviour recording can start after the first trial or
stop before the last. `inside` says which trials lie inside a recording's span, so that
readers drop (and count) trials a recording does not cover instead of reading them as
silence or as trials without behaviour.
"""

from __future__ import annotations

import warnings

import numpy as np


class LowPrecisionTimesWarning(UserWarning):
  """Times stored with less precision than float64 (float32): used as stored, rounded."""


def resolution(dtype, t_max: float) -> float:
  """Seconds between neighbouring values of `dtype` at time t_max (its resolution there)."""
  with np.errstate(over="ignore"):  # past float16's largest value: inf, whose spacing is NaN
    return float(np.spacing(np.asarray(abs(t_max), dtype)))


def float64_times(values, source: str, what: str, error: type[Exception] = ValueError) -> np.ndarray:
  """`values` (times as read from a file) as float64 seconds; see the module docstring.

  source: where they come from, the start of every message (e.g. '<session>: <path>');
  what: what they are (e.g. 'spike times'); error: the exception type raised for a
  refused dtype (a ValueError subclass of the reader)."""
  values = np.asarray(values)
  dtype = values.dtype
  if dtype.kind == "f" and dtype.itemsize >= 8:
    return values.astype(np.float64, copy=False)
  finite = values[np.isfinite(values)] if dtype.kind in "fiu" else values[:0]
  t_max = float(np.max(np.abs(finite.astype(np.float64)))) if finite.size else 0.0
  if dtype == np.float32:
    message = (
      f"{source}: {what} are stored as float32, not float64: at the largest time, {t_max:.1f} s, float32 "
      f"resolves only {1e3 * resolution(np.float32, t_max):.3g} ms; the times are used as stored (rounded)"
    )
    warnings.warn(message, LowPrecisionTimesWarning, stacklevel=2)
    return values.astype(np.float64)
  if dtype == np.float16:
    raise error(
      f"{source}: {what} are stored as float16, which resolves only {resolution(np.float16, t_max):.3g} s at "
      f"their largest time, {t_max:.1f} s (and holds no time past 65504 s); store them as float64 seconds"
    )
  if dtype.kind in "iu":
    raise error(
      f"{source}: {what} are stored as integers ({dtype}); expected float64 seconds (integer times are "
      f"usually sample indices: divide them by the sampling rate)"
    )
  raise error(f"{source}: {what} must be float64 seconds, got dtype {dtype}")


def inside(starts, ends, first: float, last: float) -> np.ndarray:
  """[K] bool: the trial [starts[k], ends[k]] lies inside the recording [first, last]."""
  return (np.asarray(starts, np.float64) >= first) & (np.asarray(ends, np.float64) <= last)
