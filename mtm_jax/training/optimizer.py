"""Optimisers from config: AdamW with the one-cycle schedule MtM uses; LAMB for POYO."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from mtm_jax.models import poyo
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


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  return optax.adamw(
    learning_rate_schedule(config), b1=0.9, b2=0.999, eps=1e-8, weight_decay=config.optimizer.weight_decay
  )


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
  cover the whole table. b1 may be a schedule (momentum cycling)."""

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


def make_poyo_optimizer(config: ml_collections.ConfigDict, params) -> optax.GradientTransformation:
  """The reference's LAMB for POYO parameters `params` (an nnx.State or pure dict): the
  unit and session tables are row-sparse when config.optimizer.sparse_embeddings."""
  o = config.optimizer
  if o.name != "lamb":
    raise ValueError(f"config.optimizer.name: expected 'lamb', got {o.name!r}")
  tables = {p[0] for p in poyo.embedding_paths().values()}
  sparse = jax.tree_util.tree_map_with_path(
    lambda path, _: bool(o.sparse_embeddings) and rows.path_head(path) in tables, params
  )
  return sparse_lamb(
    poyo_learning_rate_schedule(config),
    poyo_momentum_schedule(config),
    o.b2,
    o.eps,
    o.weight_decay,
    o.trust_clip,
    sparse,
  )
