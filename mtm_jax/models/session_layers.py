"""Per-session layers stored as padded tables (NDT1's stitchers, NEDS's tokenisers and
readouts): one compiled step serves every session, the session row picks the weights."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx


class SessionLinear(nnx.Module):
  """One Linear(in_sizes[s], out_sizes[s]) per session s, as padded tables.

  kernel [S, max_in, max_out], bias [S, max_out]; entries outside session s's sizes are
  zero, so padded inputs are ignored and padded outputs are 0. Each session's kernel is
  initialised like nnx.Linear's (LeCun normal over its own fan-in); biases are zero.
  """

  def __init__(self, in_sizes, out_sizes, *, rngs: nnx.Rngs):
    if len(in_sizes) != len(out_sizes) or not in_sizes:
      raise ValueError(f"SessionLinear: need one input and output size per session, got {in_sizes}, {out_sizes}")
    n_in, n_out = max(in_sizes), max(out_sizes)
    init = nnx.initializers.lecun_normal()
    kernels = []
    for a, b in zip(in_sizes, out_sizes):
      k = init(rngs.params(), (a, b), jnp.float32)
      kernels.append(jnp.pad(k, ((0, n_in - a), (0, n_out - b))))
    self.kernel = nnx.Param(jnp.stack(kernels))
    self.bias = nnx.Param(jnp.zeros((len(in_sizes), n_out), jnp.float32))

  def __call__(self, x, session):
    """x [..., max_in], session [] int (may be traced) -> [..., max_out].

    With session [B] int (one row per example), x is [B, ..., max_in] and example b goes
    through row session[b]."""
    session = jnp.asarray(session)
    if session.ndim == 0:
      return x @ self.kernel[session] + self.bias[session]
    if session.ndim != 1 or x.shape[0] != session.shape[0]:
      raise ValueError(f"SessionLinear: session rows {session.shape} do not match inputs {x.shape} (expected [B])")
    bias = self.bias[session].reshape((x.shape[0],) + (1,) * (x.ndim - 2) + (-1,))
    return jnp.einsum("b...i,bio->b...o", x, self.kernel[session]) + bias
