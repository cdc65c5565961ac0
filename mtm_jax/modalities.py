"""NEDS's modalities, its five masking schemes and its losses, as pure functions.

A trial is K modalities x T bins of tokens: spikes ([B, T, N] counts), the trial-level
("static") choice and block ([B] class index, each tokenised into T tokens), and the
per-bin ("dynamic") wheel speed and whisker motion energy ([B, T] floats). A mask [B, T]
bool per modality says which tokens are replaced by the mask token; they are also the
targets of the loss.

| scheme          | spike tokens                  | behaviour tokens (each modality) |
|-----------------|-------------------------------|----------------------------------|
| encoding        | all masked                    | visible                          |
| decoding        | visible                       | all masked                       |
| self_spike      | Bernoulli(ratio) per bin      | visible                          |
| self_behaviour  | visible                       | Bernoulli(ratio) per bin, drawn  |
|                 |                               |   per modality                   |
| cross_modal     | one Bernoulli(ratio) mask per example, shared by every modality  |

NEDS names them encoding, decoding, self-spike, self-behavior and random_token.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

SPIKE = "spike"
STATIC = ("choice", "block")
DYNAMIC = ("wheel", "whisker")
MODALITIES = (SPIKE,) + STATIC + DYNAMIC  # NEDS's token order: neural, static, dynamic
CLASSES = {"choice": 2, "block": 3}
SCHEMES = ("encoding", "decoding", "self_spike", "self_behaviour", "cross_modal")
REDUCTIONS = ("neds", "masked_examples")


def check_modalities(modalities, where: str) -> tuple[str, ...]:
  """The modalities as a tuple, in MODALITIES order; ValueError (prefixed by `where`)
  on an unknown or repeated name."""
  modalities = tuple(modalities)
  unknown = [m for m in modalities if m not in MODALITIES]
  if unknown or len(set(modalities)) != len(modalities) or not modalities:
    raise ValueError(f"{where}: expected distinct modalities among {MODALITIES}, got {modalities}")
  return tuple(m for m in MODALITIES if m in modalities)


def draw_schemes(key: jax.Array, batch: int, weights=None) -> jax.Array:
  """[B] int32 indices into SCHEMES, drawn independently (uniformly, or with `weights`
  [5], which need not sum to 1)."""
  p = None
  if weights is not None:
    p = jnp.asarray(weights, jnp.float32)
    if p.shape != (len(SCHEMES),):
      raise ValueError(f"draw_schemes: weights must have one entry per scheme {SCHEMES}, got shape {p.shape}")
    p = p / p.sum()
  return jax.random.choice(key, len(SCHEMES), (batch,), p=p).astype(jnp.int32)


def scheme_masks(
  key: jax.Array, schemes, n_bins: int, modalities, ratio: float, per_example: bool = True
) -> dict[str, jax.Array]:
  """{modality: [B, T] bool} masks (True = masked, a target) for schemes [B] int32
  (indices into SCHEMES), T = n_bins.

  per_example=True: every example draws its own temporal masks. per_example=False is
  NEDS's mixed training as its code does it: the temporal masks of a scheme are drawn for
  the batch and row 0's is used by every example that drew that scheme (so those
  examples share one mask). In both, the self_spike and cross_modal spike masks are
  separate draws, each behaviour modality's self_behaviour mask is its own draw, and
  cross_modal uses the cross_modal spike mask for every modality.
  """
  if not 0.0 <= ratio <= 1.0:
    raise ValueError(f"scheme_masks: ratio must be in [0, 1], got {ratio}")
  modalities = check_modalities(modalities, "scheme_masks")
  schemes = jnp.asarray(schemes, jnp.int32)
  b = schemes.shape[0]
  keys = jax.random.split(key, 2 + len(modalities))
  draw = lambda k: jax.random.bernoulli(k, ratio, (b, n_bins))
  if not per_example:
    draw = lambda k, _draw=draw: jnp.broadcast_to(_draw(k)[:1], (b, n_bins))
  self_spike, shared = draw(keys[0]), draw(keys[1])
  ones, zeros = jnp.ones((b, n_bins), bool), jnp.zeros((b, n_bins), bool)
  out = {}
  for i, mod in enumerate(modalities):
    if mod == SPIKE:
      options = (ones, zeros, self_spike, zeros, shared)
    else:
      options = (zeros, ones, zeros, draw(keys[2 + i]), shared)
    out[mod] = jnp.stack(options)[schemes, jnp.arange(b)]  # [B, T]
  return out


def losses(preds, targets, masks, *, valid_neurons, present=None, reduction: str = "neds"):
  """(total [], {modality: []}) of the masked tokens.

  preds: the model's outputs ({"spike": [B, T, N] log-rates, wheel/whisker [B, T],
  choice/block [B, C] logits}); targets: the inputs' layout (spike counts [B, T, N],
  wheel/whisker [B, T], choice/block [B] int class); masks {modality: [B, T] bool};
  valid_neurons [B, N] bool (False = padding neuron); present {modality: [B] bool} or
  None (all present): an absent modality contributes nothing.

  Spikes: Poisson NLL exp(r) - y r (torch's PoissonNLLLoss, log_input, no Stirling term)
  over masked bins x valid neurons, divided by their count; wheel/whisker: squared error
  over masked bins / their count. A modality with nothing masked contributes 0.
  choice/block, cross-entropy of the logits:
  - reduction="neds" (default: NEDS's training objective, so a model trained here
    optimises what theirs did and imported checkpoints score as they did): the
    cross-entropy summed over every (present) example, masked or not, divided by the
    number of masked static tokens (examples x bins). So a decoding batch weighs it by
    1/T, and examples whose choice was visible still count.
  - reduction="masked_examples": mean cross-entropy over the (present) examples with
    at least one masked token of that modality: the examples whose class was hidden.
  """
  if reduction not in REDUCTIONS:
    raise ValueError(f"losses: reduction must be one of {REDUCTIONS}, got {reduction!r}")
  per = {}
  for mod, pred in preds.items():
    mask = masks[mod]
    here = present[mod] if present is not None and mod in present else jnp.ones(mask.shape[:1], bool)
    mask = mask & here[:, None]
    if mod in CLASSES:
      logp = jax.nn.log_softmax(pred.astype(jnp.float32), axis=-1)
      ce = -jnp.take_along_axis(logp, jnp.asarray(targets[mod], jnp.int32)[:, None], axis=-1)[:, 0]  # [B]
      if reduction == "neds":
        total, count = jnp.sum(ce * here), jnp.sum(mask)
      else:
        hidden = jnp.any(mask, axis=1)
        total, count = jnp.sum(ce * hidden), jnp.sum(hidden)
    else:
      y, r = jnp.asarray(targets[mod], jnp.float32), pred.astype(jnp.float32)
      if mod == SPIKE:
        mask = mask[:, :, None] & valid_neurons[:, None, :]
        err = jnp.exp(r) - y * r
      else:
        err = (r - y) ** 2
      total, count = jnp.sum(jnp.where(mask, err, 0.0)), jnp.sum(mask)
    per[mod] = jnp.where(count > 0, total / jnp.maximum(count, 1), 0.0)
  return sum(per.values()), per
