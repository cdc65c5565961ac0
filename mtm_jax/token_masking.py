"""MtM's masking schemes on spike tokens (the spike-token MtM family), as pure functions.

MtM hides entries of binned counts; here the same schemes act on a trial's spike tokens.
A mask is a product of a unit set and a bin set per trial (B trials, N unit slots, T bins
of the scoring grid):

  hidden(b, t, n) = hide_units[b, n] & hide_bins[b, t]
  target(b, t, n) = score_units[b, n] & score_bins[b, t]

A spike token of unit n in bin t is dropped iff hidden(b, t, n); the start and end tokens
of unit n (they only say that the unit is recorded) are dropped iff the unit is hidden at
every bin. Dropping is a key mask on the encoder's cross-attention (`keep_tokens`); no
token is rebuilt.

| scheme        | hidden units                         | hidden bins       | targets                   |
|---------------|--------------------------------------|-------------------|---------------------------|
| neuron        | Bernoulli(ratio) per (trial, unit)   | all               | the hidden units          |
| temporal      | all                                  | Bernoulli(ratio)  | the hidden bins           |
|               |                                      |   per (trial, bin)|                           |
| causal        | all                                  | t >= c, c drawn   | bins t >= c               |
|               |                                      |   per trial in    |                           |
|               |                                      |   [T (1 - causal_ratio), T) |                 |
| inter-region  | one region drawn per trial: its units| all               | that region's units       |
| intra-region  | one region r drawn per trial: units  | all               | the drawn units of r      |
|               |   outside r, and Bernoulli(ratio) of |                   |                           |
|               |   r's units                          |                   |                           |

Scheme indices follow mtm_jax.masking (SCHEMES order = prompt index, then temporal), so
the prompts and the sampler are MtM's. Unit slots with region < 0 are padding: never
hidden targets, their tokens are padding already. The deterministic evaluation masks are
mtm_jax.masking.EvalMasks rows: `eval_mask` turns one into this product form.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mtm_jax import masking
from mtm_jax.datasets.events import tokens as tokens_lib


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TokenMask:
  """What one scheme hides and scores, per trial."""

  hide_units: jax.Array  # [B, N] bool
  hide_bins: jax.Array  # [B, T] bool
  score_units: jax.Array  # [B, N] bool
  score_bins: jax.Array  # [B, T] bool

  def targets(self) -> jax.Array:
    """[B, T, N] bool, the (bin, unit) entries the loss is computed on."""
    return self.score_bins[:, :, None] & self.score_units[:, None, :]

  def hidden(self) -> jax.Array:
    """[B, T, N] bool, the (bin, unit) entries whose spikes the model does not see."""
    return self.hide_bins[:, :, None] & self.hide_units[:, None, :]


def _draw_region(key, regions: jax.Array) -> jax.Array:
  """[B] int32: per trial, a region id drawn uniformly among those present in regions [B, N]."""
  return jax.vmap(masking.draw_region)(jax.random.split(key, regions.shape[0]), regions)


def sample_mask(
  key: jax.Array, scheme: jax.Array, regions: jax.Array, n_bins: int, config: masking.MaskConfig
) -> TokenMask:
  """The mask of scheme `scheme` (a traced index, masking's order) for trials with unit
  regions `regions` [B, N] int32 (< 0 = padding slot) on a grid of n_bins bins."""
  b, n = regions.shape
  valid = regions >= 0
  every_bin = jnp.ones((b, n_bins), bool)
  k_a, k_b = jax.random.split(key)

  def neuron(_):
    drawn = jax.random.bernoulli(k_a, config.ratio, (b, n)) & valid
    return drawn, every_bin, drawn, every_bin

  def temporal(ratio):
    def branch(_):
      bins = jax.random.bernoulli(k_a, ratio, (b, n_bins))
      return valid, bins, valid, bins

    return branch

  def causal(_):
    bins = masking.suffix_bins(k_a, b, n_bins, config.causal_ratio)
    return valid, bins, valid, bins

  def inter_region(_):
    inside = regions == _draw_region(k_a, regions)[:, None]
    return inside, every_bin, inside, every_bin

  def intra_region(_):
    inside = regions == _draw_region(k_a, regions)[:, None]
    drawn = inside & jax.random.bernoulli(k_b, config.ratio, (b, n))
    return (valid & ~inside) | drawn, every_bin, drawn, every_bin

  branches = [neuron, causal, inter_region, intra_region, temporal(config.ratio)]  # masking._SWITCH_ORDER
  hide_u, hide_t, score_u, score_t = jax.lax.switch(scheme, branches, None)
  return TokenMask(hide_u & valid, hide_t, score_u & valid, score_t)


def token_bins(timestamps: jax.Array, bin_size: float, n_bins: int) -> jax.Array:
  """[B, L] int32 bin of each token time (seconds from the trial start), clipped to the grid."""
  return jnp.clip(jnp.floor(timestamps / bin_size).astype(jnp.int32), 0, n_bins - 1)


def keep_tokens(mask: TokenMask, batch, bin_size: float) -> jax.Array:
  """[B, L] bool, the tokens the model sees: batch input_mask without the hidden ones.

  batch: token_unit [B, L] int32 (the token's unit slot), timestamps [B, L] (seconds from
  the trial start), token_type [B, L], input_mask [B, L] (tokens_lib)."""
  unit = batch["token_unit"]
  n_bins = mask.hide_bins.shape[1]
  bins = token_bins(batch["timestamps"], bin_size, n_bins)
  unit_hidden = jnp.take_along_axis(mask.hide_units, unit, axis=1)  # [B, L]
  bin_hidden = jnp.take_along_axis(mask.hide_bins, bins, axis=1)  # [B, L]
  whole_unit = unit_hidden & jnp.all(mask.hide_bins, axis=1, keepdims=True)
  spike = batch["token_type"] == tokens_lib.SPIKE
  dropped = jnp.where(spike, unit_hidden & bin_hidden, whole_unit)
  return batch["input_mask"] & ~dropped


def sample_queries(key: jax.Array, targets: jax.Array, n_queries: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """At most n_queries target entries per trial, drawn uniformly without replacement.

  targets [B, T, N] bool -> (bins [B, Q] int32, units [B, Q] int32, valid [B, Q] bool);
  a trial with fewer targets than Q fills its other queries with invalid entries."""
  b, t, n = targets.shape
  flat = targets.reshape(b, t * n)
  scores = jnp.where(flat, jax.random.uniform(key, flat.shape), -1.0)
  q = min(n_queries, t * n)
  top, index = jax.lax.top_k(scores, q)
  return (index // n).astype(jnp.int32), (index % n).astype(jnp.int32), top >= 0.0
