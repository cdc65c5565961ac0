"""Small BrainWideBench session files in BWB's layout, written with temporaldata itself.

Each file is what BWB's pipeline stores for one session (field names of
ibl_brain_wide_bench_2026/pipeline.py; mtm_jax/bwb/sessions.py lists them), scaled down: six
minutes of recording, tens of units, ~70 trials, 50 Hz behaviour. The split domains follow a
simple rule of this fixture (TS1 40/20/40 of the recording with 20 s gaps, TS2 5-minute chunks
train/test), not BWB's algorithm; the held-out masks are BWB's sha256 ranking.

make(root) writes two eval and three pretrain sessions in both builds:
<root>/<build>/ibl_brain_wide_bench_2026/<eval|pretrain>/<session id>.h5, build all_units or
selected_units.
"""

import hashlib
import os

import h5py
import numpy as np
from temporaldata import ArrayDict, Data, Interval, IrregularTimeSeries, RegularTimeSeries

EVAL_IDS = ("0a1b2c3d-0000-4000-8000-000000000001", "0a1b2c3d-0000-4000-8000-000000000002")
PRETRAIN_IDS = tuple(f"0a1b2c3d-0000-4000-8000-00000000010{i}" for i in range(3))
BUILDS = ("all_units", "selected_units")
COSMOS = ("CB", "CNU", "CTXsp", "HB", "HPF", "HY", "Isocortex", "MB", "OLF", "TH")
DURATION = 360.0  # seconds
FS = 50.0


def held_out_mask(unit_ids, salt):
  """BWB's co-smoothing hold-out: the max(1, round(0.1 N)) units first by sha256(salt:id)."""
  k = max(1, round(0.1 * len(unit_ids)))
  order = sorted(range(len(unit_ids)), key=lambda i: hashlib.sha256(f"{salt}:{unit_ids[i]}".encode()).hexdigest())
  mask = np.zeros(len(unit_ids), bool)
  mask[order[:k]] = True
  return mask


def _trials(rng):
  starts = np.arange(2.0, DURATION - 6.0, 5.0)
  n = starts.size
  stim = starts + rng.uniform(0.5, 0.8, n)
  move = stim + rng.uniform(0.1, 0.6, n)
  feedback = move + rng.uniform(0.05, 0.2, n)
  choice = rng.choice([0, 1, 2], n, p=[0.45, 0.45, 0.1])
  side = rng.integers(0, 2, n)
  reward = ((choice != 2) & (choice == side)).astype(np.int64)
  level = rng.integers(0, 5, n)
  contrast = np.array([0.0, 0.0625, 0.125, 0.25, 1.0])[level]
  left = np.where(side == 1, contrast, np.nan)
  right = np.where(side == 0, contrast, np.nan)
  p_left = rng.choice([0.2, 0.5, 0.8], n)
  return Interval(
    start=starts,
    end=starts + 4.5,
    stim_on_time=stim,
    movement_onset_time=move,
    feedback_time=feedback,
    go_cue_time=stim + 0.01,
    choice=choice,
    feedback_type=np.where(reward == 1, 1, -1),
    reward=reward,
    stimulus_contrast=level,
    contrast_left=left,
    contrast_right=right,
    probability_left=p_left,
    block_prior=np.select([p_left == 0.2, p_left == 0.8], [0, 1], -1),
    stimulus_side=side,
    is_valid=choice != 2,
    trial_index=np.arange(n),
    timekeys=["start", "end", "stim_on_time", "movement_onset_time", "feedback_time", "go_cue_time"],
  )


def _task_aligned(trials):
  v = trials.is_valid
  stim, move, fb, idx = (
    trials.stim_on_time[v],
    trials.movement_onset_time[v],
    trials.feedback_time[v],
    trials.trial_index[v],
  )
  tables = {
    "stimulus_side": Interval(stim - 0.9, stim + 0.1, stimulus_side=trials.stimulus_side[v], trial_index=idx),
    "stimulus_contrast": Interval(
      stim - 0.9, stim + 0.1, stimulus_contrast=trials.stimulus_contrast[v], trial_index=idx
    ),
    "choice": Interval(move - 1.0, move.copy(), choice=trials.choice[v], trial_index=idx),
    "reward": Interval(fb.copy(), fb + 1.0, reward=trials.reward[v], trial_index=idx),
    "movement_window": Interval(move.copy(), move + 1.0, trial_index=idx),
    "licking_window": Interval(fb.copy(), fb + 1.0, trial_index=idx),
    "block_prior": Interval(stim - 1.0, stim.copy(), block_prior=trials.block_prior[v], trial_index=idx),
  }
  domain = Interval(np.minimum(stim - 1.0, move - 1.0), np.maximum(fb + 1.0, move + 1.0))
  return Data(**tables, domain=domain)


def _behaviour(rng):
  n = int(DURATION * FS)
  vel = np.cumsum(rng.normal(0, 0.1, n))
  left, right = rng.uniform(0.7, 1.0, (2, n))
  return {
    "wheel": RegularTimeSeries(
      sampling_rate=FS, domain_start=0.0, wheel_pos=np.cumsum(vel) / FS, wheel_vel=vel, wheel_speed=np.abs(vel)
    ),
    "whisker": RegularTimeSeries(sampling_rate=FS, domain_start=0.0, whisker_motion_energy=rng.gamma(2.0, 1.0, n)),
    "paws": RegularTimeSeries(
      sampling_rate=FS,
      domain_start=0.0,
      left_paw_speed=rng.gamma(2.0, 5.0, n),
      right_paw_speed=rng.gamma(2.0, 5.0, n),
      left_paw_likelihood=left,
      right_paw_likelihood=right,
      is_left_paw_confident=left >= 0.9,
      is_right_paw_confident=right >= 0.9,
    ),
    "licks": RegularTimeSeries(sampling_rate=FS, domain_start=0.0, licking_rate=rng.poisson(0.2, n) * FS),
  }


def write_session(path, session_id, *, eval_session, build, seed, n_units=24):
  """Writes one session file at `path` (temporaldata's Data.to_hdf5, as BWB's pipeline does)."""
  rng = np.random.default_rng(seed)
  selected = build == "selected_units"
  n_total = n_units + (0 if selected else 8)  # all_units keeps the units selected_units drops
  rates = rng.uniform(1.5, 12.0, n_total)
  counts = rng.poisson(rates * DURATION)
  times = np.concatenate([np.sort(rng.uniform(0.0, DURATION, c)) for c in counts])
  units = np.repeat(np.arange(n_total), counts)
  order = np.argsort(times, kind="stable")
  uuids = [f"{seed:04d}{i:04d}-aaaa-4bbb-8ccc-{rng.integers(0, 16**12):012x}" for i in range(n_total)]
  unit_table = ArrayDict(
    id=np.array(uuids),
    region_cosmos=np.array(rng.choice(COSMOS, n_total)),
    region_beryl=np.array(["VISp"] * n_total),
    probe_id=np.array([f"probe0{i % 2}" for i in range(n_total)]),
    firing_rate=rates,
    label=np.ones(n_total),
  )
  if eval_session and selected:
    unit_table.ts2_co_smoothing_is_held_out_test = held_out_mask(uuids, "ts2_co_smoothing_test")
    unit_table.ts2_co_smoothing_is_held_out_val = held_out_mask(uuids, "ts2_co_smoothing_val")
  spikes = IrregularTimeSeries(
    timestamps=times[order], unit_index=units[order], amplitude=rng.uniform(50, 200, times.size), domain="auto"
  )
  trials = _trials(rng)
  brainset = Data(id="ibl_brain_wide_bench_2026", derived_version="0.1.0", source="fixture", unit_filtering=build)
  data = Data(
    brainset=brainset,
    subject=Data(id=f"mouse{seed}", species="MUS_MUSCULUS"),
    session=Data(id=session_id),
    spikes=spikes,
    units=unit_table,
    trials=trials,
    task_aligned_intervals=_task_aligned(trials),
    **_behaviour(rng),
    domain=spikes.domain,
  )
  end = float(spikes.domain.end[-1])
  if eval_session:
    a, b = 0.4 * end, 0.6 * end
    data.ts1_train_domain, data.ts1_val_domain, data.ts1_test_domain = (
      Interval(0.0, a),
      Interval(a + 20, b),
      Interval(b + 20, end),
    )
    data.ts2_train_domain, data.ts2_val_domain = Interval(0.0, 300.0), Interval(np.zeros(0), np.zeros(0))
    data.ts2_test_domain = Interval(320.0, end)
  else:
    data.pretrain_train_domain, data.pretrain_val_domain = Interval(0.0, 0.9 * end), Interval(0.9 * end + 20, end)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with h5py.File(path, "w") as f:
    data.to_hdf5(f)
  return path


def make(root):
  """Writes the ten fixture files under `root`; returns {(build, session id): path}."""
  out = {}
  for b, build in enumerate(BUILDS):
    for s, (session_id, eval_session) in enumerate([(i, True) for i in EVAL_IDS] + [(i, False) for i in PRETRAIN_IDS]):
      folder = os.path.join(root, build, "ibl_brain_wide_bench_2026", "eval" if eval_session else "pretrain")
      path = os.path.join(folder, f"{session_id}.h5")
      out[(build, session_id)] = write_session(
        path, session_id, eval_session=eval_session, build=build, seed=100 + s + 10 * b
      )
  return out
