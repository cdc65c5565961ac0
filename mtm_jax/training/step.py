"""The train step of every model family: one factory around a family's loss.

The caller jits the step with a donated state (parallel.sharding.jit_train_step).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from mtm_jax.training import rows


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
  step: jax.Array  # [] int32
  params: Any  # nnx.State of the model's parameters
  opt_state: Any


def init_state(params, tx: optax.GradientTransformation) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def skip_nonfinite(state: TrainState, params, opt_state, loss, grads, updates) -> tuple[TrainState, jax.Array]:
  """The next train state: (step + 1, params, opt_state) when the loss, the gradients and
  the updates are all finite; otherwise the update is skipped (step + 1 with the old
  parameters and optimiser state, bit for bit, so the batch is consumed and dropped).
  Returns (state, [] bool finite)."""
  finite = jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(grads)) & jnp.isfinite(optax.global_norm(updates))
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  return TrainState(state.step + 1, keep(params, state.params), keep(opt_state, state.opt_state)), finite


# loss(params, batch, consts, key) -> (differentiated loss [], metrics dict of [] arrays)
Loss = Callable[[Any, dict, Any, jax.Array], tuple[jax.Array, dict]]


def make_train_step(
  loss: Loss, tx: optax.GradientTransformation, *, row_mask: Callable[[Any, dict], Any] | None = None
) -> Callable:
  """(state, batch, consts, key) -> (state, metrics) for a family's `loss`.

  consts: arrays every step reads (e.g. NDT1's region table; None when there are none).
  key: the run key; the step's key is fold_in(key, step), so a resumed run draws the
  same masks and dropout. row_mask(params, batch) -> a training.rows mask: the entries
  it freezes get zero gradient, no update (no weight decay) and keep their optimiser
  moments, bit for bit; the mask also goes to `tx` as tx.update(..., row_mask=mask)
  (optimizer.row_adamw counts each row's own steps; transformations without extra
  arguments ignore it). A step with a non-finite loss, gradient or update changes
  nothing but the step (skip_nonfinite; metrics["finite"] is False).

  metrics: the loss's metrics (its "loss" entry, if any, is what is logged; else the
  differentiated loss), grad_norm, param_norm and finite."""

  def train_step(state: TrainState, batch, consts, key):
    step_key = jax.random.fold_in(key, state.step)
    (value, aux), grads = jax.value_and_grad(loss, has_aux=True)(state.params, batch, consts, step_key)
    mask = row_mask(state.params, batch) if row_mask is not None else None
    if mask is not None:
      grads = rows.zero_frozen(mask, grads)
    extra = {} if mask is None else dict(row_mask=mask)
    updates, opt_state = optax.with_extra_args_support(tx).update(grads, state.opt_state, state.params, **extra)
    params = optax.apply_updates(state.params, updates)
    if mask is not None:
      params, opt_state = rows.where(mask, params, state.params), rows.where(mask, opt_state, state.opt_state)
    new_state, finite = skip_nonfinite(state, params, opt_state, value, grads, updates)
    metrics = {"loss": value, **aux}
    metrics.update(grad_norm=optax.global_norm(grads), param_norm=optax.global_norm(new_state.params), finite=finite)
    return new_state, metrics

  return train_step
