"""The unit and session embedding tables of the spike-token models (POYO, spike-token MtM).

Both tables sit at the same parameter paths in every such model (`embedding_paths()`):
unit_emb/embedding [1 + units, D] and session_emb/embedding [1 + sessions, D], row 0
padding (zero). A model meeting new sessions grows them: `grow` appends fresh rows to a
model or its parameters, `load` puts a pretrained model's rows in front of a larger fresh
model's (the rows of datasets.events.vocabulary.Vocabulary, which only ever appends).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtm_jax.models import loading


def embedding_paths() -> dict[str, tuple[str, ...]]:
  """Parameter paths (in `nnx.state(model)` / its pure dict) of the growable tables."""
  return {"unit": ("unit_emb", "embedding"), "session": ("session_emb", "embedding")}


def embedding_filter():
  """An nnx filter selecting the unit and session tables (e.g. to train only them)."""
  return nnx.All(nnx.Param, nnx.Any(*(nnx.PathContains(p[0]) for p in embedding_paths().values())))


def make(n_units: int, n_sessions: int, dim: int, init, *, rngs: nnx.Rngs) -> tuple[nnx.Embed, nnx.Embed]:
  """(unit table [n_units + 1, D], session table [n_sessions + 1, D]) drawn by `init` in
  that order, row 0 of each set to zero (padding)."""
  unit_emb = nnx.Embed(n_units + 1, dim, embedding_init=init, rngs=rngs)
  session_emb = nnx.Embed(n_sessions + 1, dim, embedding_init=init, rngs=rngs)
  for table in (unit_emb, session_emb):
    table.embedding[...] = table.embedding[...].at[0].set(0.0)
  return unit_emb, session_emb


def count_params(model: nnx.Module, *, embeddings: bool = True) -> int:
  """Number of parameters; embeddings=False leaves out the unit and session tables."""
  state = nnx.state(model, nnx.Param if embeddings else nnx.All(nnx.Param, nnx.Not(embedding_filter())))
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(state)))


def grow(model_or_params, n_new_units: int, n_new_sessions: int, key: jax.Array, *, init_scale: float, where: str):
  """Appends fresh rows, N(0, init_scale), to the unit and session tables.

  model_or_params: a model built as `type(model)(n_units, n_sessions, hparams, rngs=...)`
  (returns a new one with the larger tables; the argument is not modified) or the pure
  dict of its parameters (returns a new pure dict; untouched entries are shared). Old rows
  keep their values and indices. Errors are prefixed by `where`."""
  if n_new_units < 0 or n_new_sessions < 0:
    raise ValueError(f"{where}: n_new_units and n_new_sessions must be >= 0, got {n_new_units}, {n_new_sessions}")
  if isinstance(model_or_params, Mapping):
    return _grow(model_or_params, n_new_units, n_new_sessions, key, init_scale, where)
  model = model_or_params
  params = _grow(nnx.to_pure_dict(nnx.state(model)), n_new_units, n_new_sessions, key, init_scale, where)
  new = nnx.eval_shape(
    lambda: type(model)(model.n_units + n_new_units, model.n_sessions + n_new_sessions, model.hparams, rngs=nnx.Rngs(0))
  )
  state = nnx.state(new)
  nnx.replace_by_pure_dict(state, params)
  nnx.update(new, state)
  return new


def _grow(params: Mapping, n_new_units: int, n_new_sessions: int, key: jax.Array, init_scale: float, where: str):
  n_new = dict(zip(embedding_paths(), (n_new_units, n_new_sessions)))
  keys = dict(zip(embedding_paths(), jax.random.split(key)))
  return _append_rows(params, lambda what, table: _drawn_rows(keys[what], n_new[what], table, init_scale), where)


def _drawn_rows(key: jax.Array, n: int, table: jax.Array, init_scale: float) -> jax.Array:
  """n fresh rows [n, D] for `table` [R, D], N(0, init_scale) drawn from `key`."""
  return init_scale * jax.random.normal(key, (n, table.shape[1]), table.dtype)


def _append_rows(params: Mapping, new_rows: Callable, where: str) -> dict:
  """`params` (a pure dict) with rows `new_rows(what, table)` appended to its unit and
  session tables (what: "unit" or "session"); the other entries are shared."""
  params = dict(params)
  for what, (outer, leaf) in embedding_paths().items():
    if outer not in params or leaf not in params[outer]:
      raise ValueError(f"{where}: parameters have no {what} table at {outer}/{leaf}")
    table = jnp.asarray(params[outer][leaf])
    params[outer] = dict(params[outer], **{leaf: jnp.concatenate([table, new_rows(what, table)], axis=0)})
  return params


def load(init_params, pretrained_params, *, where: str, key: jax.Array | None = None, init_scale: float = 0.02) -> dict:
  """`init_params` of a model with larger (or equal) unit and session tables, holding the
  pretrained model: its table rows in front of the fresh tables' remaining rows (the new
  units and sessions, left fresh) and every other parameter from `pretrained_params`.
  With `key`, the new rows are drawn N(0, init_scale) from it instead, as `grow` draws them
  (the pretrained parameters grown by `grow` with that key, in `init_params`' structure).

  Both are parameter trees of the same architecture (pure dicts, e.g.
  `nnx.to_pure_dict(nnx.state(model))` or a restored checkpoint's, or nnx.State); returns a
  pure dict of `init_params`' shapes, for `nnx.replace_by_pure_dict`. Raises ValueError,
  prefixed by `where`, naming a parameter missing from the pretrained model or of another
  shape, or a pretrained table with more rows than the fresh one (a different architecture)."""
  init, pre = (p if isinstance(p, dict) else nnx.to_pure_dict(p) for p in (init_params, pretrained_params))

  keys = dict(zip(embedding_paths(), jax.random.split(key))) if key is not None else None

  def rest(what, table):
    outer, leaf = embedding_paths()[what]
    fresh = init[outer][leaf]
    if table.shape[0] > fresh.shape[0] or table.shape[1:] != fresh.shape[1:]:
      raise ValueError(
        f"{where}: the {what} table {outer}/{leaf} has shape {table.shape}, this model's has "
        f"{fresh.shape} (at least as many rows, the same width)"
      )
    if keys is None:
      return jnp.asarray(fresh[table.shape[0] :], table.dtype)
    return _drawn_rows(keys[what], fresh.shape[0] - table.shape[0], table, init_scale)

  return loading.merge(init, _append_rows(pre, rest, where), where=where)
