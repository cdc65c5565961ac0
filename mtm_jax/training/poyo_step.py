"""POYO: pure loss, train step and forward pass. The caller jits them (with donation).

Batches are those of mtm_jax.datasets.events (see events.BATCH_KEYS): the model's inputs
plus output_values [B, Q, D] (behaviour / scale) and output_weights [B, Q]. A task with
output dim d_t reads the first d_t entries of output_values.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mtm_jax.models import poyo
from mtm_jax.training import precision
from mtm_jax.training.step import TrainState, init_state, skip_nonfinite  # noqa: F401  (init_state re-exported for the POYO loop)


def weighted_mse(outputs: dict, batch, tasks) -> tuple[jax.Array, dict]:
  """Per task: sum_q w_q * mean_d (pred - target)^2 / sum_q w_q over its real queries
  (output_mask & output_task == task id); the loss is the sum over tasks.

  outputs {task: [B, Q, d_t]}; batch output_values [B, Q, D >= d_t], output_weights [B, Q],
  output_mask [B, Q], output_task [B, Q]; tasks {name: dim}. Returns (loss, aux) with
  aux[f"loss/{task}"] and aux[f"weight/{task}"] (the weight sum)."""
  total, aux = jnp.zeros((), jnp.float32), {}
  for name, i in poyo.task_ids(tasks).items():
    pred = outputs[name].astype(jnp.float32)  # [B, Q, d]
    target = batch["output_values"][..., : pred.shape[-1]].astype(jnp.float32)
    mine = batch["output_mask"] & (batch["output_task"] == i)  # [B, Q]
    w = jnp.where(mine, batch["output_weights"].astype(jnp.float32), 0.0)
    err = jnp.mean(jnp.square(pred - target), axis=-1)  # [B, Q]
    w_sum = jnp.sum(w)
    loss = jnp.where(w_sum > 0, jnp.sum(w * err) / jnp.where(w_sum > 0, w_sum, 1.0), 0.0)
    total = total + loss
    aux[f"loss/{name}"], aux[f"weight/{name}"] = loss, w_sum
  return total, aux


def loss_fn(graphdef, params, batch, key, *, tasks, dtype="float32") -> tuple[jax.Array, dict]:
  """Weighted MSE of the model `graphdef`/`params` on `batch`; key: dropout (None = off);
  dtype: compute dtype of the model (float32 params and loss; see training.precision)."""
  model = nnx.merge(graphdef, precision.compute_params(params, dtype))
  return weighted_mse(model(batch, key=key), batch, tasks)


def predict(graphdef, params, batch) -> dict[str, jax.Array]:
  """Deterministic forward pass: {task: [B, Q, d_t]} (scaled units)."""
  return nnx.merge(graphdef, params)(batch)


def new_rows_mask(params, n_unit_rows: int, n_session_rows: int):
  """A trainable mask like `params`: True only on rows >= n_unit_rows of the unit table
  and rows >= n_session_rows of the session table (the rows grow_vocab appended);
  everything else frozen. Leaves are bool arrays broadcastable to the parameters."""
  old = {paths[0]: n for paths, n in zip(poyo.embedding_paths().values(), (n_unit_rows, n_session_rows))}

  def leaf(path, p):
    head = str(getattr(path[0], "key", getattr(path[0], "name", path[0])))
    if head in old:
      return (jnp.arange(p.shape[0]) >= old[head])[:, None]  # [rows, 1]
    return jnp.zeros((), bool)

  return jax.tree_util.tree_map_with_path(leaf, params)


def _where_trainable(trainable, new, old):
  """`new` on trainable entries, `old` elsewhere (trees like the params)."""
  return jax.tree.map(lambda m, n, o: jnp.where(m, n, o), trainable, new, old)


def make_train_step(graphdef, tx: optax.GradientTransformation, *, tasks, trainable=None,
                    dtype="float32") -> Callable:
  """(state, batch, key) -> (state, metrics). key is the run key; the step's dropout key
  is fold_in(key, step), so a resumed run draws the same dropout. dtype: compute dtype
  (see loss_fn). Jit it with donated state (sharding.jit_train_step).

  trainable: None (everything trains) or a tree like the params of bool arrays (e.g.
  `new_rows_mask`): frozen entries get zero gradient, no update (no weight decay) and
  keep their optimiser moments, bit for bit. A step with a non-finite loss, gradient or
  update changes nothing but the step (step.skip_nonfinite; metrics["finite"] False)."""

  def train_step(state: TrainState, batch, key):
    step_key = jax.random.fold_in(key, state.step)
    grad_fn = jax.value_and_grad(loss_fn, argnums=1, has_aux=True)
    (loss, aux), grads = grad_fn(graphdef, state.params, batch, step_key, tasks=tasks, dtype=dtype)
    if trainable is not None:
      grads = jax.tree.map(lambda m, g: jnp.where(m, g, jnp.zeros((), g.dtype)), trainable, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if trainable is not None:
      params = _where_trainable(trainable, params, state.params)
      structure = jax.tree.structure(state.params)
      is_params = lambda x: jax.tree.structure(x) == structure
      opt_state = jax.tree.map(lambda n, o: _where_trainable(trainable, n, o) if is_params(n) else n,
                               opt_state, state.opt_state, is_leaf=is_params)
    new_state, finite = skip_nonfinite(state, params, opt_state, loss, grads, updates)
    metrics = dict(loss=loss, grad_norm=optax.global_norm(grads), param_norm=optax.global_norm(new_state.params),
                   finite=finite, **aux)
    return new_state, metrics

  return train_step
