"""The binned-trial schema shared by data sources, builders, the pipeline and evaluation.

A session is a dict of NumPy arrays (host only):
  spikes                 [trials, time, neurons] integer counts per bin
  regions                [neurons] str, brain-region acronym of each neuron
  choice                 [trials] int, +1 right / -1 left
  block                  [trials] float, probability of a left stimulus (0.2 / 0.5 / 0.8)
  contrast               [trials] float, signed: + right, - left
  reward                 [trials] int, 1 rewarded / 0 not
  reaction_time          [trials] float, seconds
  whisker_motion_energy  [trials, time] float
  wheel_speed            [trials, time] float
  rates (optional)       [trials, time, neurons] float, true expected counts per bin
"""

from __future__ import annotations

import dataclasses

import numpy as np

N_BINS = 100
BIN_SIZE = 0.02  # seconds
T_BEFORE = 0.5  # seconds before stimulus onset
SPLIT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}

TRIAL_FIELDS = ("choice", "block", "contrast", "reward", "reaction_time")
BIN_FIELDS = ("whisker_motion_energy", "wheel_speed")


@dataclasses.dataclass(frozen=True)
class SessionInfo:
  """What the model needs to know of one session's neurons."""

  session_id: str
  region_names: tuple[str, ...]  # [neurons] acronym per neuron

  @property
  def n_neurons(self) -> int:
    return len(self.region_names)

  @property
  def regions(self) -> tuple[str, ...]:
    """The distinct regions, sorted."""
    return tuple(sorted(set(self.region_names)))

  def region_ids(self) -> np.ndarray:
    """[neurons] int32 index of each neuron's region in `regions`."""
    lookup = {name: i for i, name in enumerate(self.regions)}
    return np.array([lookup[r] for r in self.region_names], np.int32)


def check_session_range(what: str, low: int, high: int, least: int) -> None:
  """Raises ValueError unless least <= low <= high (a simulated session's min_/max_<what>)."""
  if not least <= low <= high:
    raise ValueError(f"session {what}: need {least} <= min_{what} <= max_{what}, got {low}, {high}")


def parse_datasets(text: str, field: str = "config.data.datasets") -> list[str]:
  """Comma-separated TFDS names -> list, in order; errors name `field`."""
  names = [n.strip() for n in str(text).split(",") if n.strip()]
  if not names:
    raise ValueError(f"{field}: no data set given")
  if len(set(names)) != len(names):
    raise ValueError(f"{field}: repeated names in {names}")
  return names


def split_trials(n_trials: int, seed: int = 0, fractions=SPLIT_FRACTIONS) -> dict[str, np.ndarray]:
  """Random train/val/test trial indices (sorted within each split), fixed by `seed`."""
  if n_trials < len(fractions):
    raise ValueError(f"split_trials: need at least {len(fractions)} trials, got {n_trials}")
  order = np.random.default_rng(seed).permutation(n_trials)
  bounds = np.round(np.cumsum(list(fractions.values())) * n_trials).astype(int)
  parts = np.split(order, bounds[:-1])
  return {name: np.sort(part) for name, part in zip(fractions, parts)}


def field_array(session: dict, key: str, where: str, dtype=None) -> np.ndarray:
  """session[key] as a NumPy array; ValueError naming `where` and the field when it is
  not one (ragged lists, values of the wrong type)."""
  try:
    return np.asarray(session[key], dtype)
  except (TypeError, ValueError, OverflowError) as e:
    raise ValueError(
      f"{where}: {key!r} is not a rectangular array{' of ' + str(dtype) if dtype else ''} ({type(e).__name__}: {e})"
    ) from e


def validate_session(session: dict, where: str) -> None:
  """Raises ValueError naming `where` and the field when a session is malformed."""
  required = ("spikes", "regions") + TRIAL_FIELDS + BIN_FIELDS
  missing = [k for k in required if k not in session]
  if missing:
    raise ValueError(f"{where}: missing fields {missing}")
  spikes = field_array(session, "spikes", where)
  if spikes.ndim != 3 or spikes.shape[1] != N_BINS:
    raise ValueError(f"{where}: 'spikes' must be [trials, {N_BINS}, neurons], got shape {spikes.shape}")
  n_trials, _, n_neurons = spikes.shape
  if n_neurons == 0 or n_trials == 0:
    raise ValueError(f"{where}: 'spikes' has no {'neurons' if n_neurons == 0 else 'trials'}")
  if not np.issubdtype(spikes.dtype, np.integer) or spikes.min() < 0:
    raise ValueError(f"{where}: 'spikes' must hold non-negative integer counts (dtype {spikes.dtype})")
  regions = field_array(session, "regions", where)
  if regions.shape != (n_neurons,):
    raise ValueError(f"{where}: 'regions' must hold one name per neuron, shape ({n_neurons},), got {regions.shape}")
  for k in TRIAL_FIELDS:
    if field_array(session, k, where).shape != (n_trials,):
      raise ValueError(f"{where}: '{k}' must have shape ({n_trials},), got {np.shape(session[k])}")
  for k in BIN_FIELDS:
    if field_array(session, k, where).shape != (n_trials, N_BINS):
      raise ValueError(f"{where}: '{k}' must have shape ({n_trials}, {N_BINS}), got {np.shape(session[k])}")
  if "rates" in session and field_array(session, "rates", where).shape != spikes.shape:
    raise ValueError(
      f"{where}: 'rates' must have the shape of 'spikes' {spikes.shape}, got {np.shape(session['rates'])}"
    )
