"""Pure loss, train and validation steps. The caller jits them (with donation)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mtm_jax import masking
from mtm_jax.models import ndt1
from mtm_jax.training import precision


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
  step: jax.Array  # [] int32
  params: Any  # nnx.State of the model's parameters
  opt_state: Any


def masked_poisson_nll(log_rates, spikes, targets):
  """Poisson NLL on log-rates, exp(y_hat) - y * y_hat, summed over target entries.

  log_rates, spikes [B, T, N]; targets [B, T, N] bool. Returns (sum, number of targets).
  """
  nll = jnp.exp(log_rates) - spikes * log_rates
  return jnp.sum(jnp.where(targets, nll, 0.0)), jnp.sum(targets)


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


def batch_session(batch) -> jax.Array:
  """[] int32 session row of a batch (all its trials come from one session)."""
  return batch["session"][0] if "session" in batch else jnp.zeros((), jnp.int32)


def masked_nll(graphdef, params, batch, regions, key, *, mode: str, mask_config: masking.MaskConfig,
               train: bool, dtype="float32"):
  """Summed masked Poisson NLL of one batch (the reference backpropagates the sum).

  batch["spikes"] [B, T, N] (zero-padded to the model's N), batch["session"] [B] int32
  (optional, default row 0), batch["valid"] [B] bool (optional: rows that only pad a
  partial batch are False and carry no targets); regions [S, N] int32 region id of each
  session's neurons (-1 = padding). The key draws the scheme (for "mtm"), the mask and,
  when `train`, dropout. dtype: compute dtype of the forward pass (params and the loss
  stay float32; see training.precision). Returns (sum, dict(n_targets, scheme)).
  """
  k_scheme, k_mask, k_dropout = jax.random.split(key, 3)
  spikes = batch["spikes"].astype(jnp.float32)
  session = batch_session(batch)
  scheme = masking.sample_scheme(k_scheme, mode)
  masked = masking.apply_scheme(k_mask, spikes, regions[session], scheme, mask_config)
  model = nnx.merge(graphdef, precision.compute_params(params, dtype))
  prompt = jnp.minimum(masked.scheme, len(masking.SCHEMES) - 1)  # unused for temporal
  log_rates = model(masked.inputs, prompt=prompt, session=session, causal=masked.causal,
                    key=k_dropout if train else None).astype(jnp.float32)
  targets = masked.targets & batch["valid"][:, None, None] if "valid" in batch else masked.targets
  total, count = masked_poisson_nll(log_rates, spikes, targets)
  return total, dict(n_targets=count, scheme=scheme)


def _is_session_param(path) -> bool:
  first = path[0]
  return str(getattr(first, "key", getattr(first, "name", ""))) in ndt1.SESSION_PARAMS


def keep_session_rows(new, old, session):
  """`new` in row `session` of every per-session table (ndt1.SESSION_PARAMS) and in all
  shared parameters; `old` in the other sessions' rows. Trees shaped like the params."""

  def pick(path, n, o):
    if not _is_session_param(path):
      return n
    row = (jnp.arange(n.shape[0]) == session).reshape((-1,) + (1,) * (n.ndim - 1))
    return jnp.where(row, n, o)

  return jax.tree_util.tree_map_with_path(pick, new, old)


def _lazy_session_update(params, new_params, opt_state, new_opt_state, session):
  """Only the batch's session rows of per-session tables change, in the parameters and
  in every params-shaped part of the optimiser state (as PyTorch's optimisers skip
  parameters without gradients): other sessions' stitchers keep their values and
  moments instead of drifting on momentum and weight decay."""
  structure = jax.tree.structure(params)
  is_params = lambda x: jax.tree.structure(x) == structure
  fix = lambda n, o: keep_session_rows(n, o, session) if is_params(n) else n
  return (keep_session_rows(new_params, params, session),
          jax.tree.map(fix, new_opt_state, opt_state, is_leaf=is_params))


def make_train_step(graphdef, tx: optax.GradientTransformation, mode: str,
                    mask_config: masking.MaskConfig, *, dtype="float32") -> Callable:
  """(state, batch, regions [S, N], key) -> (state, metrics). Key = run key; the step's
  key is fold_in(key, step), so a resumed run draws the same masks and dropout. A step
  with a non-finite loss, gradient or update changes nothing but the step
  (skip_nonfinite; metrics["finite"] is False). dtype: the compute dtype (see
  masked_nll). Jit it with donated state (sharding.jit_train_step)."""

  def train_step(state: TrainState, batch, regions, key):
    step_key = jax.random.fold_in(key, state.step)
    grad_fn = jax.value_and_grad(masked_nll, argnums=1, has_aux=True)
    (total, aux), grads = grad_fn(graphdef, state.params, batch, regions, step_key, mode=mode,
                                  mask_config=mask_config, train=True, dtype=dtype)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    params, opt_state = _lazy_session_update(state.params, params, state.opt_state, opt_state,
                                             batch_session(batch))
    new_state, finite = skip_nonfinite(state, params, opt_state, total, grads, updates)
    metrics = dict(loss=total / jnp.maximum(aux["n_targets"], 1), nll_sum=total, n_targets=aux["n_targets"],
                   scheme=aux["scheme"], grad_norm=optax.global_norm(grads), finite=finite)
    return new_state, metrics

  return train_step
