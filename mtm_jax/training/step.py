"""Pure loss, train and validation steps. The caller jits them (with donation)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mtm_jax import masking


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


def masked_nll(graphdef, params, batch, regions, key, session, *, mode: str,
               mask_config: masking.MaskConfig, train: bool):
  """Summed masked Poisson NLL of one batch (the reference backpropagates the sum).

  batch["spikes"] [B, T, N]; regions [N] int32; the key draws the scheme (for "mtm"),
  the mask and, when `train`, dropout. Returns (sum, dict(n_targets, scheme)).
  """
  k_scheme, k_mask, k_dropout = jax.random.split(key, 3)
  spikes = batch["spikes"].astype(jnp.float32)
  scheme = masking.sample_scheme(k_scheme, mode)
  masked = masking.apply_scheme(k_mask, spikes, regions, scheme, mask_config)
  model = nnx.merge(graphdef, params)
  prompt = jnp.minimum(masked.scheme, len(masking.SCHEMES) - 1)  # unused for temporal
  log_rates = model(masked.inputs, prompt=prompt, session=session, causal=masked.causal,
                    key=k_dropout if train else None)
  total, count = masked_poisson_nll(log_rates, spikes, masked.targets)
  return total, dict(n_targets=count, scheme=scheme)


def make_train_step(graphdef, tx: optax.GradientTransformation, mode: str,
                    mask_config: masking.MaskConfig) -> Callable:
  """(state, batch, regions, key, session) -> (state, metrics). Key = run key; the step's
  key is fold_in(key, step), so a resumed run draws the same masks and dropout."""

  def train_step(state: TrainState, batch, regions, key, session=0):
    step_key = jax.random.fold_in(key, state.step)
    grad_fn = jax.value_and_grad(masked_nll, argnums=1, has_aux=True)
    (total, aux), grads = grad_fn(graphdef, state.params, batch, regions, step_key, session, mode=mode,
                                  mask_config=mask_config, train=True)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(loss=total / jnp.maximum(aux["n_targets"], 1), nll_sum=total, n_targets=aux["n_targets"],
                   scheme=aux["scheme"], grad_norm=optax.global_norm(grads))
    return TrainState(state.step + 1, params, opt_state), metrics

  return train_step
