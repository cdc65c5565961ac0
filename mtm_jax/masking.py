"""Masking schemes of MtM as pure functions, and the deterministic evaluation masks.

Training masks: `apply_scheme(key, spikes, regions, scheme)` hides entries of a batch of
spike counts `[batch, time, neurons]` (hidden entries are set to 0, as in the reference)
and returns which entries the loss is computed on:

| scheme        | hidden                                          | targets                    |
|---------------|-------------------------------------------------|----------------------------|
| temporal      | Bernoulli(ratio) per (trial, bin), all neurons  | hidden entries             |
| neuron        | Bernoulli(ratio) per (trial, neuron), all bins  | hidden entries             |
| causal        | Bernoulli(causal_ratio) per (trial, bin), or    | hidden entries             |
|               |   with causal_suffix every bin t >= c, c drawn  |                            |
|               |   per trial in [T (1 - causal_ratio), T)        |                            |
|               |   + causal attention in the model               |                            |
| inter-region  | one region (drawn per batch): all its neurons   | hidden entries             |
| intra-region  | one region drawn per batch; all neurons outside | hidden entries inside the  |
|               |   it, and Bernoulli(ratio) per (trial, neuron)  |   region                   |
|               |   inside it                                     |                            |

MtM draws one of {neuron, causal, inter-region, intra-region} per batch, uniformly; the
drawn scheme's index is also the index of its prompt token. Temporal masking is the
baseline and is not in the MtM pool. Neurons whose region id is negative are padding:
always hidden, never targets.

Evaluation masks (`co_smoothing`, `forward_prediction`, `inter_region`, `intra_region`)
are `EvalMasks`: M masks, each hiding neurons x bins and scoring neurons x bins.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

# Order = prompt-token index (as in the reference code).
SCHEMES = ("neuron", "causal", "inter-region", "intra-region")
TEMPORAL = "temporal"
MTM = "mtm"
MODES = (MTM, TEMPORAL) + SCHEMES
_SWITCH_ORDER = SCHEMES + (TEMPORAL,)  # lax.switch branch index of each scheme


@dataclasses.dataclass(frozen=True)
class MaskConfig:
  ratio: float = 0.3  # Bernoulli rate of temporal, neuron and intra-region masking
  causal_ratio: float = 0.6  # Bernoulli rate over bins in causal masking (with causal_suffix: the suffix's extent)
  causal_suffix: bool = False  # causal masking hides a suffix of bins (spike-token MtM's), not random bins (MtM's)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MaskedBatch:
  inputs: jax.Array  # [batch, time, neurons] spike counts with hidden entries zeroed
  targets: jax.Array  # [batch, time, neurons] bool, entries the loss is computed on
  scheme: jax.Array  # [] int32, index in _SWITCH_ORDER; = prompt index for SCHEMES
  causal: jax.Array  # [] bool, whether the model must attend causally


def scheme_index(name: str) -> int:
  if name not in _SWITCH_ORDER:
    raise ValueError(f"masking scheme: unknown {name!r}; expected one of {_SWITCH_ORDER}")
  return _SWITCH_ORDER.index(name)


def sample_scheme(key: jax.Array, mode: str) -> jax.Array:
  """[] int32 scheme index for one batch: uniform over SCHEMES for 'mtm', else fixed."""
  if mode == MTM:
    return jax.random.randint(key, (), 0, len(SCHEMES), dtype=jnp.int32)
  return jnp.asarray(scheme_index(mode), jnp.int32)


def _bernoulli(key, p, shape):
  return jax.random.bernoulli(key, p, shape)


def draw_region(key, regions: jax.Array) -> jax.Array:
  """[] int32, a region id drawn uniformly among those present in `regions` [neurons]
  (ids < 0 are padding)."""
  ids = jnp.unique(jnp.where(regions >= 0, regions, -1), size=regions.shape[0], fill_value=-1)
  present = ids >= 0
  return ids[jax.random.choice(key, ids.shape[0], p=present / jnp.maximum(present.sum(), 1))].astype(jnp.int32)


def temporal_mask(key, shape, ratio):
  """Hidden [B,T,N]: whole bins, Bernoulli(ratio) per (trial, bin)."""
  b, t, n = shape
  hide = jnp.broadcast_to(_bernoulli(key, ratio, (b, t, 1)), shape)
  return hide, hide


def suffix_bins(key, batch: int, n_bins: int, ratio: float) -> jax.Array:
  """[batch, n_bins] bool: bins t >= c per row, c drawn uniformly in [n_bins (1 - ratio),
  n_bins) (at least 1, so a row keeps its first bin and hides its last)."""
  first = max(1, min(n_bins - 1, round(n_bins * (1.0 - ratio))))
  cut = jax.random.randint(key, (batch, 1), first, n_bins)
  return jnp.arange(n_bins)[None, :] >= cut


def suffix_mask(key, shape, ratio):
  """Hidden [B,T,N]: every bin from a cut drawn per trial (suffix_bins), all neurons."""
  b, t, n = shape
  hide = jnp.broadcast_to(suffix_bins(key, b, t, ratio)[:, :, None], shape)
  return hide, hide


def neuron_mask(key, shape, ratio):
  """Hidden [B,T,N]: whole neurons, Bernoulli(ratio) per (trial, neuron)."""
  b, t, n = shape
  hide = jnp.broadcast_to(_bernoulli(key, ratio, (b, 1, n)), shape)
  return hide, hide


def inter_region_mask(key, shape, regions):
  """Hidden [B,T,N]: every neuron of one region drawn per batch, all bins."""
  region = draw_region(key, regions)
  hide = jnp.broadcast_to((regions == region)[None, None, :], shape)
  return hide, hide


def intra_region_mask(key, shape, regions, ratio):
  """One region drawn per batch: all neurons outside it hidden (not targets); inside it,
  Bernoulli(ratio) per (trial, neuron) hidden and targets."""
  k_region, k_neurons = jax.random.split(key)
  b, t, n = shape
  inside = (regions == draw_region(k_region, regions))[None, None, :]
  drawn = _bernoulli(k_neurons, ratio, (b, 1, n))
  targets = jnp.broadcast_to(inside & drawn, shape)
  hide = jnp.broadcast_to(~inside, shape) | targets
  return hide, targets


def apply_scheme(
  key: jax.Array, spikes: jax.Array, regions: jax.Array, scheme: jax.Array, config: MaskConfig = MaskConfig()
) -> MaskedBatch:
  """Masks `spikes` [B,T,N] with the scheme of index `scheme` (traced; see _SWITCH_ORDER).

  `regions` [N] int32 region id per neuron (< 0 = padding neuron).
  """
  shape = spikes.shape
  branches = [
    lambda k: neuron_mask(k, shape, config.ratio),
    lambda k: (suffix_mask if config.causal_suffix else temporal_mask)(k, shape, config.causal_ratio),
    lambda k: inter_region_mask(k, shape, regions),
    lambda k: intra_region_mask(k, shape, regions, config.ratio),
    lambda k: temporal_mask(k, shape, config.ratio),
  ]
  hide, targets = jax.lax.switch(scheme, branches, key)
  valid = (regions >= 0)[None, None, :]
  hide = hide | ~valid
  targets = targets & valid
  inputs = jnp.where(hide, jnp.zeros_like(spikes), spikes)
  return MaskedBatch(inputs, targets, scheme, scheme == scheme_index("causal"))


# ---------------------------------------------------------------------------------------
# Deterministic evaluation masks
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EvalMasks:
  """M masked forward passes; entry (t, n) of pass m is hidden iff hide_neurons[m, n] and
  hide_bins[t], and scored iff score_neurons[m, n] and score_bins[t]. Each neuron is
  scored by at most one pass."""

  name: str
  prompt: str  # scheme whose prompt token is given
  hide_neurons: np.ndarray  # [M, N] bool
  score_neurons: np.ndarray  # [M, N] bool
  hide_bins: np.ndarray  # [T] bool
  score_bins: np.ndarray  # [T] bool

  @property
  def scored(self) -> np.ndarray:
    """[N] bool, the neurons these masks score."""
    return self.score_neurons.any(0)


def co_smoothing_masks(n_neurons: int, n_bins: int) -> EvalMasks:
  """Each neuron hidden alone at all bins (neuron prompt) and scored."""
  eye = np.eye(n_neurons, dtype=bool)
  every = np.ones(n_bins, bool)
  return EvalMasks("co_smoothing", "neuron", eye, eye, every, every)


def forward_prediction_masks(n_neurons: int, n_bins: int, held_out=None) -> EvalMasks:
  """Bins `held_out` (default the last tenth: bins 90-99, the last 200 ms, of MtM's 100)
  hidden for all neurons (causal prompt)."""
  if held_out is None:
    held_out = range(n_bins - n_bins // 10, n_bins)
  bins = np.zeros(n_bins, bool)
  bins[list(held_out)] = True
  every = np.ones((1, n_neurons), bool)
  return EvalMasks("forward_prediction", "causal", every, every, bins, bins)


def inter_region_masks(region_ids: np.ndarray, n_bins: int) -> EvalMasks:
  """Each region's neurons hidden together (inter-region prompt) and scored."""
  regions = np.unique(region_ids[region_ids >= 0])
  masks = region_ids[None, :] == regions[:, None]
  every = np.ones(n_bins, bool)
  return EvalMasks("inter_region", "inter-region", masks, masks, every, every)


def intra_region_masks(region_ids: np.ndarray, n_bins: int) -> EvalMasks:
  """For each neuron i: every neuron outside i's region hidden, and i itself; i scored."""
  n = len(region_ids)
  valid = np.flatnonzero(region_ids >= 0)
  outside = region_ids[valid][:, None] != region_ids[None, :]
  score = np.zeros((len(valid), n), bool)
  score[np.arange(len(valid)), valid] = True
  every = np.ones(n_bins, bool)
  return EvalMasks("intra_region", "intra-region", outside | score, score, every, every)


def neuron_sample(n_neurons: int, max_neurons: int) -> np.ndarray | None:
  """[n_neurons] bool: `max_neurons` of the neurons drawn at random, fixed by n_neurons
  alone (every model of a session gets the same sample); None (all) when max_neurons <= 0
  or the session has no more neurons than that."""
  if max_neurons <= 0 or n_neurons <= max_neurons:
    return None
  out = np.zeros(n_neurons, bool)
  out[np.random.default_rng(n_neurons).choice(n_neurons, max_neurons, replace=False)] = True
  return out


def subsample(masks: EvalMasks, neurons: np.ndarray | None) -> EvalMasks:
  """`masks` scoring only `neurons` ([n] bool; None: all), without the passes that would then
  score none (co-smoothing and intra-region have one pass per neuron; a region's inter-region
  pass stays while it holds a sampled neuron). The metric (a mean over the scored neurons)
  becomes an estimate of the metric over every neuron; a scored neuron's own score is
  unchanged (what a pass hides is kept)."""
  if neurons is None:
    return masks
  score = masks.score_neurons & neurons[None]
  keep = score.any(axis=1)
  return dataclasses.replace(masks, hide_neurons=masks.hide_neurons[keep], score_neurons=score[keep])


def evaluation_masks(region_ids: np.ndarray, n_bins: int, max_masks: int = 0) -> list[EvalMasks]:
  """The four MtM evaluations of a session with these neuron regions (forward prediction:
  the last tenth of the bins); max_masks > 0: all four score the same sample of at most that
  many neurons (neuron_sample, subsample: at most max_masks passes of co-smoothing and
  intra-region, the regions holding a sampled neuron of inter-region); 0: every neuron."""
  n = len(region_ids)
  every_metric = [
    co_smoothing_masks(n, n_bins),
    forward_prediction_masks(n, n_bins),
    inter_region_masks(region_ids, n_bins),
    intra_region_masks(region_ids, n_bins),
  ]
  sample = neuron_sample(n, max_masks)
  return [subsample(m, sample) for m in every_metric]
