"""Spike-time (event) sessions of the synthetic brain, with the same counts as its binned data.

`event_session` simulates a session of mtm_jax.datasets.synthetic exactly as the binned
builder does (same spec, same RNG: the same spike counts per 20 ms bin), then places every
counted spike at a time inside its bin, drawn from a within-bin density: the true rate
interpolated at 1 ms steps (`fine_rates`). Binning the events at 20 ms (binned_split,
mtm_jax.datasets.events.binning) gives back the binned data set's counts trial for trial,
so a binless spike-token model and the binned NDT1 model can be trained and scored on the
same data, and the fine rates give the oracle at any bin width (`rates_at`).

Trial k spans [k (TRIAL + GAP), k (TRIAL + GAP) + TRIAL) seconds (GAP = 0.5 s between
trials); time 0 of a trial is schema.T_BEFORE before stimulus onset. Everything is NumPy,
host only and deterministic given the seeds. See docs/synthetic_data.md and docs/event_data.md.
"""

from __future__ import annotations

import numpy as np

from mtm_jax.datasets import animals
from mtm_jax.datasets import schema
from mtm_jax.datasets import synthetic
from mtm_jax.datasets.events import binning
from mtm_jax.datasets.events import session as session_lib

TRIAL = schema.N_BINS * schema.BIN_SIZE  # seconds per trial (2 s)
GAP = 0.5  # seconds between the end of a trial and the start of the next
STEP = 0.001  # seconds per step of the within-bin density
BEHAVIOUR_NAMES = ("wheel_speed", "whisker_motion_energy")  # behaviour dims, as the IBL event sessions
# Per-trial ground truth kept in the session's extras (and stored per example by the builder).
TRIAL_EXTRAS = {
  "trial_index": np.int32,
  "choice": np.int32,
  "block": np.float32,
  "contrast": np.float32,
  "reward": np.int32,
  "reaction_time": np.float32,
}
_EDGE = 1e-6  # a spike lies at least this fraction of a bin inside its bin
_CHUNK_TRIALS = 32  # trials whose fine rates are held at once


def _steps_per(width: float, step: float, what: str) -> int:
  ratio = width / step
  if not np.isfinite(ratio) or ratio < 1 - 1e-9 or abs(ratio - round(ratio)) > 1e-6:
    raise ValueError(f"{what}: {width} s must be a positive multiple of the fine step {step} s")
  return int(round(ratio))


def fine_rates(rates: np.ndarray, step: float = STEP, bin_size: float = schema.BIN_SIZE) -> np.ndarray:
  """[K, T, N] expected counts per bin of bin_size -> [K, T * bin_size / step, N] float64
  expected counts per fine step.

  The rate in Hz is interpolated linearly between bin centres (held flat before the first
  and after the last centre), then rescaled inside every bin so that its fine steps sum
  exactly to the bin's expected count: coarse bins are unchanged, and the fine profile is
  the density of spikes within each bin. A bin of rate 0 stays 0."""
  rates = np.asarray(rates, np.float64)
  if rates.ndim != 3:
    raise ValueError(f"fine_rates: rates must be [trials, bins, neurons], got shape {rates.shape}")
  sub = _steps_per(bin_size, step, "fine_rates: bin_size")
  n_bins = rates.shape[1]
  pos = (np.arange(n_bins * sub) + 0.5) / sub - 0.5  # fine step centres in units of bins from the first centre
  pos = np.clip(pos, 0, n_bins - 1)
  lower = np.minimum(pos.astype(np.int64), max(n_bins - 2, 0))
  upper = np.minimum(lower + 1, n_bins - 1)
  w = (pos - lower)[None, :, None]
  fine = (1 - w) * rates[:, lower] + w * rates[:, upper]  # [K, T * sub, N], per-bin units
  fine = fine.reshape(rates.shape[0], n_bins, sub, rates.shape[2])
  total = fine.sum(axis=2, keepdims=True)
  fine = np.where(total > 0, fine * (rates[:, :, None] / np.where(total > 0, total, 1.0)), 0.0)
  return fine.reshape(rates.shape[0], n_bins * sub, rates.shape[2])


def rates_at(fine: np.ndarray, width: float, step: float = STEP) -> np.ndarray:
  """[K, T_fine, N] expected counts per fine step -> [K, T_fine * step / width, N] float64
  expected counts per bin of `width` seconds (a multiple of step dividing the trial): the
  oracle rates at any bin width."""
  fine = np.asarray(fine, np.float64)
  if fine.ndim != 3:
    raise ValueError(f"rates_at: fine must be [trials, steps, neurons], got shape {fine.shape}")
  sub = _steps_per(width, step, "rates_at: width")
  if fine.shape[1] % sub:
    raise ValueError(f"rates_at: width {width} s does not divide the {fine.shape[1]} steps of {step} s of a trial")
  k, t, n = fine.shape
  return fine.reshape(k, t // sub, sub, n).sum(axis=2)


def trial_starts(n_trials: int) -> np.ndarray:
  """[K] float64 start of each trial (k * (TRIAL + GAP))."""
  return np.arange(n_trials, dtype=np.float64) * (TRIAL + GAP)


def _spike_times(rng, spikes: np.ndarray, rates: np.ndarray, starts: np.ndarray):
  """Times [S] float64 (unsorted) and units [S] of the counted spikes [K, T, N] of trials
  starting at starts [K]: each inside its bin, drawn from the fine density of its bin."""
  n_trials, n_bins, n_units = spikes.shape
  sub = _steps_per(schema.BIN_SIZE, STEP, "fine step")
  times, units = [], []
  for first in range(0, n_trials, _CHUNK_TRIALS):
    counts = spikes[first : first + _CHUNK_TRIALS]
    fine = fine_rates(rates[first : first + _CHUNK_TRIALS]).reshape(len(counts), n_bins, sub, n_units)
    cdf = np.cumsum(fine, axis=2)
    cdf = cdf / np.where(cdf[:, :, -1:] > 0, cdf[:, :, -1:], 1.0)
    k, j, n = np.nonzero(counts)
    reps = counts[k, j, n]
    k, j, n = np.repeat(k, reps), np.repeat(j, reps), np.repeat(n, reps)
    # The fine step of each spike by its bin's weights (a zero-rate bin: uniform), then a
    # uniform time within the step; kept a hair inside the bin so re-binning keeps it there.
    row = np.where(cdf[k, j, -1, n][:, None] > 0, cdf[k, j, :, n], (np.arange(sub) + 1.0) / sub)  # [s, sub]
    step = np.minimum((row < rng.uniform(size=len(k))[:, None]).sum(axis=1), sub - 1)
    frac = np.clip((step + rng.uniform(size=len(k))) / sub, _EDGE, 1 - _EDGE)
    times.append(starts[first + k] + (j + frac) * schema.BIN_SIZE)
    units.append(n)
  return np.concatenate(times), np.concatenate(units).astype(np.int32)


def event_session(
  brain: synthetic.Brain | animals.Animal,
  spec: synthetic.SessionSpec,
  split_seed: int = 0,
  session_id: str | None = None,
) -> session_lib.EventSession:
  """The event session of `spec`, with the counts of `brain.simulate_session(spec)`.

  Units are the session's neurons (`<session_id>/<pool index>`, regions their acronyms);
  behaviour is BEHAVIOUR_NAMES [T = K * N_BINS, 2] at the bin centres of every trial,
  weight 1; splits are schema.split_trials(K, split_seed), the binned builder's draw.
  extras: rates [K, N_BINS, N] float32 true expected counts per bin (fine_rates makes the
  rest), the TRIAL_EXTRAS [K] (trial_index = 0..K-1), split_trials {split: [n] int64
  trial indices} and pool_ids [N] int32. Spike times come from a RNG of their own (seeded
  by spec.seed), so the counts are exactly the binned data set's; they are placed by
  `brain.place_spikes` where it has one (an animal: refractory), else by the fine rates."""
  session_id = session_id or spec.name
  sim = brain.simulate_session(spec)
  spikes, rates = sim["spikes"], sim["rates"]
  n_trials = len(spikes)
  starts = trial_starts(n_trials)
  rng = np.random.default_rng([spec.seed, 2])
  times, units = getattr(brain, "place_spikes", _spike_times)(rng, spikes, rates, starts)
  order = np.argsort(times, kind="stable")
  parts = schema.split_trials(n_trials, seed=split_seed)
  centres = starts[:, None] + schema.BIN_SIZE * (np.arange(schema.N_BINS) + 0.5)  # [K, T]
  values = np.stack([sim[name] for name in BEHAVIOUR_NAMES], axis=-1).reshape(-1, len(BEHAVIOUR_NAMES))
  extras = {name: np.asarray(sim[name], dtype) for name, dtype in TRIAL_EXTRAS.items() if name in sim}
  session = session_lib.EventSession(
    session_id=session_id,
    spike_times=times[order],
    spike_units=units[order],
    unit_ids=np.array([f"{session_id}/{i}" for i in sim["neuron_ids"]], dtype=object),
    unit_regions=np.array([str(r) for r in sim["regions"]], dtype=object),
    behaviour_name=",".join(BEHAVIOUR_NAMES),
    behaviour_timestamps=centres.reshape(-1),
    behaviour_values=values.astype(np.float32),
    behaviour_weights=np.ones(len(values), np.float32),
    trial_starts=starts,
    trial_ends=starts + TRIAL,
    splits={name: np.stack([starts[idx], starts[idx] + TRIAL], axis=1).reshape(-1, 2) for name, idx in parts.items()},
    extras=dict(
      extras,
      trial_index=np.arange(n_trials, dtype=np.int32),
      rates=rates.astype(np.float32),
      split_trials={name: idx.astype(np.int64) for name, idx in parts.items()},
      pool_ids=sim["neuron_ids"].astype(np.int32),
    ),
  )
  back = binning.bin_spikes(session, np.stack([starts, starts + TRIAL], 1), schema.BIN_SIZE, schema.N_BINS)
  if not np.array_equal(back, spikes):  # cannot happen unless the placement above is broken
    raise RuntimeError(f"{session_id}: the spike times do not bin back to the simulated counts")
  return session


def simulate(
  index: int,
  brain_seed: int = 0,
  split_seed: int = 0,
  sizes=synthetic.SessionSizes(),
  session_id: str | None = None,
  animal: int | None = None,
) -> session_lib.EventSession:
  """The event session of session `index` of the brain of seed `brain_seed` (synthetic.session),
  or of `animal` of the species of that seed (animals.session)."""
  brain, spec = animals.source_session(index, brain_seed, sizes, animal)
  return event_session(brain, spec, split_seed=split_seed, session_id=session_id)


def split_rows(session: session_lib.EventSession, split: str) -> tuple[np.ndarray, np.ndarray]:
  """The trials of `split`: its intervals [n, 2] and the rows [n] of the per-trial extras
  holding them (the extras of a session read back from TFDS hold only the trials read)."""
  if split not in session.splits:
    raise ValueError(f"session {session.session_id!r}: no split {split!r}; it has {sorted(session.splits)}")
  for key in ("trial_index", "rates"):
    if key not in session.extras:
      raise ValueError(f"session {session.session_id!r}: extras have no {key!r}; is it a synthetic event session?")
  intervals = np.asarray(session.splits[split], np.float64).reshape(-1, 2)
  trial = np.searchsorted(session.trial_starts, intervals[:, 0])
  stored = np.asarray(session.extras["trial_index"])
  rows = np.searchsorted(stored, trial)
  if np.any(rows >= len(stored)) or np.any(stored[np.minimum(rows, len(stored) - 1)] != trial):
    raise ValueError(f"session {session.session_id!r}: extras do not hold every trial of split {split!r}")
  return intervals, rows


def binned_split(session: session_lib.EventSession, split: str, width: float = schema.BIN_SIZE) -> dict:
  """The arrays of pipeline.load_split for an ibl_binned synthetic data set, from a synthetic
  event session, trials in order:
    spikes [K, T_w, N] int32 (binning.bin_spikes at `width`), rates [K, T_w, N] float32
    (rates_at; the stored rates at 20 ms), trial_index and the trial variables [K],
    wheel_speed, whisker_motion_energy [K, N_BINS] float32 (at 20 ms whatever the width),
    and regions [N] str.
  T_w = 2 s / width; width a multiple of 1 ms dividing 2 s (0.02, 0.01, 0.005 ...)."""
  intervals, rows = split_rows(session, split)
  sub = _steps_per(width, STEP, "binned_split: width")
  n_steps = _steps_per(TRIAL, STEP, "trial")
  if n_steps % sub:
    raise ValueError(f"binned_split: width {width} s does not divide the {TRIAL} s trial")
  n_bins = n_steps // sub
  rates = np.asarray(session.extras["rates"])[rows]
  if n_bins != schema.N_BINS:
    rates = rates_at(fine_rates(rates), width)
  out = dict(
    spikes=binning.bin_spikes(session, intervals, width, n_bins),
    rates=rates.astype(np.float32),
    regions=np.array([str(r) for r in session.unit_regions]),
  )
  for name in TRIAL_EXTRAS:
    if name in session.extras:
      out[name] = np.asarray(session.extras[name])[rows]
  behaviour = [session_lib.interval_data(session, a, b)["behaviour_values"] for a, b in intervals]
  behaviour = np.stack(behaviour) if behaviour else np.zeros((0, schema.N_BINS, len(BEHAVIOUR_NAMES)), np.float32)
  for d, name in enumerate(str(session.behaviour_name).split(",")):
    out[name] = np.asarray(behaviour[..., d], np.float32)
  return out
