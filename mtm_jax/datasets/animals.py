"""A synthetic species of many animals: sessions for cross-animal transfer studies.

Alongside the single `synthetic.Brain` (left as it is), a `Species` holds a template of
per-region latent dynamics, couplings, input gains and behaviour read-outs. Each `Animal`
perturbs that template (its own dynamics, input gains, weaker or stronger choice signal)
and owns its own neurons: no neuron is shared between animals. The sessions of one animal
record overlapping neurons of its pool, whose baseline and tuning drift between sessions.

Neurons are nonlinear (softplus, thresholded power law or saturating) functions of a
projection of their region's latents plus a small multiplicative interaction and a slow
shared gain ("arousal"). Counts are over-dispersed (a per-trial per-neuron gamma gain whose
fluctuation is quenched after stimulus onset: negative-binomial-like counts) and capped by
an absolute refractory period; spike times keep that refractory period. `rates` is the
exact expected count per bin given the latents and the arousal, with the gamma gain and the
refractory cap integrated out (`expected_counts`). See docs/synthetic_data.md, "Many animals".
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from mtm_jax.datasets import schema
from mtm_jax.datasets import synthetic

N_ANIMALS = 16
SESSIONS_PER_ANIMAL = 2
POOL_ANIMALS = tuple(range(12))  # the study pretrains on the first 1, 4 or 12 of these
HELDOUT_ANIMALS = tuple(range(12, N_ANIMALS))
ID_STRIDE = 10_000  # neuron id = animal * ID_STRIDE + index in the animal's pool
# Small sessions, quick to train on a CPU.
ANIMAL_SIZES = synthetic.SessionSizes(min_neurons=60, max_neurons=160, min_trials=250, max_trials=400)
_EDGE = 1e-6  # spikes lie at least this fraction of a bin inside their bin


def config_name(animal: int, session: int) -> str:
  """The builder config name of `session` of `animal`: animal{AA}_s{S}."""
  return f"animal{animal:02d}_s{session}"


def session_names(animals) -> tuple[str, ...]:
  """The config names of every session of these animals, animal by animal."""
  return tuple(config_name(a, s) for a in animals for s in range(SESSIONS_PER_ANIMAL))


POOL_NAMES = session_names(POOL_ANIMALS)  # 24 sessions of animals 00-11
HELDOUT_NAMES = session_names(HELDOUT_ANIMALS)  # 8 sessions of animals 12-15


@dataclasses.dataclass(frozen=True)
class SpeciesConfig:
  """Everything that defines the species, its animals and their neurons."""

  seed: int = 0
  regions: tuple[str, ...] = synthetic.REGIONS
  latent_dim: int = 4
  neurons_per_region: int = 120  # an animal's pool per region
  n_bins: int = schema.N_BINS
  bin_size: float = schema.BIN_SIZE
  t_before: float = schema.T_BEFORE
  coupling_scale: float = 0.15  # template inter-region couplings (as the single brain)
  noise_scale: float = 2.0  # private latent noise (as the single brain)
  dynamics_jitter: float = 0.04  # std of an animal's change to each non-zero dynamics entry
  input_jitter: float = 0.3  # std of an animal's log change of each input weight
  choice_selectivity: float = 0.1  # choice-dependent part of the movement input (1: the template's)
  median_rate_hz: float = 2.5  # median baseline rate
  rate_log_sd: float = 0.9  # sigma of the log baseline rate
  drive_gain: tuple[float, float] = (0.3, 0.7)  # range of a neuron's gain on its latent drive
  interaction_scale: float = 0.25  # std of the weight of the multiplicative latent interaction
  arousal_scale: float = 0.15  # std of neurons' log-gain coupling to the slow shared gain
  arousal_corr: float = 0.95  # trial-to-trial correlation of the slow shared gain
  gain_shape: float = 1.5  # median shape k of the per-trial gamma gain (variance 1 / k)
  quench: float = 0.5  # fraction of the gain fluctuation removed after stimulus onset
  refractory: float = 0.0015  # absolute refractory period, seconds
  max_rate_hz: float = 100.0
  baseline_drift: float = 0.25  # std of a neuron's log-baseline change per session
  tuning_drift: float = 0.3  # std of its loading change per session (loadings have unit scale)
  behaviour_noise: float = 0.3

  @property
  def cap(self) -> int:
    """The most spikes a bin can hold with the refractory period."""
    return int(np.floor(self.bin_size * (1 - 2 * _EDGE) / self.refractory))


class Species:
  """The template all animals perturb, drawn from `config.seed`."""

  def __init__(self, config: SpeciesConfig = SpeciesConfig()):
    self.config = c = config
    rng = np.random.default_rng([c.seed, 0])
    n_regions, d = len(c.regions), c.latent_dim
    self.dynamics = synthetic.latent_dynamics(rng, n_regions, d, c.bin_size, c.coupling_scale)
    self.input_weights = synthetic.input_weights(rng, n_regions, d)
    dim = n_regions * d
    self.wheel_readout = rng.normal(size=dim) / np.sqrt(dim)
    self.whisker_readout = rng.normal(size=dim) / np.sqrt(dim)

  @functools.lru_cache(maxsize=None)
  def animal(self, index: int) -> Animal:
    return Animal(self, index)


@functools.lru_cache(maxsize=4)
def species(seed: int = 0) -> Species:
  return Species(SpeciesConfig(seed=seed))


class Animal:
  """One animal: the species template perturbed, and its own pool of neurons."""

  def __init__(self, species: Species, index: int):
    self.config = c = species.config
    self.index = index
    rng = np.random.default_rng([c.seed, 1, index])
    n_regions, d = len(c.regions), c.latent_dim
    dim = n_regions * d
    nonzero = species.dynamics != 0
    self.dynamics = synthetic.stable(species.dynamics + nonzero * c.dynamics_jitter * rng.normal(size=nonzero.shape))
    b = species.input_weights * np.exp(c.input_jitter * rng.normal(size=species.input_weights.shape))
    left, right = synthetic.INPUTS.index("move_left"), synthetic.INPUTS.index("move_right")
    mean = (b[:, left] + b[:, right]) / 2
    b[:, left], b[:, right] = mean + c.choice_selectivity * (b[:, [left, right]] - mean[:, None]).T
    self.input_weights = b
    self.wheel_readout = species.wheel_readout + 0.3 * rng.normal(size=dim) / np.sqrt(dim)
    self.whisker_readout = species.whisker_readout + 0.3 * rng.normal(size=dim) / np.sqrt(dim)

    # The animal's neurons: each loads on its own region's latents only.
    n_pool = n_regions * c.neurons_per_region
    self.neuron_region = np.repeat(np.arange(n_regions), c.neurons_per_region)
    self.neuron_ids = index * ID_STRIDE + np.arange(n_pool)
    own = np.zeros((n_pool, dim), bool)
    for r in range(n_regions):
      own[self.neuron_region == r, r * d : (r + 1) * d] = True
    self.own = own
    self.log_baseline = np.log(c.median_rate_hz) + c.rate_log_sd * rng.normal(size=n_pool)
    self.loadings = own * rng.normal(size=(n_pool, dim)) / np.sqrt(d)
    self.interaction = c.interaction_scale * rng.normal(size=n_pool)
    self.interaction_u = own * rng.normal(size=(n_pool, dim)) / np.sqrt(d)
    self.interaction_v = own * rng.normal(size=(n_pool, dim)) / np.sqrt(d)
    self.arousal = c.arousal_scale * rng.normal(size=n_pool)
    self.kind = rng.integers(3, size=n_pool)  # 0 softplus, 1 thresholded power law, 2 saturating
    self.drive_gain = rng.uniform(*c.drive_gain, size=n_pool)
    self.offset = np.choose(
      self.kind, [rng.uniform(-1, 1, n_pool), rng.uniform(-1, 0, n_pool), rng.uniform(-1, 1, n_pool)]
    )
    self.exponent = rng.uniform(1.5, 2.5, size=n_pool)
    self.gain_shape = c.gain_shape * np.exp(0.5 * rng.normal(size=n_pool))
    raw = synthetic.simulate_latents(
      rng, synthetic._simulate_trial_variables(rng, 400), self.dynamics, self.input_weights, c.noise_scale, c
    )
    self.latent_std = raw.reshape(-1, dim).std(axis=0) + 1e-6

  def session_neurons(self, session: int) -> dict[str, np.ndarray]:
    """[pool] log baselines and [pool, latents] loadings of the animal's neurons in `session`:
    the animal's own, drifted by a draw of that session (the same for every neuron recorded)."""
    c = self.config
    rng = np.random.default_rng([c.seed, 3, self.index, session])
    drift = self.own * rng.normal(size=self.loadings.shape) / np.sqrt(c.latent_dim)
    return dict(
      log_baseline=self.log_baseline + c.baseline_drift * rng.normal(size=self.log_baseline.shape),
      loadings=self.loadings + c.tuning_drift * drift,
    )

  def session_spec(self, index: int, sizes: synthetic.SessionSizes = ANIMAL_SIZES) -> synthetic.SessionSpec:
    """Session `index` of this animal: 3-5 regions, neurons of its pool, a trial count and seed."""
    schema.check_session_range("neurons", sizes.min_neurons, sizes.max_neurons, 1)
    schema.check_session_range("trials", sizes.min_trials, sizes.max_trials, 3)
    rng = np.random.default_rng([self.config.seed, 2, self.index, index])
    local = synthetic.draw_neurons(
      rng, self.neuron_region, len(self.config.regions), sizes.min_neurons, sizes.max_neurons
    )
    ids = [self.neuron_ids[i] for i in local]
    return synthetic.SessionSpec.draw(
      rng, index, config_name(self.index, index), ids, sizes.min_trials, sizes.max_trials
    )

  def drive(self, latents: np.ndarray, arousal: np.ndarray, local: np.ndarray, neurons: dict) -> np.ndarray:
    """[K, T, N] rates in Hz of pool neurons `local` given latents [K, T, latents] and arousal [K]."""
    c = self.config
    z = latents @ neurons["loadings"][local].T
    z = z + self.interaction[local] * (latents @ self.interaction_u[local].T) * (latents @ self.interaction_v[local].T)
    x = self.drive_gain[local] * z + self.offset[local]
    b = self.offset[local]
    kind = self.kind[local]
    soft = synthetic._softplus(x) / synthetic._softplus(b)
    power = soft ** self.exponent[local]
    saturating = (1 + np.exp(-b)) / (1 + np.exp(-x))
    h = np.where(kind == 0, soft, np.where(kind == 1, power, saturating))
    log_rate = neurons["log_baseline"][local] + self.arousal[local] * arousal[:, None, None] + np.log(h + 1e-12)
    return np.exp(np.minimum(log_rate, np.log(c.max_rate_hz)))

  def simulate_session(self, spec: synthetic.SessionSpec) -> dict[str, np.ndarray]:
    """All trials of one session, in the schema of synthetic.Brain.simulate_session
    (neuron_ids are the global ids: animal * ID_STRIDE + pool index)."""
    c = self.config
    rng = np.random.default_rng(spec.seed)
    trials = synthetic._simulate_trial_variables(rng, spec.n_trials)
    latents = synthetic.simulate_latents(rng, trials, self.dynamics, self.input_weights, c.noise_scale, c)
    latents = latents / self.latent_std
    arousal = np.empty(spec.n_trials)
    arousal[0] = rng.normal()
    for k in range(1, spec.n_trials):
      arousal[k] = c.arousal_corr * arousal[k - 1] + np.sqrt(1 - c.arousal_corr**2) * rng.normal()
    local = spec.neuron_ids - self.index * ID_STRIDE
    lam = self.drive(latents, arousal, local, self.session_neurons(spec.index)) * c.bin_size
    share, shape = gain_share(c), self.gain_shape[local]
    spikes = sample_counts(rng, lam, share, shape, c.cap)
    move = synthetic._movement_envelope(trials["reaction_time"], c.n_bins, c.bin_size, c.t_before)
    vigour = np.exp(0.4 * rng.normal(size=(spec.n_trials, 1)))
    wheel = synthetic._softplus(0.7 * latents @ self.wheel_readout + 3.0 * vigour * move - 2.0)
    wheel = wheel + c.behaviour_noise * rng.normal(size=wheel.shape)
    whisker = synthetic._softplus(0.7 * latents @ self.whisker_readout + 1.5 * vigour * move - 0.5)
    whisker = whisker + c.behaviour_noise * rng.normal(size=whisker.shape)
    rates = expected_counts(lam, share, shape, c.cap)
    regions = np.array(c.regions)[self.neuron_region[local]]
    return synthetic.session_arrays(spikes, rates, regions, spec.neuron_ids, trials, whisker, wheel)

  def place_spikes(self, rng, spikes: np.ndarray, rates: np.ndarray, starts: np.ndarray):
    """Times [S] float64 and units [S] int32 of the counts [K, T, N] of trials starting at
    starts [K]: within each bin the spikes are uniform given an absolute refractory period
    (sorted uniforms in the bin shortened by n refractory periods, then spread by one period
    each), and the last spike of a bin ends a refractory period before the next bin."""
    del rates  # the placement does not depend on the rate within the bin
    c = self.config
    k, j, n = np.nonzero(spikes)
    reps = spikes[k, j, n]
    group = np.repeat(np.arange(len(k)), reps)
    free = c.bin_size * (1 - 2 * _EDGE) - reps * c.refractory
    u = rng.uniform(size=len(group)) * free[group]
    u = u[np.lexsort((u, group))]
    rank = np.arange(len(group)) - np.repeat(np.cumsum(reps) - reps, reps)
    offset = _EDGE * c.bin_size + u + rank * c.refractory
    return starts[k[group]] + j[group] * c.bin_size + offset, n[group].astype(np.int32)


def gain_share(c: SpeciesConfig) -> np.ndarray:
  """[T] share of the rate carried by the per-trial gamma gain: 1 before stimulus onset,
  1 - quench from ~100 ms after it to 1 s, back to 1 by the end of the trial."""
  t = synthetic._bin_centres(c.n_bins, c.bin_size, c.t_before)
  on = 1 / (1 + np.exp(-(t - 0.05) / 0.02)) / (1 + np.exp(-(1.0 - t) / 0.05))
  return 1 - c.quench * on


def sample_counts(rng, lam: np.ndarray, share: np.ndarray, shape: np.ndarray, cap: int) -> np.ndarray:
  """[K, T, N] counts min(Poisson(lam (1 - share + share G)), cap), one gamma gain G ~
  Gamma(shape, 1 / shape) per trial and neuron (lam [K, T, N], share [T], shape [N])."""
  g = rng.gamma(shape, 1 / shape, size=(lam.shape[0], lam.shape[2]))[:, None, :]
  return np.minimum(rng.poisson(lam * (1 - share[None, :, None] + share[None, :, None] * g)), cap)


def expected_counts(lam: np.ndarray, share: np.ndarray, shape: np.ndarray, cap: int) -> np.ndarray:
  """[K, T, N] exact E[min(S, cap)] for S ~ Poisson(lam (1 - share + share G)), G ~ Gamma(shape,
  1 / shape) (mean 1): S is Poisson(lam (1 - share)) plus negative binomial (shape, mean
  lam share). lam [K, T, N], share [T], shape [N]. E[min(S, cap)] = sum_{j<cap} P(S > j)."""
  out = np.empty(lam.shape)
  k = np.asarray(shape, np.float64)[None, None, :]
  for first in range(0, len(lam), 32):
    m = np.asarray(lam[first : first + 32], np.float64)
    m1, m2 = m * (1 - share)[None, :, None], m * share[None, :, None]
    poisson, negbin = [np.exp(-m1)], [(k / (k + m2)) ** k]
    q = m2 / (k + m2)
    for i in range(1, cap):
      poisson.append(poisson[-1] * m1 / i)
      negbin.append(negbin[-1] * (i - 1 + k) / i * q)
    cdf, total = np.zeros_like(m), np.zeros_like(m)
    for i in range(cap):
      cdf += sum(poisson[a] * negbin[i - a] for a in range(i + 1))
      total += np.maximum(1 - cdf, 0)
    out[first : first + 32] = total
  return out


def session(animal: int, index: int, species_seed: int = 0, sizes=ANIMAL_SIZES) -> tuple[Animal, synthetic.SessionSpec]:
  """The animal and the spec of its session `index` drawn within `sizes`."""
  if not 0 <= animal < ID_STRIDE:
    raise ValueError(f"animal must be in [0, {ID_STRIDE}), got {animal}")
  who = species(species_seed).animal(animal)
  return who, who.session_spec(index, sizes)


def source_session(index: int, brain_seed: int, sizes, animal: int | None = None):
  """What a synthetic builder config simulates: (simulator, spec) of session `index` of the
  single brain of `brain_seed` (animal None) or of `animal` of the species of that seed."""
  if animal is None:
    return synthetic.session(index, brain_seed, sizes)
  return session(animal, index, brain_seed, sizes)


def builder_configs() -> list[dict]:
  """The keyword arguments of the builder configs animal{AA}_s{S}, shared by ibl_binned and
  spike_events so that config X of both is the same session and split."""
  return [
    dict(
      name=config_name(a, s),
      description=f"Session {s} of animal {a} of the synthetic species (seed 0).",
      source="synthetic",
      session_index=s,
      brain_seed=0,
      split_seed=0,
      sizes=ANIMAL_SIZES,
      animal=a,
    )
    for a in range(N_ANIMALS)
    for s in range(SESSIONS_PER_ANIMAL)
  ]
