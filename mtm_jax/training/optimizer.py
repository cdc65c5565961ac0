"""Optimisers from config: AdamW with the one-cycle schedule MtM uses; LAMB with its schedules
as POYO's reference uses it. Which tables are row tables (AdamW's per-row counts, LAMB's
row-sparse tables) is the model's business: each task passes their names (e.g.
tasks.ndt1.make_optimizer, tasks.poyo.make_optimizer); nothing here knows a model.

Row masks (training.rows) and step counts. PyTorch, the reference, keeps Adam's step
count per parameter and skips a parameter without a gradient entirely (no moment decay,
no weight decay, no step). A train step with a row mask (NDT1's batch session, POYO's
unit identification) keeps the frozen entries' parameters and moments (rows.where);
`row_adamw` also keeps their step counts: its count is a tree shaped like the row mask
([rows, 1, ...] int32 for a table in `row_tables`, [] elsewhere), incremented only where
the mask lets a step change things. A row that changes on k of t steps therefore gets
exactly the updates of an AdamW that saw only those k steps (moments, bias correction
with k, weight decay), while the learning rate is the schedule's at the global step
(PyTorch's LR scheduler is global too). Without a mask, or when every row changes on
every step, it is optax.adamw bit for bit.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from mtm_jax.training import rows


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Start at peak/div_factor, warm up over warmup_fraction of the steps, cosine down to
  start/final_div_factor (PyTorch's OneCycleLR)."""
  o = config.optimizer
  return optax.cosine_onecycle_schedule(
    transition_steps=config.train.steps,
    peak_value=o.learning_rate,
    pct_start=o.warmup_fraction,
    div_factor=o.div_factor,
    final_div_factor=o.final_div_factor,
  )


class RowAdamState(NamedTuple):
  count: Any  # like the params: [] int32, or [rows, 1, ...] int32 for a row table (steps it changed on)
  mu: Any  # first moments, like the params
  nu: Any  # second moments, like the params


def row_counts(params, row_tables=()):
  """Zero step counts shaped like a row mask of `params`: [rows, 1, ...] int32 for the
  leaves under a table named in `row_tables` (first path key), [] int32 elsewhere."""

  def leaf(path, p):
    shape = (p.shape[0],) + (1,) * (p.ndim - 1) if rows.path_head(path) in row_tables else ()
    return jnp.zeros(shape, jnp.int32)

  return jax.tree_util.tree_map_with_path(leaf, params)


def scale_by_row_adam(
  b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, row_tables=()
) -> optax.GradientTransformationExtraArgs:
  """optax.scale_by_adam with a step count per row-mask entry (row_counts).

  update(grads, state, params, row_mask=None): row_mask is a training.rows mask of the
  step (None: everything changes). Each count grows by one where the mask is True, and
  the bias correction of an entry uses its own count (at least 1, so that rows that
  never changed stay finite). The moments are updated everywhere, as optax does: the
  train step keeps frozen rows' moments and parameters with rows.where. A mask with
  rows for a table that is not in `row_tables` (one count for the whole table) is an
  error."""

  def init(params):
    zeros = lambda p: jnp.zeros_like(p)
    return RowAdamState(row_counts(params, row_tables), jax.tree.map(zeros, params), jax.tree.map(zeros, params))

  def count_step(count, m):
    if jnp.shape(m) and jnp.shape(count) != jnp.shape(m):
      raise ValueError(
        f"row mask of shape {jnp.shape(m)} for a leaf with step counts of shape {jnp.shape(count)}: "
        f"name its table in row_tables (now {tuple(row_tables)})"
      )
    return jnp.where(m, optax.safe_increment(count), count)

  def update(grads, state, params=None, *, row_mask=None, **extra):
    del params, extra
    mu = optax.tree.update_moment(grads, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(grads, state.nu, b2, 2)
    if row_mask is None:
      count = jax.tree.map(optax.safe_increment, state.count)
    else:
      count = jax.tree.map(count_step, state.count, row_mask)

    def one(m, v, c):  # optax.tree.bias_correction of one leaf with its own count
      c = jnp.maximum(c, 1)
      m_hat = m / (1 - b1**c).astype(m.dtype)
      v_hat = v / (1 - b2**c).astype(v.dtype)
      return m_hat / (jnp.sqrt(v_hat) + eps)

    return jax.tree.map(one, mu, nu, count), RowAdamState(count, mu, nu)

  return optax.GradientTransformationExtraArgs(init, update)


def row_adamw(
  learning_rate: optax.ScalarOrSchedule,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  weight_decay: float = 1e-4,
  row_tables=(),
) -> optax.GradientTransformationExtraArgs:
  """optax.adamw (decoupled weight decay) with scale_by_row_adam: per-row step counts
  for the tables in `row_tables` and per-leaf ones elsewhere; update(..., row_mask=mask).
  The learning rate follows the global step (its own count)."""
  return optax.chain(
    scale_by_row_adam(b1, b2, eps, row_tables),
    optax.add_decayed_weights(weight_decay),
    optax.scale_by_learning_rate(learning_rate),
  )


def make_optimizer(config: ml_collections.ConfigDict, row_tables=()) -> optax.GradientTransformationExtraArgs:
  """row_adamw with the one-cycle schedule; row_tables: the tables whose rows a row mask
  may change separately (rows.only_row, rows.rows_from; the task names them from its model)."""
  o = config.optimizer
  return row_adamw(learning_rate_schedule(config), weight_decay=o.weight_decay, row_tables=tuple(row_tables))


# ------------------------------------------------------------------------------------------
# POYO: LAMB as the reference uses it
# ------------------------------------------------------------------------------------------


class LambState(NamedTuple):
  count: jax.Array  # [] int32, updates applied so far (drives the beta1 schedule)
  mu: Any  # first moments, like the params
  nu: Any  # second moments, like the params


def poyo_learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Peak lr = base_learning_rate x data.batch_size, held for constant_fraction of the
  steps, then cosine down to peak / final_div_factor (the reference's OneCycleLR with
  div_factor=1)."""
  o = config.optimizer
  peak = o.base_learning_rate * config.data.batch_size
  steps = int(config.train.steps)
  hold = int(round(o.constant_fraction * steps))
  decay = optax.cosine_decay_schedule(peak, decay_steps=max(steps - hold, 1), alpha=1.0 / o.final_div_factor)
  return optax.join_schedules([optax.constant_schedule(peak), decay], [hold])


def poyo_momentum_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """beta1 per step. With cycle_momentum (PyTorch's OneCycleLR default, which the
  reference keeps) beta1 goes by cosine from max_momentum to base_momentum over the
  constant-lr phase, then back up over the decay; otherwise it is constant b1."""
  o = config.optimizer
  if not o.cycle_momentum:
    return optax.constant_schedule(o.b1)
  steps = int(config.train.steps)
  hold = int(round(o.constant_fraction * steps))
  down = optax.cosine_decay_schedule(o.max_momentum, max(hold, 1), alpha=o.base_momentum / o.max_momentum)
  up = lambda t: (
    o.max_momentum
    - (o.max_momentum - o.base_momentum) * 0.5 * (1 + jnp.cos(jnp.pi * jnp.clip(t / max(steps - hold, 1), 0.0, 1.0)))
  )
  return optax.join_schedules([down, up], [hold])


def sparse_lamb(
  learning_rate: optax.ScalarOrSchedule,
  b1: optax.ScalarOrSchedule = 0.9,
  b2: float = 0.999,
  eps: float = 1e-6,
  weight_decay: float = 0.0,
  trust_clip: float = 10.0,
  sparse_mask: Any = None,
) -> optax.GradientTransformation:
  """LAMB without bias correction, per-tensor trust ratio min(|w|, trust_clip) / |adam step|
  (1 when either norm is 0), weight decay on every parameter (inside the adam step).

  sparse_mask: None or a pytree like the params of bools; True marks a row-sparse
  embedding table [rows, dim]: its rows whose gradient is all zero (units and sessions
  absent from the batch) are not changed, and their moments are reset to zero, as the
  reference's SparseLamb does (its moment decay is zero on those rows). Norms still
  cover the whole table. b1 may be a schedule (momentum cycling).

  One global count, not row_adamw's per-row ones: without bias correction a step count
  matters only to the learning rate and beta1 schedules, which are global (as PyTorch's
  OneCycleLR sets them for the whole parameter group). Entries a row mask freezes keep
  their values and moments through the train step's rows.where, as PyTorch skips a
  parameter without a gradient; the row_mask extra argument is not needed here."""

  def init(params):
    zeros = lambda p: jnp.zeros_like(p)
    return LambState(count=jnp.zeros((), jnp.int32), mu=jax.tree.map(zeros, params), nu=jax.tree.map(zeros, params))

  def update(grads, state, params):
    if params is None:
      raise ValueError("sparse_lamb needs the params (trust ratio and weight decay)")
    beta1 = b1(state.count) if callable(b1) else b1
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    sparse = sparse_mask if sparse_mask is not None else jax.tree.map(lambda _: False, params)

    def one(g, m, v, p, is_sparse):
      g32 = g.astype(jnp.float32)
      m = beta1 * m + (1 - beta1) * g32
      v = b2 * v + (1 - b2) * g32 * g32
      if is_sparse:  # [rows, dim]: rows without gradient keep their values, moments reset
        used = rows.rows_with_gradient(g32)
        m, v = rows.where(used, m, jnp.zeros_like(m)), rows.where(used, v, jnp.zeros_like(v))
      step = m / (jnp.sqrt(v) + eps) + weight_decay * p
      w_norm = jnp.minimum(jnp.linalg.norm(p.astype(jnp.float32)), trust_clip)
      s_norm = jnp.linalg.norm(step)
      trust = jnp.where((w_norm > 0) & (s_norm > 0), w_norm / jnp.where(s_norm > 0, s_norm, 1.0), 1.0)
      u = -lr * trust * step
      if is_sparse:
        u = rows.where(used, u, jnp.zeros_like(u))
      return u.astype(p.dtype), m, v

    flat_g, tree = jax.tree.flatten(grads)
    flat = [
      one(g, m, v, p, bool(s))
      for g, m, v, p, s in zip(
        flat_g,
        tree.flatten_up_to(state.mu),
        tree.flatten_up_to(state.nu),
        tree.flatten_up_to(params),
        tree.flatten_up_to(sparse),
      )
    ]
    unflat = lambda i: tree.unflatten([f[i] for f in flat])
    return unflat(0), LambState(count=state.count + 1, mu=unflat(1), nu=unflat(2))

  return optax.GradientTransformation(init, update)
