"""What every family's supervised behaviour heads share: their targets (`TARGETS`,
`target_values`, `check_scorable`) and how a head is fine-tuned with its model and scored
(`Fit`: AdamW at LEARNING_RATE on batches of BATCH_SIZE training trials; accuracy for
choice, R^2 pooled over trial x bin for the traces, the numbers decoding.py reports for
the frozen-model decoders). NDT1's heads: ndt1_heads.py; spike-token MtM's: poyo_mtm_heads.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.metrics import accuracy_score, r2_score

from mtm_jax.evaluation import decoding

LEARNING_RATE, BATCH_SIZE = 1e-3, 16  # the heads' AdamW step size and training batch (every family)

TARGETS = {
  "choice": "choice_accuracy",
  "whisker_motion_energy": "whisker_motion_energy_r2",
  "wheel_speed": "wheel_speed_r2",
}


def target_values(data: dict, target: str) -> np.ndarray:
  """The head's targets of `target` in data: choices as {0, 1} [K], traces [K, T] float32."""
  if target == "choice":
    return (np.asarray(data["choice"]) > 0).astype(np.float32)
  return np.asarray(data[target], np.float32)


def check_scorable(target: str, y_train: np.ndarray, y_test: np.ndarray, *, train_split: str, eval_split: str) -> None:
  """Raises decoding.Undecodable when the splits cannot give a score of `target`: no
  training or scored trials, a single choice class among the training trials, or a trace
  that is constant over the scored trials (R^2 undefined). y_*: [K] or [K, T] targets."""
  where = f"decoding head {target}"
  for split, y in ((train_split, y_train), (eval_split, y_test)):
    if len(y) == 0:
      raise decoding.Undecodable(f"{where}: the {split} split has no trials")
  if y_train.ndim == 1 and np.unique(y_train).size < 2:
    raise decoding.Undecodable(
      f"{where}: the {len(y_train)} {train_split} trials hold one class, so there is nothing to learn"
    )
  if y_train.ndim == 2 and np.ptp(y_test) == 0:
    raise decoding.Undecodable(
      f"{where}: the target is constant over the {len(y_test)} {eval_split} trials, so R^2 is undefined"
    )


class Fit:
  """How a head and its model are fine-tuned on training targets y_train ([K] choices in
  {0, 1}: logistic loss on per-trial outputs; [K, T] traces: squared error per bin on the
  targets standardised with their mean and spread) and scored (`score`). Shared by every
  family's heads."""

  def __init__(self, y_train, steps, learning_rate, batch_size, seed):
    self.y_train, self.per_bin = np.asarray(y_train, np.float32), np.ndim(y_train) == 2
    self.mean, self.scale = (
      (float(self.y_train.mean()), float(self.y_train.std()) or 1.0) if self.per_bin else (0.0, 1.0)
    )
    self.steps, self.learning_rate, self.seed = steps, learning_rate, seed
    self.batch_size = min(batch_size, len(self.y_train))

  def train(self, predict, params, inputs_of):
    """params after `steps` AdamW steps of predict(params, inputs_of(idx), key) on random
    batches idx of the training trials (step i: dropout key fold_in(key(seed), i)). A step
    whose loss, gradients or updates are not finite leaves the parameters and AdamW's state
    as they were (as the families' train step does)."""

    def loss(params, x, y, key):
      out = predict(params, x, key)
      if self.per_bin:
        return jnp.mean(jnp.square(out - (y - self.mean) / self.scale))
      return jnp.mean(optax.sigmoid_binary_cross_entropy(out, y))

    tx = optax.adamw(self.learning_rate, weight_decay=0.01)

    @jax.jit
    def step(params, opt_state, x, y, key, i):
      value, grads = jax.value_and_grad(loss)(params, x, y, jax.random.fold_in(key, i))
      updates, new_opt_state = tx.update(grads, opt_state, params)
      new_params = optax.apply_updates(params, updates)
      finite = jnp.isfinite(value) & jnp.isfinite(optax.global_norm(grads)) & jnp.isfinite(optax.global_norm(updates))
      keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
      return keep(new_params, params), keep(new_opt_state, opt_state)

    opt_state = tx.init(params)
    rng = np.random.default_rng(self.seed)
    key = jax.random.key(self.seed)
    for i in range(self.steps):
      idx = rng.choice(len(self.y_train), self.batch_size, replace=False)
      params, opt_state = step(params, opt_state, inputs_of(idx), jnp.asarray(self.y_train[idx]), key, jnp.int32(i))
    return params

  def score(self, out: np.ndarray, y_test: np.ndarray) -> float:
    """Choice accuracy of per-trial logits out [K], or pooled R^2 of per-bin outputs [K, T]."""
    if self.per_bin:
      return float(r2_score(y_test.ravel(), (out * self.scale + self.mean).ravel()))
    return float(accuracy_score(y_test, (out > 0).astype(np.float32)))
