"""A synthetic multi-region "brain": the embedded default data set.

One `Brain` (fixed by a seed) holds latent dynamics per region, couplings between
regions, trial-input gains, a large pool of neurons per region and behavioural readouts.
Sessions sample different neurons and region subsets from that same brain and simulate
their own trials, so pretraining on many sessions can help on a new one. Everything is
NumPy, host-only, and deterministic given the seeds. See docs/synthetic_data.md.

Time follows the IBL protocol MtM uses: trials aligned at stimulus onset, -0.5 s to
+1.5 s, 20 ms bins (100 bins).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mtm_jax.datasets import schema

REGIONS = ("VISa", "CA1", "DG", "LP", "PO")
CONTRASTS = (1.0, 0.25, 0.125, 0.0625, 0.0)
N_SESSIONS = 28  # builder configs synthetic_000-027: 24 for pretraining + 4 held out, see docs/synthetic_data.md

# Trial inputs u[t], one row each (see `_trial_inputs`).
INPUTS = ("stim_left", "stim_right", "move_left", "move_right", "prior", "reward")

# How strongly each region receives each input (rows follow REGIONS, columns INPUTS):
# visual cortex and thalamus see the stimulus, hippocampus and thalamus the movement,
# and every region a little of the block prior.
_INPUT_GAIN = np.array(
  [
    [1.0, 1.0, 0.2, 0.2, 0.3, 0.2],  # VISa
    [0.1, 0.1, 0.6, 0.6, 0.5, 0.6],  # CA1
    [0.1, 0.1, 0.4, 0.4, 0.6, 0.3],  # DG
    [0.7, 0.7, 0.5, 0.5, 0.3, 0.2],  # LP
    [0.4, 0.4, 0.8, 0.8, 0.3, 0.3],  # PO
  ]
)


@dataclasses.dataclass(frozen=True)
class BrainConfig:
  """Everything that defines the synthetic brain (all sessions share it)."""

  seed: int = 0
  regions: tuple[str, ...] = REGIONS
  latent_dim: int = 4  # latent factors per region
  neurons_per_region: int = 1500  # pool that sessions sample from
  n_bins: int = schema.N_BINS
  bin_size: float = schema.BIN_SIZE  # seconds
  t_before: float = schema.T_BEFORE  # seconds before stimulus onset
  median_rate_hz: float = 4.0  # median of the log-normal baseline rates
  rate_log_sd: float = 0.8  # sigma of log baseline rate
  loading_scale: float = 0.9  # std of a neuron's log-rate modulation by its latents
  coupling_scale: float = 0.15  # strength of inter-region latent inputs
  noise_scale: float = 2.0  # trial-specific latent noise (private variability)
  max_rate_hz: float = 150.0


@dataclasses.dataclass(frozen=True)
class SessionSizes:
  """The ranges `Brain.session_spec` draws a session's neuron and trial counts from."""

  min_neurons: int = 100
  max_neurons: int = 1000
  min_trials: int = 300
  max_trials: int = 700


@dataclasses.dataclass(frozen=True)
class SessionSpec:
  """Which neurons a session records and how many trials it has."""

  index: int
  name: str
  neuron_ids: np.ndarray  # [neurons] indices into the brain's neuron pool
  n_trials: int
  seed: int

  @classmethod
  def draw(
    cls, rng: np.random.Generator, index: int, name: str, neuron_ids: list[np.ndarray], min_trials: int, max_trials: int
  ) -> SessionSpec:
    """The spec of session `index` with these neurons, its trial count and seed drawn from `rng`."""
    n_trials = int(rng.integers(min_trials, max_trials + 1))
    return cls(
      index=index, name=name, neuron_ids=np.concatenate(neuron_ids), n_trials=n_trials, seed=int(rng.integers(2**31))
    )


class Brain:
  """The fixed parameters of the synthetic brain, drawn from `config.seed`."""

  def __init__(self, config: BrainConfig = BrainConfig()):
    self.config = c = config
    rng = np.random.default_rng(c.seed)
    n_regions, d = len(c.regions), c.latent_dim
    if n_regions > len(_INPUT_GAIN):
      raise ValueError(f"BrainConfig.regions: at most {len(_INPUT_GAIN)} regions are supported, got {n_regions}")
    self.dynamics = latent_dynamics(rng, n_regions, d, c.bin_size, c.coupling_scale)  # [latents, latents]
    self.input_weights = input_weights(rng, n_regions, d)  # [latents, inputs]
    dim = n_regions * d

    # Neuron pool: region, baseline rate, loadings on its own region's latents only, so
    # other regions inform a region only through the latent couplings.
    n_pool = n_regions * c.neurons_per_region
    self.neuron_region = np.repeat(np.arange(n_regions), c.neurons_per_region)  # [pool]
    self.log_baseline = np.log(c.median_rate_hz) + c.rate_log_sd * rng.normal(size=n_pool)
    loadings = rng.normal(size=(n_pool, d)) * c.loading_scale / np.sqrt(d)
    self.loadings = np.zeros((n_pool, dim))  # [pool, latents]
    for r in range(n_regions):
      idx = self.neuron_region == r
      self.loadings[idx, r * d : (r + 1) * d] = loadings[idx]

    # Behaviour read out from the latents (wheel from the motor-side regions, whisker
    # motion energy from all of them).
    self.wheel_readout = rng.normal(size=dim) / np.sqrt(dim)
    self.whisker_readout = rng.normal(size=dim) / np.sqrt(dim)
    self._latent_std = None
    self._latent_std = self._calibrate_latent_scale(rng)

  @property
  def n_regions(self) -> int:
    return len(self.config.regions)

  def _calibrate_latent_scale(self, rng) -> np.ndarray:
    """Std of each latent across a batch of trials, used to normalise them to ~1."""
    trials = _simulate_trial_variables(rng, 400)
    latents = self._simulate_latents(rng, trials, normalise=False)
    return latents.reshape(-1, latents.shape[-1]).std(axis=0) + 1e-6

  def _simulate_latents(self, rng, trials: dict, normalise: bool = True) -> np.ndarray:
    """Latent trajectories [trials, bins, latents] driven by the trial inputs."""
    c = self.config
    out = simulate_latents(rng, trials, self.dynamics, self.input_weights, c.noise_scale, c)
    if normalise:
      out = out / self._latent_std
    return out

  def session_spec(
    self,
    index: int,
    min_neurons: int = SessionSizes.min_neurons,
    max_neurons: int = SessionSizes.max_neurons,
    min_trials: int = SessionSizes.min_trials,
    max_trials: int = SessionSizes.max_trials,
  ) -> SessionSpec:
    """Session `index`: a region subset (3 to all regions), a neuron count and trials."""
    schema.check_session_range("neurons", min_neurons, max_neurons, 1)
    schema.check_session_range("trials", min_trials, max_trials, 3)
    rng = np.random.default_rng([self.config.seed, 1, index])
    ids = draw_neurons(rng, self.neuron_region, self.n_regions, min_neurons, max_neurons)
    return SessionSpec.draw(rng, index, f"synthetic_{index:03d}", ids, min_trials, max_trials)

  def simulate_session(self, spec: SessionSpec) -> dict[str, np.ndarray]:
    """All trials of one session: spikes, true rates, regions and behaviour.

    Returns a dict with
      spikes [trials, bins, neurons] int32 counts per bin,
      rates [trials, bins, neurons] float32 expected counts per bin (the ground truth),
      regions [neurons] str region acronym, neuron_ids [neurons] index in the pool,
      choice, block, contrast (signed: + right, - left), reward, reaction_time [trials],
      whisker_motion_energy, wheel_speed [trials, bins] float32.
    """
    c = self.config
    rng = np.random.default_rng(spec.seed)
    trials = _simulate_trial_variables(rng, spec.n_trials)
    latents = self._simulate_latents(rng, trials)  # [K, T, latents]
    ids = spec.neuron_ids
    log_rate = self.log_baseline[ids] + latents @ self.loadings[ids].T  # [K, T, N]
    rates_hz = np.exp(np.minimum(log_rate, np.log(c.max_rate_hz)))
    rates = (rates_hz * c.bin_size).astype(np.float32)
    spikes = rng.poisson(rates).astype(np.int32)
    move = _movement_envelope(trials["reaction_time"], c.n_bins, c.bin_size, c.t_before)
    wheel = _softplus(latents @ self.wheel_readout + 3.0 * move - 2.0)
    wheel = wheel + 0.05 * rng.normal(size=wheel.shape)
    whisker = _softplus(latents @ self.whisker_readout + 1.5 * move - 0.5)
    whisker = whisker + 0.05 * rng.normal(size=whisker.shape)
    return session_arrays(spikes, rates, np.array(c.regions)[self.neuron_region[ids]], ids, trials, whisker, wheel)


def session(index: int, brain_seed: int = 0, sizes: SessionSizes = SessionSizes()) -> tuple[Brain, SessionSpec]:
  """The brain of seed `brain_seed` and the spec of its session `index` drawn within `sizes`:
  what the `synthetic_NNN` configs of both builders (ibl_binned, spike_events) simulate."""
  brain = Brain(BrainConfig(seed=brain_seed))
  return brain, brain.session_spec(index, **dataclasses.asdict(sizes))


def builder_configs() -> list[dict]:
  """The keyword arguments of the builder configs `synthetic_000` ... (N_SESSIONS), shared by
  ibl_binned and spike_events so that config NNN of both is the same session and split."""
  return [
    dict(
      name=f"synthetic_{i:03d}",
      description=f"Session {i} of the synthetic brain (seed 0).",
      source="synthetic",
      session_index=i,
      brain_seed=0,
      split_seed=0,
      sizes=SessionSizes(),
    )
    for i in range(N_SESSIONS)
  ]


def latent_dynamics(rng, n_regions: int, d: int, bin_size: float, coupling_scale: float) -> np.ndarray:
  """[n_regions * d, n_regions * d] latent dynamics: per region a damped rotation (time
  constants 150-600 ms), and random couplings between regions (probability 0.7 per pair)."""
  dim = n_regions * d
  a = np.zeros((dim, dim))
  for r in range(n_regions):
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    decay = np.exp(-bin_size / rng.uniform(0.15, 0.6, size=d))
    angles = rng.uniform(0.02, 0.25, size=d // 2)
    rot = np.eye(d)
    for i, theta in enumerate(angles):
      cs, sn = np.cos(theta), np.sin(theta)
      rot[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = [[cs, -sn], [sn, cs]]
    a[r * d : (r + 1) * d, r * d : (r + 1) * d] = q @ (rot * decay[:, None]) @ q.T
  # Inter-region inputs: every region drives every other one (sparse-ish, random).
  for r in range(n_regions):
    for s in range(n_regions):
      if r != s and rng.uniform() < 0.7:
        block = rng.normal(size=(d, d)) * coupling_scale / np.sqrt(d)
        a[r * d : (r + 1) * d, s * d : (s + 1) * d] = block * bin_size / 0.1
  return stable(a)


def stable(a: np.ndarray, radius: float = 0.985) -> np.ndarray:
  """`a` scaled down so that its spectral radius is at most `radius`."""
  largest = np.max(np.abs(np.linalg.eigvals(a)))
  return a * (radius / largest) if largest > radius else a


def input_weights(rng, n_regions: int, d: int) -> np.ndarray:
  """[n_regions * d, len(INPUTS)] input weights, scaled per region by _INPUT_GAIN."""
  if n_regions > len(_INPUT_GAIN):
    raise ValueError(f"regions: at most {len(_INPUT_GAIN)} regions are supported, got {n_regions}")
  b = rng.normal(size=(n_regions * d, len(INPUTS))) * np.repeat(_INPUT_GAIN[:n_regions], d, axis=0)
  return b * 0.5


def simulate_latents(rng, trials: dict, dynamics, weights, noise_scale: float, c) -> np.ndarray:
  """Raw latent trajectories [trials, bins, latents] of `dynamics` driven by the trial inputs
  through `weights`, with private noise; `c` gives n_bins, bin_size and t_before."""
  u = _trial_inputs(trials, c.n_bins, c.bin_size, c.t_before)  # [K, T, inputs]
  n_trials, dim = len(trials["choice"]), dynamics.shape[0]
  burn_in = 50
  x = np.zeros((n_trials, dim))
  prior = np.zeros((n_trials, len(INPUTS)))
  prior[:, INPUTS.index("prior")] = u[:, 0, INPUTS.index("prior")]
  noise_std = noise_scale * np.sqrt(1 - np.diag(dynamics) ** 2 + 1e-3)
  for _ in range(burn_in):
    x = x @ dynamics.T + prior @ weights.T + noise_std * rng.normal(size=x.shape)
  out = np.empty((n_trials, c.n_bins, dim))
  for t in range(c.n_bins):
    x = x @ dynamics.T + u[:, t] @ weights.T + noise_std * rng.normal(size=x.shape)
    out[:, t] = x
  return out


def draw_neurons(rng, neuron_region: np.ndarray, n_regions: int, min_neurons: int, max_neurons: int) -> list:
  """A session's neurons: 3 to all regions, a log-uniform count split across them, and per
  region that many pool indices (of `neuron_region`, without replacement, sorted)."""
  n_pick = rng.integers(min(3, n_regions), n_regions + 1)
  regions = np.sort(rng.choice(n_regions, size=n_pick, replace=False))
  n_neurons = int(np.exp(rng.uniform(np.log(min_neurons), np.log(max_neurons + 1))))
  n_neurons = int(np.clip(n_neurons, max(min_neurons, n_pick), max_neurons))
  share = rng.dirichlet(np.full(n_pick, 4.0))
  counts = np.maximum(1, np.round(share * n_neurons).astype(int))
  counts[np.argmax(counts)] += n_neurons - counts.sum()
  ids = []
  for r, k in zip(regions, counts):
    pool = np.flatnonzero(neuron_region == r)
    ids.append(np.sort(rng.choice(pool, size=min(k, len(pool)), replace=False)))
  return ids


def session_arrays(spikes, rates, regions, neuron_ids, trials: dict, whisker, wheel) -> dict[str, np.ndarray]:
  """A simulated session as the schema's arrays (Brain.simulate_session documents them):
  spikes int32, rates float32, regions, neuron_ids int32, the trial variables and the
  behaviour traces in their dtypes."""
  return dict(
    spikes=spikes.astype(np.int32),
    rates=rates.astype(np.float32),
    regions=regions,
    neuron_ids=neuron_ids.astype(np.int32),
    choice=trials["choice"].astype(np.int32),
    block=trials["block"].astype(np.float32),
    contrast=trials["contrast"].astype(np.float32),
    reward=trials["reward"].astype(np.int32),
    reaction_time=trials["reaction_time"].astype(np.float32),
    whisker_motion_energy=whisker.astype(np.float32),
    wheel_speed=wheel.astype(np.float32),
  )


def _softplus(x):
  return np.logaddexp(0.0, x)


def _simulate_trial_variables(rng, n_trials: int) -> dict[str, np.ndarray]:
  """IBL-like task: 0.5 block first, then 0.2/0.8 blocks; choice from a psychometric."""
  block = np.empty(n_trials)
  n_unbiased = min(90, n_trials)
  block[:n_unbiased] = 0.5
  t, p_left = n_unbiased, rng.choice([0.2, 0.8])
  while t < n_trials:
    length = int(np.clip(rng.exponential(60), 20, 100))
    block[t : t + length] = p_left
    t += length
    p_left = 1.0 - p_left
  left = rng.uniform(size=n_trials) < block
  contrast = rng.choice(CONTRASTS, size=n_trials)
  signed = np.where(left, -contrast, contrast)
  # choice +1 = right, -1 = left; the prior biases towards the likelier side.
  p_right = 1 / (1 + np.exp(-(8.0 * signed + 1.5 * (0.5 - block) * 2)))
  p_right = 0.05 + 0.9 * p_right  # lapses
  choice = np.where(rng.uniform(size=n_trials) < p_right, 1, -1)
  side = np.where(left, -1, 1)
  reward = (choice == side).astype(int)
  median_rt = 0.25 + 0.35 * (1 - contrast)
  rt = np.clip(median_rt * np.exp(0.35 * rng.normal(size=n_trials)), 0.08, 1.2)
  return dict(block=block, contrast=signed, choice=choice, reward=reward, reaction_time=rt)


def _bin_centres(n_bins: int, bin_size: float, t_before: float) -> np.ndarray:
  return -t_before + bin_size * (np.arange(n_bins) + 0.5)


def _movement_envelope(rt, n_bins, bin_size, t_before) -> np.ndarray:
  """[trials, bins] wheel-turning envelope: ramps at movement onset, lasts ~300 ms."""
  t = _bin_centres(n_bins, bin_size, t_before)[None] - rt[:, None]
  return np.exp(-0.5 * ((t - 0.15) / 0.12) ** 2)


def _trial_inputs(trials, n_bins, bin_size, t_before) -> np.ndarray:
  """Inputs u [trials, bins, len(INPUTS)]: stimulus transients, movement, prior, reward."""
  t = _bin_centres(n_bins, bin_size, t_before)[None]  # [1, T]
  contrast = trials["contrast"][:, None]
  onset = (t >= 0) * np.exp(-np.maximum(t, 0) / 0.1)  # stimulus transient
  stim = np.sqrt(np.abs(contrast)) * onset
  move = _movement_envelope(trials["reaction_time"], n_bins, bin_size, t_before)
  choice = trials["choice"][:, None]
  feedback = t - (trials["reaction_time"][:, None] + 0.2)
  reward = (feedback >= 0) * np.exp(-np.maximum(feedback, 0) / 0.2) * (2 * trials["reward"][:, None] - 1)
  u = np.stack(
    [
      stim * (contrast < 0),
      stim * (contrast > 0),
      move * (choice < 0),
      move * (choice > 0),
      np.broadcast_to(trials["block"][:, None] - 0.5, t.shape[:0] + (len(contrast), n_bins)) * 4.0,
      reward,
    ],
    axis=-1,
  )
  return u * 4.0
