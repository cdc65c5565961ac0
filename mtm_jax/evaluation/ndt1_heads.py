"""Supervised behaviour decoding heads fine-tuned on top of a (pre)trained NDT1.

A linear head reads the model's final features of the unmasked trial (given the
decoding prompt): choice from the mean over bins (logistic loss), whisker motion energy
and wheel speed per bin (squared error on targets standardised with the training trials'
mean and spread). Head and model are fine-tuned together on the training trials
(heads.Fit: AdamW), then scored on held-out trials: accuracy for choice, R^2 pooled over
trial x bin for the traces, the same numbers decoding.py reports for the frozen-model decoders.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtm_jax import masking, progress
from mtm_jax.datasets import pipeline
from mtm_jax.datasets import provenance
from mtm_jax.evaluation import decoding, heads


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


def finetune_head(
  trained,
  name: str,
  target: str,
  *,
  steps: int = 300,
  learning_rate: float = heads.LEARNING_RATE,
  batch_size: int = heads.BATCH_SIZE,
  seed: int = 0,
  train_split: str = "train",
  eval_split: str = "test",
) -> float:
  """Fine-tunes model + head for `target` of session `name` on train_split; returns the
  score on eval_split (choice accuracy, or pooled R^2 of a trace). `trained`: a
  tasks.base.Trained holding the session. The trained parameters are not changed. Raises
  decoding.Undecodable (before any training) when the splits cannot give the score.
  heads.Fit fits them; step i draws its dropout from fold_in(key(seed), i)."""
  if target not in heads.TARGETS:
    raise ValueError(f"decoding head: unknown target {target!r}; expected one of {sorted(heads.TARGETS)}")
  config, row = trained.config, trained.row(name)
  if target not in provenance.open_built(name, config.data.data_dir).info.features:  # e.g. nwb_binned: no choice
    raise decoding.Undecodable(f"data set {name!r} has no {target!r} field")
  fields = ("spikes", "trial_index", target)
  train = pipeline.load_split(name, config.data.data_dir, train_split, fields)
  test = pipeline.load_split(name, config.data.data_dir, eval_split, fields)
  y_train, y_test = heads.target_values(train, target), heads.target_values(test, target)
  heads.check_scorable(target, y_train, y_test, train_split=train_split, eval_split=eval_split)
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

  fit = heads.Fit(y_train, steps, learning_rate, batch_size, seed)
  params = fit.train(predict, params, lambda idx: x_train[idx])
  predict_test = jax.jit(predict)  # one compiled function for every test chunk
  out = np.concatenate([np.asarray(predict_test(params, x_test[i : i + 64], None)) for i in range(0, len(y_test), 64)])
  return fit.score(out, y_test)


def head_metrics(
  trained, name: str, *, steps: int, seed: int = 0, eval_split: str = "test", label: str = ""
) -> decoding.Decoded:
  """Decoded({"head_<metric>": score}, {}, {"head_<metric>": reason}) over every target,
  each score from its own fine-tuned head; a target the splits cannot score is skipped.
  One line per head
  (progress.Stage "<label>head <metric>")."""
  scores, skipped = {}, {}
  for target, metric in heads.TARGETS.items():
    with progress.Stage(f"{label}head {metric}") as stage:
      try:
        scores[f"head_{metric}"] = finetune_head(trained, name, target, steps=steps, seed=seed, eval_split=eval_split)
        stage.note = f"{scores[f'head_{metric}']:.4f} ({steps} steps)"
      except decoding.Undecodable as e:
        skipped[f"head_{metric}"] = str(e)
        stage.note = "skipped"
  return decoding.Decoded(scores, {}, skipped)
