"""A synthetic centre-out reaching task: spike times and hand velocity (POYO's default data).

One `ReachingBrain` (fixed by a seed) holds what sessions share: the latent dynamics of a
reach, a pool of M1 and PMd neurons with their baseline rates and latent loadings, and the
region gains. Like the synthetic brain of mtm_jax.datasets.synthetic, a session samples its
own neurons from that pool and simulates its own trials, so sessions share structure while
their units differ. Everything is NumPy, host-only and deterministic given the seeds.

A trial is a delayed centre-out reach to one of `n_directions` targets:
  hold   centre hold; the target appears 0.1-0.25 s in (preparatory activity builds up);
  reach  after the go cue, a minimum-jerk reach of ~10 cm, slightly curved;
  return back to the centre.
Trials follow each other without gaps, 1.2-2 s each.

Latents (10 ms steps): preparatory target signal, velocity, acceleration and speed leading the
hand by `neural_lead`, a rotational component kicked at movement onset, and private noise.
The hand velocity (cm/s, 100 Hz) is read out from the velocity latents, `neural_lead`
later, plus a small motor noise the neurons do not see: decoding from spikes is
meaningful but not perfect. Spikes are a Poisson process at 1 ms steps (log-rates
interpolated between latent steps), each spike jittered uniformly within its step.
See docs/event_data.md.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mtm_jax.datasets import schema, synthetic
from mtm_jax.datasets.events import session as session_lib

PERIODS = ("hold", "reach", "return")
PERIOD_WEIGHTS = (0.1, 5.0, 1.0)  # loss weight of a behaviour sample in each period (POYO)
LATENT_GROUPS = (("prep", 2), ("vel", 2), ("acc", 2), ("speed", 1), ("rot", 2), ("private", 2))

# How strongly each region's neurons load on each latent group (LATENT_GROUPS order):
# PMd is mostly preparatory, M1 mostly movement-related. Other region names get _DEFAULT_GAIN.
_REGION_GAINS = {
  "M1": (0.4, 1.0, 0.6, 0.6, 0.8, 0.5),
  "PMd": (1.0, 0.5, 0.3, 0.5, 0.5, 0.5),
}
_DEFAULT_GAIN = (0.6, 0.6, 0.6, 0.6, 0.6, 0.5)


@dataclasses.dataclass(frozen=True)
class ReachingConfig:
  """Everything that defines the reaching brain (all sessions share it)."""

  seed: int = 0
  regions: tuple[str, ...] = ("M1", "PMd")
  n_directions: int = 8
  neurons_per_region: int = 600  # pool that sessions sample from
  step: float = 0.01  # seconds per latent step; also the behaviour sampling period
  spike_step: float = 0.001  # seconds per step of the Poisson process
  median_rate_hz: float = 8.0  # median of the log-normal baseline rates
  rate_log_sd: float = 0.6  # sigma of log baseline rate
  loading_scale: float = 0.5  # scale of a neuron's log-rate loadings on the latents
  max_rate_hz: float = 200.0
  reach_distance: float = 10.0  # cm
  speed_norm: float = 30.0  # cm/s: velocity latents are velocity / speed_norm
  neural_lead: float = 0.1  # seconds by which the latents lead the hand
  motor_noise: float = 1.5  # cm/s, std of a hand-velocity component no neuron encodes
  private_noise: float = 0.6  # std of the private latents
  hold_range: tuple[float, float] = (0.4, 0.8)  # seconds
  reach_range: tuple[float, float] = (0.35, 0.55)
  return_range: tuple[float, float] = (0.45, 0.7)


# A session's neurons, trial count and seed: the synthetic brain's spec, reused.
ReachingSessionSpec = synthetic.SessionSpec


class ReachingBrain:
  """The fixed parameters of the reaching brain, drawn from `config.seed`."""

  def __init__(self, config: ReachingConfig = ReachingConfig()):
    self.config = c = config
    if c.n_directions < 1 or not c.regions:
      raise ValueError(f"ReachingConfig: need >= 1 direction and region, got {c.n_directions}, {c.regions}")
    ratio = c.step / c.spike_step
    if abs(ratio - round(ratio)) > 1e-6 or round(ratio) < 1:
      raise ValueError(f"ReachingConfig: step {c.step} must be a multiple of spike_step {c.spike_step}")
    rng = np.random.default_rng([c.seed, 0])
    n_regions = len(c.regions)
    n_pool = n_regions * c.neurons_per_region
    self.neuron_region = np.repeat(np.arange(n_regions), c.neurons_per_region)  # [pool]
    self.log_baseline = np.log(c.median_rate_hz) + c.rate_log_sd * rng.normal(size=n_pool)  # [pool]
    gains = np.array([_REGION_GAINS.get(r, _DEFAULT_GAIN) for r in c.regions])  # [regions, groups]
    sizes = [n for _, n in LATENT_GROUPS]
    per_latent = np.repeat(gains, sizes, axis=1)[self.neuron_region]  # [pool, latents]
    self.loadings = rng.normal(size=per_latent.shape) * per_latent * c.loading_scale  # [pool, latents]
    # Rotational dynamics: a damped 1.5 Hz rotation, kicked along a fixed direction map.
    angle, decay = 2 * np.pi * 1.5 * c.step, np.exp(-c.step / 0.25)
    self.rotation = decay * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    phi = rng.uniform(0, 2 * np.pi)
    self.kick = 1.5 * np.array([[np.cos(phi), -np.sin(phi)], [np.sin(phi), np.cos(phi)]])

  @property
  def n_latents(self) -> int:
    return sum(n for _, n in LATENT_GROUPS)

  def session_spec(
    self, index: int, min_units: int = 40, max_units: int = 200, min_trials: int = 100, max_trials: int = 200
  ) -> ReachingSessionSpec:
    """Session `index`: a unit count (log-uniform), units from every region, trials."""
    schema.check_session_range("units", min_units, max_units, 1)
    schema.check_session_range("trials", min_trials, max_trials, 3)
    c = self.config
    rng = np.random.default_rng([c.seed, 1, index])
    n_regions = len(c.regions)
    n_units = int(np.exp(rng.uniform(np.log(min_units), np.log(max_units + 1))))
    n_units = int(np.clip(n_units, max(min_units, n_regions), max_units))
    counts = np.maximum(1, np.round(rng.dirichlet(np.full(n_regions, 4.0)) * n_units).astype(int))
    counts[np.argmax(counts)] += n_units - counts.sum()
    ids = [
      np.sort(rng.choice(np.flatnonzero(self.neuron_region == r), size=min(k, c.neurons_per_region), replace=False))
      for r, k in enumerate(counts)
    ]
    return ReachingSessionSpec.draw(rng, index, f"reaching_{index:03d}", ids, min_trials, max_trials)

  def simulate_session(self, spec: ReachingSessionSpec, split_seed: int = 0) -> session_lib.EventSession:
    """One event session, with the ground truth in its extras:
      trial_direction [K] int32 target index, go_times [K] float64 go cues (reach onsets),
      behaviour_period [T] int8 index into PERIODS, pool_ids [U] int32 neuron pool index.
    behaviour_values is the hand velocity [T, 2] in cm/s ("hand_vel")."""
    c = self.config
    rng = np.random.default_rng(spec.seed)
    trials = _simulate_trials(rng, spec.n_trials, c)
    n_steps = int(trials["ends"][-1])
    intended, period = _intended_velocity(trials, n_steps, c)  # [T, 2] cm/s, [T]
    latents = self._latents(rng, trials, intended, n_steps)  # [T, latents]
    noise = _ornstein_uhlenbeck(rng, (n_steps, 2), c.step, 0.05, c.motor_noise)
    velocity = (intended + noise).astype(np.float32)

    ids = spec.neuron_ids
    log_rates = self.log_baseline[ids] + latents @ self.loadings[ids].T  # [T, U]
    spike_times, spike_units = _poisson_spikes(rng, log_rates, c)
    order = np.argsort(spike_times, kind="stable")
    step_times = np.arange(n_steps) * c.step
    starts, ends = trials["starts"] * c.step, trials["ends"] * c.step
    return session_lib.EventSession(
      session_id=spec.name,
      spike_times=spike_times[order],
      spike_units=spike_units[order].astype(np.int32),
      unit_ids=np.array([f"{spec.name}/unit_{j:03d}" for j in range(len(ids))], dtype=object),
      unit_regions=np.array(c.regions, dtype=object)[self.neuron_region[ids]],
      behaviour_name="hand_vel",
      behaviour_timestamps=step_times,
      behaviour_values=velocity,
      behaviour_weights=np.asarray(PERIOD_WEIGHTS, np.float32)[period],
      trial_starts=starts,
      trial_ends=ends,
      splits=session_lib.split_intervals(starts, ends, seed=split_seed),
      extras=dict(
        trial_direction=trials["direction"].astype(np.int32),
        go_times=trials["go"] * c.step,
        behaviour_period=period.astype(np.int8),
        pool_ids=ids.astype(np.int32),
      ),
    )

  def _latents(self, rng, trials: dict, intended: np.ndarray, n_steps: int) -> np.ndarray:
    """[T, latents] in LATENT_GROUPS order."""
    c = self.config
    lead = int(round(c.neural_lead / c.step))
    target = np.stack([np.cos(trials["angle"]), np.sin(trials["angle"])], axis=1)  # [K, 2]
    box, kick = np.zeros((n_steps, 2)), np.zeros((n_steps, 2))
    hold_on = int(round(0.15 / c.step))
    for k in range(len(target)):
      box[trials["target_on"][k] : trials["go"][k] + hold_on] = target[k]
      kick[max(0, trials["go"][k] - lead)] = target[k] @ self.kick.T
    prep = _low_pass(box, c.step / 0.08)
    vel = np.concatenate([intended[lead:], np.zeros((lead, 2))]) / c.speed_norm  # leads the hand
    acc = np.gradient(vel, axis=0) * (0.1 / c.step)  # change per 100 ms
    speed = np.linalg.norm(vel, axis=1, keepdims=True)
    rot = np.zeros((n_steps, 2))
    x = np.zeros(2)
    for t in range(n_steps):
      x = self.rotation @ x + kick[t]
      rot[t] = x
    private = _ornstein_uhlenbeck(rng, (n_steps, 2), c.step, 0.3, c.private_noise)
    return np.concatenate([prep, vel, acc, speed, rot, private], axis=1)


def simulate_reaching_session(
  index: int, brain_seed: int = 0, split_seed: int = 0, **spec_kwargs
) -> session_lib.EventSession:
  """Session `index` of the reaching brain with seed `brain_seed` (spec_kwargs: unit and
  trial ranges of ReachingBrain.session_spec)."""
  brain = ReachingBrain(ReachingConfig(seed=brain_seed))
  return brain.simulate_session(brain.session_spec(index, **spec_kwargs), split_seed=split_seed)


def _simulate_trials(rng, n_trials: int, c: ReachingConfig) -> dict[str, np.ndarray]:
  """Trial timing in latent steps (starts, target_on, go, reach_end, ends) and targets."""

  def steps(bounds):
    return np.round(rng.uniform(*bounds, size=n_trials) / c.step).astype(int)

  hold, reach, back = steps(c.hold_range), steps(c.reach_range), steps(c.return_range)
  ends = np.cumsum(hold + reach + back)
  starts = ends - (hold + reach + back)
  direction = rng.integers(0, c.n_directions, size=n_trials)
  return dict(
    starts=starts,
    target_on=starts + np.minimum(steps((0.1, 0.25)), hold - 1),
    go=starts + hold,
    reach_end=starts + hold + reach,
    ends=ends,
    direction=direction,
    angle=2 * np.pi * direction / c.n_directions + 0.05 * rng.normal(size=n_trials),
    distance=c.reach_distance * rng.uniform(0.85, 1.15, size=n_trials),
    curvature=0.3 * rng.normal(size=n_trials),
  )


def _min_jerk_speed(n: int) -> np.ndarray:
  """[n] minimum-jerk speed profile over n steps, summing to 1."""
  tau = (np.arange(n) + 0.5) / n
  profile = 30 * tau**2 * (1 - tau) ** 2
  return profile / profile.sum()


def _intended_velocity(trials: dict, n_steps: int, c: ReachingConfig) -> tuple[np.ndarray, np.ndarray]:
  """[T, 2] planned hand velocity (cm/s) and [T] period index of every latent step."""
  velocity, period = np.zeros((n_steps, 2)), np.zeros(n_steps, np.int64)
  for k in range(len(trials["starts"])):
    go, end_reach, end = trials["go"][k], trials["reach_end"][k], trials["ends"][k]
    n = end_reach - go
    tau = (np.arange(n) + 0.5) / n
    heading = trials["angle"][k] + trials["curvature"][k] * (tau - 0.5)
    out = trials["distance"][k] * _min_jerk_speed(n)[:, None] * np.stack([np.cos(heading), np.sin(heading)], 1)
    velocity[go:end_reach] = out / c.step
    velocity[end_reach:end] = -out.sum(0) * _min_jerk_speed(end - end_reach)[:, None] / c.step
    period[go:end_reach], period[end_reach:end] = 1, 2
  return velocity, period


def _low_pass(x: np.ndarray, alpha: float) -> np.ndarray:
  """First-order low-pass along axis 0: y[t] = y[t-1] + alpha (x[t] - y[t-1])."""
  y, state = np.empty_like(x), np.zeros(x.shape[1:])
  for t in range(len(x)):
    state = state + alpha * (x[t] - state)
    y[t] = state
  return y


def _ornstein_uhlenbeck(rng, shape, step: float, tau: float, std: float) -> np.ndarray:
  """Stationary OU process sampled every `step` seconds: [T, ...] with the given std."""
  a = np.exp(-step / tau)
  eps = rng.normal(size=shape) * std * np.sqrt(1 - a**2)
  out = np.empty(shape)
  out[0] = rng.normal(size=shape[1:]) * std
  for t in range(1, shape[0]):
    out[t] = a * out[t - 1] + eps[t]
  return out


def _poisson_spikes(rng, log_rates: np.ndarray, c: ReachingConfig, chunk: int = 1000):
  """Spike times [S] float64 (unsorted) and units [S] from log-rates [T, U] at latent steps.

  Log-rates are interpolated linearly to spike_step, rates capped at max_rate_hz; counts per
  spike step are Poisson and every spike is placed uniformly within its step."""
  n_steps, n_units = log_rates.shape
  sub = int(round(c.step / c.spike_step))
  cap = np.log(c.max_rate_hz)
  times, units = [], []
  for first in range(0, n_steps, chunk):
    fine = np.arange(first * sub, min(n_steps, first + chunk) * sub)  # spike steps of this chunk
    pos = np.clip((fine + 0.5) / sub - 0.5, 0, n_steps - 1)
    j = np.minimum(pos.astype(int), max(n_steps - 2, 0))
    w = (pos - j)[:, None]
    upper = np.minimum(j + 1, n_steps - 1)
    lr = (1 - w) * log_rates[j] + w * log_rates[upper]
    counts = rng.poisson(np.exp(np.minimum(lr, cap)) * c.spike_step)  # [fine, U]
    rows, cols = np.nonzero(counts)
    reps = counts[rows, cols]
    rows, cols = np.repeat(rows, reps), np.repeat(cols, reps)
    times.append((fine[rows] + rng.uniform(size=len(rows))) * c.spike_step)
    units.append(cols)
  return np.concatenate(times), np.concatenate(units)
