"""The fused Threefry random bits behind dropout."""

import jax
import jax.extend.random as jex_random
import jax.numpy as jnp
import numpy as np
import pytest

from mtm_jax.models import random_bits


def test_threefry_matches_jax_bit_for_bit():
  rng = np.random.default_rng(0)
  k0, k1 = (jnp.uint32(v) for v in rng.integers(0, 2**32, 2, dtype=np.uint64))
  x0, x1 = (jnp.asarray(rng.integers(0, 2**32, (7, 129), dtype=np.uint64), jnp.uint32) for _ in range(2))
  ours = jax.jit(random_bits.threefry2x32)(k0, k1, x0, x1)
  theirs = jex_random.threefry2x32_p.bind(k0, k1, x0, x1)
  for a, b in zip(ours, theirs):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bits_are_uniform_independent_and_keyed():
  shape = (8, 5, 1003)
  u = np.asarray(jax.jit(random_bits.bits, static_argnums=1)(jax.random.key(0), shape))
  assert u.shape == shape and u.dtype == np.uint32
  n = u.size
  assert abs(u.mean() / 2**32 - 0.5) < 4 * np.sqrt(1 / 12 / n)
  counts = np.bincount(u.ravel() >> 28, minlength=16)  # 16 equal bins
  assert ((counts - n / 16) ** 2 / (n / 16)).sum() < 50  # chi-square, 15 dof (p ~ 1e-5)
  below = (u < 2**31).astype(np.float64)  # neighbours along each axis
  for a, b in [(below[..., :-1], below[..., 1:]), (below[:, :-1], below[:, 1:]), (below[:-1], below[1:])]:
    assert abs((a * b).mean() - 0.25) < 5 * np.sqrt(3 / 16 / a.size)
  again = np.asarray(random_bits.bits(jax.random.key(0), shape))
  other = np.asarray(random_bits.bits(jax.random.key(1), shape))
  np.testing.assert_array_equal(u, again)
  assert (u == other).mean() < 1e-3
  rbg = np.asarray(random_bits.bits(jax.random.key(0, impl="rbg"), (4, 16)))  # any key implementation
  assert rbg.shape == (4, 16) and len(np.unique(rbg)) == 64


def test_bits_reject_a_scalar_shape():
  with pytest.raises(ValueError, match="at least one axis"):
    random_bits.bits(jax.random.key(0), ())
