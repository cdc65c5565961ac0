"""Supervised behaviour decoding heads fine-tuned on top of a (pre)trained NDT1, and the
fitting every family's heads share (`Fit`; spike-token MtM's: poyo_mtm_heads.py).

A linear head reads the model's final features of the unmasked trial (given the
decoding prompt): choice from the mean over bins (logistic loss), whisker motion energy
and wheel speed per bin (squared error on targets standardised with the training trials'
mean and spread). Head and model are fine-tuned together on the training trials with
AdamW, then scored on held-out trials: accuracy for choice, R^2 pooled over trial x bin
for the traces, the same numbers decoding.py reports for the frozen-model decoders.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.metrics import accuracy_score, r2_score

from mtm_jax import masking, progress
from mtm_jax.datasets import pipeline
from mtm_jax.datasets import provenance
from mtm_jax.evaluation import decoding

LEARNING_RATE, BATCH_SIZE = 1e-3, 16  # the heads' AdamW step size and training batch (every family)

TARGETS = {
  "choice": "choice_accuracy",
  "whisker_motion_energy": "whisker_motion_energy_r2",
  "wheel_speed": "wheel_speed_r2",
}


class BehaviourHead(nnx.Module):
  """Linear(D, 1) on features [B, T, D]: per trial (mean over bins) or per bin."""

  def __init__(self, width: int, per_bin: bool, *, rngs: nnx.Rngs):
    self.linear = nnx.Linear(width, 1, rngs=rngs)
    self.per_bin = per_bin

  def __call__(self, hidden):
    """hidden [B, T, D] -> [B, T] (per bin) or [B] (per trial)."""
    x = hidden if self.per_bin else jnp.mean(hidden, axis=1, keepdims=True)
    out = self.linear(x)[..., 0]
    return out if self.per_bin else out[:, 0]


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


def finetune_head(
  trained,
  name: str,
  target: str,
  *,
  make_step,
  init_state,
  steps: int = 300,
  learning_rate: float = LEARNING_RATE,
  batch_size: int = BATCH_SIZE,
  seed: int = 0,
  train_split: str = "train",
  eval_split: str = "test",
) -> float:
  """Fine-tunes model + head for `target` of session `name` on train_split; returns the
  score on eval_split (choice accuracy, or pooled R^2 of a trace). `trained`: a
  tasks.base.Trained holding the session. The trained parameters are not changed. Raises
  decoding.Undecodable (before any training) when the splits cannot give the score.
  make_step(loss, tx) and init_state(params, tx): the train step factory and its state
  (training.step's, handed in by the task: evaluation does not import training); step i
  draws its dropout from fold_in(key(seed), i)."""
  if target not in TARGETS:
    raise ValueError(f"decoding head: unknown target {target!r}; expected one of {sorted(TARGETS)}")
  config, row = trained.config, trained.row(name)
  if target not in provenance.open_built(name, config.data.data_dir).info.features:  # e.g. nwb_binned: no choice
    raise decoding.Undecodable(f"data set {name!r} has no {target!r} field")
  fields = ("spikes", "trial_index", target)
  train = pipeline.load_split(name, config.data.data_dir, train_split, fields)
  test = pipeline.load_split(name, config.data.data_dir, eval_split, fields)
  y_train, y_test = target_values(train, target), target_values(test, target)
  check_scorable(target, y_train, y_test, train_split=train_split, eval_split=eval_split)
  per_bin = y_train.ndim == 2
  x_train = jnp.asarray(pipeline.pad_neurons(train["spikes"], trained.n_neurons), jnp.float32)
  x_test = jnp.asarray(pipeline.pad_neurons(test["spikes"], trained.n_neurons), jnp.float32)
  prompt = masking.SCHEMES.index(config.eval.decoding_prompt) if config.model.use_prompt else 0

  model = nnx.merge(trained.graphdef, jax.tree.map(jnp.asarray, jax.device_get(trained.params)))
  head = BehaviourHead(model.final_norm.num_features, per_bin, rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split((model, head), nnx.Param)

  def predict(params, x, key):
    m, h = nnx.merge(graphdef, params)
    return h(m.encode(x, prompt=prompt, session=row, key=key))

  fit = Fit(y_train, make_step, init_state, steps, learning_rate, batch_size, seed)
  params = fit.train(predict, params, lambda idx: x_train[idx])
  predict_test = jax.jit(predict)  # one compiled function for every test chunk
  out = np.concatenate([np.asarray(predict_test(params, x_test[i : i + 64], None)) for i in range(0, len(y_test), 64)])
  return fit.score(out, y_test)


class Fit:
  """How a head and its model are fine-tuned on training targets y_train ([K] choices in
  {0, 1}: logistic loss on per-trial outputs; [K, T] traces: squared error per bin on the
  targets standardised with their mean and spread) and scored (`score`). Shared by every
  family's heads; make_step and init_state: see finetune_head."""

  def __init__(self, y_train, make_step, init_state, steps, learning_rate, batch_size, seed):
    self.y_train, self.per_bin = np.asarray(y_train, np.float32), np.ndim(y_train) == 2
    self.mean, self.scale = (
      (float(self.y_train.mean()), float(self.y_train.std()) or 1.0) if self.per_bin else (0.0, 1.0)
    )
    self.make_step, self.init_state = make_step, init_state
    self.steps, self.learning_rate, self.seed = steps, learning_rate, seed
    self.batch_size = min(batch_size, len(self.y_train))

  def train(self, predict, params, inputs_of):
    """params after `steps` AdamW steps of predict(params, inputs_of(idx), key) on random
    batches idx of the training trials (step i: dropout key fold_in(key(seed), i))."""

    def loss(params, batch, consts, key):
      out = predict(params, batch["x"], key)
      if self.per_bin:
        return jnp.mean(jnp.square(out - (batch["y"] - self.mean) / self.scale)), {}
      return jnp.mean(optax.sigmoid_binary_cross_entropy(out, batch["y"])), {}

    tx = optax.adamw(self.learning_rate, weight_decay=0.01)
    step = jax.jit(self.make_step(loss, tx))
    state = self.init_state(params, tx)
    rng = np.random.default_rng(self.seed)
    key = jax.random.key(self.seed)
    for _ in range(self.steps):
      idx = rng.choice(len(self.y_train), self.batch_size, replace=False)
      state, _ = step(state, dict(x=inputs_of(idx), y=jnp.asarray(self.y_train[idx])), None, key)
    return state.params

  def score(self, out: np.ndarray, y_test: np.ndarray) -> float:
    """Choice accuracy of per-trial logits out [K], or pooled R^2 of per-bin outputs [K, T]."""
    if self.per_bin:
      return float(r2_score(y_test.ravel(), (out * self.scale + self.mean).ravel()))
    return float(accuracy_score(y_test, (out > 0).astype(np.float32)))


def head_metrics(
  trained, name: str, *, steps: int, seed: int = 0, eval_split: str = "test", trainer: dict, label: str = ""
) -> decoding.Decoded:
  """Decoded({"head_<metric>": score}, {}, {"head_<metric>": reason}) over every target,
  each score from its own fine-tuned head; a target the splits cannot score is skipped.
  trainer: dict(make_step=, init_state=) (see finetune_head). One line per head
  (progress.Stage "<label>head <metric>")."""
  scores, skipped = {}, {}
  for target, metric in TARGETS.items():
    with progress.Stage(f"{label}head {metric}") as stage:
      try:
        scores[f"head_{metric}"] = finetune_head(
          trained, name, target, steps=steps, seed=seed, eval_split=eval_split, **trainer
        )
        stage.note = f"{scores[f'head_{metric}']:.4f} ({steps} steps)"
      except decoding.Undecodable as e:
        skipped[f"head_{metric}"] = str(e)
        stage.note = "skipped"
  return decoding.Decoded(scores, {}, skipped)
