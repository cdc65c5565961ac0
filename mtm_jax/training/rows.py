"""Row masks: which rows of which parameter tables a train step may change.

A row mask is a tree shaped like the parameters whose leaves are bool arrays that
broadcast against the leaf: `[rows, 1, ...]` for a table some of whose rows may change,
`[]` True (the whole leaf may change) or `[]` False (frozen). One mechanism serves
NDT1's per-session stitchers (only the batch's session row), POYO's unit identification
(only the rows a new session appended) and the row-sparse LAMB (only rows with a
gradient); `where` applies a mask to parameters and to the parameter-shaped parts of an
optimiser state alike. The train step also hands the mask to the optimiser: AdamW
(training.optimizer.row_adamw) counts Adam's steps per mask entry, so a row that changes
on k of t steps is bias-corrected with k, as PyTorch's per-parameter step counts do.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from mtm_jax.parallel import sharding


def path_head(path) -> str:
  """The first key of a parameter's pytree path ('stitch_in' of 'stitch_in/kernel')."""
  return sharding.key_name(path[0])


def _row_vector(rows, ndim: int) -> jax.Array:
  """[rows] bool -> [rows, 1, ...] broadcastable to a leaf of `ndim` dimensions."""
  return rows.reshape((-1,) + (1,) * (ndim - 1))


def table_mask(params, tables: Mapping[str, object], rest: bool):
  """A row mask: leaves under each table named in `tables` (first path key) get
  `tables[name](n_rows) -> [n_rows] bool`; every other leaf gets `rest` ([] bool)."""

  def leaf(path, p):
    rows = tables.get(path_head(path))
    return _row_vector(rows(p.shape[0]), p.ndim) if rows is not None else jnp.asarray(rest)

  return jax.tree_util.tree_map_with_path(leaf, params)


def only_row(params, tables, row: jax.Array, rest: bool = True):
  """Row `row` ([] int32) of each table in `tables`, and every other leaf when `rest` (NDT1:
  the batch's session row of the per-session layers, and the shared weights unless frozen)."""
  return table_mask(params, {t: (lambda n: jnp.arange(n) == row) for t in tables}, rest=rest)


def rows_from(params, first_rows: Mapping[str, int]):
  """Rows >= first_rows[table] of each table, nothing else (POYO unit identification:
  the rows a new session appended)."""
  return table_mask(params, {t: (lambda n, k=k: jnp.arange(n) >= k) for t, k in first_rows.items()}, rest=False)


def rows_with_gradient(grad: jax.Array) -> jax.Array:
  """[rows, 1] bool: the rows of a [rows, dim] table's gradient that are not all zero."""
  return jnp.sum(jnp.abs(grad.astype(jnp.float32)), axis=-1, keepdims=True) > 0


def where(mask, new, old):
  """`new` where the row mask allows a change, `old` elsewhere. `new`/`old` are trees like
  the params, or optimiser states: their parameter-shaped parts are masked (moments, and
  row_adamw's per-row step counts, which the optimiser already advanced by the mask), the
  rest (global step counts of the schedules) taken from `new`."""
  structure = jax.tree.structure(mask)
  is_params = lambda x: jax.tree.structure(x) == structure
  pick = lambda n, o: jax.tree.map(lambda m, a, b: jnp.where(m, a, b), mask, n, o)
  if is_params(new):
    return pick(new, old)
  return jax.tree.map(lambda n, o: pick(n, o) if is_params(n) else n, new, old, is_leaf=is_params)


def zero_frozen(mask, grads):
  """The gradients with zeros where the row mask allows no change."""
  return jax.tree.map(lambda m, g: jnp.where(m, g, jnp.zeros((), g.dtype)), mask, grads)
