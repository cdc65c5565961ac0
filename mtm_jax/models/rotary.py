"""Rotary embeddings over continuous time (POYO), as pure functions.

A token at time t (seconds) has its attention vectors rotated, pair by pair, by angles
t * omega_f. Only the first `rotate_dim` dims of each head are rotated, in interleaved
pairs (x0, x1), (x2, x3), ...; the rest pass unchanged. The `rotate_dim // 2` angular
frequencies omega_f = 2 pi / period_f have periods log-spaced from t_min to t_max, both
ends included. With head dim 64, 32 rotated dims and (1e-4 s, 2.0627 s) this is the POYO
setting (2.0627 s is the largest period of the original `t_max=4` formula
t_min * (t_max / t_min) ** (i / 16), i < 16, written as an inclusive end).

Angles are computed in float32 whatever the timestamp dtype (host data is often float64).
`host_angles` keeps float64 timestamps' precision, as torch_brain does with them: at the
fastest frequency (2 pi / 1e-4 s) a float32 angle t * omega is off by up to ~4e-3 rad at
t = 1 s, which moves POYO's outputs by ~1e-4 relative.
Shapes: L tokens, H heads, E head dim, F = rotate_dim // 2 frequencies.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

T_MIN = 1e-4  # shortest period (s)
T_MAX = 2.0627  # longest period (s)


def rotary_frequencies(
  head_dim: int = 64, rotate_dim: int = 32, t_min: float = T_MIN, t_max: float = T_MAX
) -> np.ndarray:
  """Angular frequencies (rad/s), float32 [rotate_dim // 2], of periods log-spaced over
  [t_min, t_max] (both inclusive), shortest period first."""
  if rotate_dim <= 0 or rotate_dim % 2:
    raise ValueError(f"rotary: rotate_dim must be a positive even number, got {rotate_dim}")
  if rotate_dim > head_dim:
    raise ValueError(f"rotary: rotate_dim {rotate_dim} exceeds head_dim {head_dim}")
  if not 0.0 < t_min < t_max:
    raise ValueError(f"rotary: expected 0 < t_min < t_max, got t_min={t_min}, t_max={t_max}")
  n = rotate_dim // 2
  fraction = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
  periods = np.exp(np.log(t_min) + fraction * (np.log(t_max) - np.log(t_min)))
  return (2.0 * np.pi / periods).astype(np.float32)


def rotary_angles(timestamps, frequencies=None) -> jax.Array:
  """timestamps [..., L] (seconds, any float dtype) -> angles [..., L, F] float32.

  frequencies: [F] from `rotary_frequencies` (default: the POYO setting, F = 16).
  """
  if frequencies is None:
    frequencies = rotary_frequencies()
  t = jnp.asarray(timestamps, jnp.float32)
  return t[..., None] * jnp.asarray(frequencies, jnp.float32)


def host_angles(timestamps, frequencies) -> np.ndarray:
  """Host timestamps [..., L] (numpy, seconds) -> angles [..., L, F] float32, in the
  timestamps' own precision: float64 timestamps give float64 products t * omega, reduced
  modulo 2 pi before the cast (cos and sin then equal those of the float64 angle to
  float32 rounding: torch_brain's float64 path); other dtypes give `rotary_angles`'s
  float32 angles exactly.

  frequencies: [F] (float32, e.g. POYO.frequencies()). Pass the result as POYO's `angles`.
  """
  t = np.asarray(timestamps)
  if t.dtype != np.float64:
    return np.asarray(rotary_angles(t, frequencies))
  angles = t[..., None] * np.asarray(frequencies, np.float32).astype(np.float64)
  return np.remainder(angles, 2.0 * np.pi).astype(np.float32)


def rotate(x, angles, inverse: bool = False, *, time_minor: bool = False) -> jax.Array:
  """Rotates pairs (x[2f], x[2f+1]) of the head dim by angles[f], f < F; dims from 2F on
  are unchanged.

  x [..., L, H, E], or [..., H, E, L] with time_minor (the token axis last, as POYO's
  encoder keeps its keys and values); angles [..., L, F] in both cases (broadcast over
  heads). inverse=True rotates by -angles (undoes the rotation). Returns x's shape and
  dtype.

  Written as x * c + swap(x) * s, with swap exchanging the two members of every pair and
  c = (cos f, cos f, ..., 1), s = (-sin f, sin f, ..., 0) over the head dim: one
  elementwise pass whose gradient is the same pass (no slicing, stacking and
  concatenating of the head dim: the backward pass through POYO's token rotations is 1.5x
  faster on CPU).
  """
  axis = -2 if time_minor else -1  # x's head-dim axis; the heads axis is the one before it
  n, e = angles.shape[-1], x.shape[axis]
  if 2 * n > e or e % 2:
    raise ValueError(f"rotary: {n} angles rotate {2 * n} dims, but the head dim is {e} (expected even and >= {2 * n})")
  if time_minor:
    angles = jnp.swapaxes(angles, -1, -2)  # [..., F, L]
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  if inverse:
    sin = -sin
  pad = [(0, 0)] * angles.ndim
  pad[axis] = (0, e - 2 * n)
  c = jnp.pad(jnp.repeat(cos, 2, axis=axis), pad, constant_values=1.0)  # head dim 2F -> E
  pairs = jnp.stack([-sin, sin], axis=axis)  # [..., F, 2] or [..., F, 2, L]
  s = jnp.pad(pairs.reshape(c.shape[:axis] + (2 * n,) + c.shape[axis:][1:]), pad)
  x_pairs = x.shape[:axis] + (e // 2, 2) + x.shape[axis:][1:]
  swapped = jnp.flip(x.reshape(x_pairs), axis=axis).reshape(x.shape)
  c, s = jnp.expand_dims(c, axis - 1).astype(x.dtype), jnp.expand_dims(s, axis - 1).astype(x.dtype)
  return x * c + swapped * s
