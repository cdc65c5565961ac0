"""Random bits that XLA fuses into their consumer: Threefry-2x32 written out in jnp.

jax.random draws its bits with the same Threefry-2x32 hash (Salmon et al. 2011, 20
rounds), but on CPU jax lowers it as a rolled loop over the five 4-round groups: every
group reads and writes the whole counter arrays, and the result is materialised before
its consumer reads it. Written out here as plain jnp integer ops, the hash fuses into the
consumer (a dropout `where`), and a [16, 2, 128, 3072] dropout mask costs about a fifth
(37-43 vs 190 ms on a 2-core CPU). `threefry2x32` equals jax's primitive bit for bit (a test
compares them); on GPU/TPU jax already unrolls it, so both forms compile alike there.

Shapes: `shape` is the output shape; the counters are [shape[0], ...] indices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rotate_left(x, r: int):
  return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def threefry2x32(k0, k1, x0, x1) -> tuple[jax.Array, jax.Array]:
  """Threefry-2x32 of the counter pairs (x0, x1) under the key (k0, k1); uint32 arrays
  that broadcast together -> two uint32 arrays of the counters' shape."""
  ks = (k0, k1, k0 ^ k1 ^ _PARITY)
  x0, x1 = x0 + ks[0], x1 + ks[1]
  for group in range(5):
    for r in _ROTATIONS[group % 2]:
      x0 = x0 + x1
      x1 = _rotate_left(x1, r) ^ x0
    x0 = x0 + ks[(group + 1) % 3]
    x1 = x1 + ks[(group + 2) % 3] + np.uint32(group + 1)
  return x0, x1


def _counters(shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
  """(row, within-row index) uint32 counters of `shape`: unique while one row of the
  leading axis holds fewer than 2^32 elements."""
  index = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in range(len(shape) - 1, 0, -1):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(stride)
    stride *= shape[axis]
  if stride >= 2**32:
    raise ValueError(f"random bits: {stride} elements per row of shape {shape} overflow the 32-bit counter")
  return jax.lax.broadcasted_iota(jnp.uint32, shape, 0), index


def bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Independent uniform 32-bit words, uint32 of `shape` (at least 1-d): the first word
  of the hash of each element's own counter.

  One hash per element (its second word unused) needs no stacking or reshaping of hash
  outputs, so the whole hash fuses elementwise into the consumer; packing four 16-bit
  integers per hash made XLA materialise them and was slower. The key may be of any jax
  PRNG implementation (its two hash words are drawn from it with jax.random.bits).
  """
  if not shape:
    raise ValueError("random bits: expected a shape of at least one axis, got ()")
  k0, k1 = jax.random.bits(key, (2,), jnp.uint32)
  return threefry2x32(k0, k1, *_counters(tuple(shape)))[0]
