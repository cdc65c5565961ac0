"""Mixed precision: parameters, optimiser state and loss stay float32; the forward and
backward passes may run in a lower compute dtype (`config.model.dtype`).

The train and evaluation steps cast the float32 parameters to the compute dtype before
merging the model (`compute_params`); the model then runs in that dtype (its input is
cast to the dtype of its first kernel, attention's softmax and LayerNorm statistics are
computed in float32), and the step casts the outputs back to float32 for the loss.
Gradients flow through the cast, so they arrive in float32 on the float32 parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

DTYPES = ("float32", "bfloat16")


def compute_dtype(name: str, where: str = "config.model.dtype") -> jnp.dtype:
  """The jnp dtype of `name` (one of DTYPES); ValueError naming `where` otherwise."""
  if name not in DTYPES:
    raise ValueError(f"{where}: unknown compute dtype {name!r}; expected one of {DTYPES}")
  return jnp.dtype(name)


def compute_params(params, dtype):
  """`params` with every floating leaf cast to `dtype` (a no-op for float32 params)."""
  dtype = jnp.dtype(dtype)

  def cast(x):
    return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != dtype else x

  return jax.tree.map(cast, params)
