"""Small BrainWideBench session files in BWB's layout, written with temporaldata itself.

Each file is what BWB's pipeline stores for one session (field names of
ibl_brain_wide_bench_2026/pipeline.py; mtm_jax/bwb/sessions.py lists them), scaled down: six
minutes of recording, tens of units, ~70 trials (three excluded by BWB's rules: reaction time
above 10 s, below 0, a NaN probability_left; ~10% no-choice), 50 Hz behaviour. is_valid, the
task-aligned intervals, the split domains and the held-out masks are computed by
mtm_jax.bwb.splits (BWB's protocol), so the files and the protocol agree.

make(root) writes two eval and three pretrain sessions in both builds:
<root>/<build>/ibl_brain_wide_bench_2026/<eval|pretrain>/<session id>.h5, build all_units or
selected_units.
"""

import os

import h5py
import numpy as np
from scipy import signal
from temporaldata import ArrayDict, Data, Interval, IrregularTimeSeries, RegularTimeSeries

from mtm_jax.bwb import splits

EVAL_IDS = ("0a1b2c3d-0000-4000-8000-000000000001", "0a1b2c3d-0000-4000-8000-000000000002")
PRETRAIN_IDS = tuple(f"0a1b2c3d-0000-4000-8000-00000000010{i}" for i in range(3))
BUILDS = ("all_units", "selected_units")
COSMOS = ("CB", "CNU", "CTXsp", "HB", "HPF", "HY", "Isocortex", "MB", "OLF", "TH")
DURATION = 360.0  # seconds
FS = 50.0


def held_out_mask(unit_ids, salt):
  """BWB's co-smoothing hold-out: the max(1, round(0.1 N)) units first by sha256(salt:id)."""
  return splits.held_out_mask(unit_ids, salt)


def _trials(rng, duration, spacing=5.0):
  starts = np.arange(2.0, duration - 6.0, spacing)
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
  move[3], move[6], p_left[9] = stim[3] + 10.5, stim[6] - 0.05, np.nan  # excluded by BWB's rules
  columns = dict(
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
    trial_index=np.arange(n),
  )
  columns["is_valid"] = splits.valid_trials(columns)
  timekeys = ["start", "end", "stim_on_time", "movement_onset_time", "feedback_time", "go_cue_time"]
  return Interval(**columns, timekeys=timekeys)


def _task_aligned(trials):
  """BWB's task-aligned tables (splits.task_aligned) with each task's label column."""
  columns = {k: getattr(trials, k) for k in trials.keys()}
  tasks = splits.task_aligned(columns, trials.is_valid)
  labelled = ("stimulus_side", "stimulus_contrast", "choice", "reward", "block_prior")  # label column = task name
  tables = {}
  for name, (start, end, index) in ((k, v) for k, v in tasks.items() if k != "domain"):
    extra = {name: columns[name][index]} if name in labelled else {}
    tables[name] = Interval(start.copy(), end.copy(), trial_index=index, **extra)
  return Data(**tables, domain=Interval(*tasks["domain"]))


def _behaviour(rng, duration):
  n = int(duration * FS)
  vel = signal.lfilter([1.0], [1.0, -0.98], rng.normal(0, 0.5, n))  # stationary (AR(1), ~1 s memory)
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


def _tuned_spikes(rng, rates, regions, wheel_speed):
  """Spike times and units whose rates follow the wheel: unit i fires at rates[i] * exp(g_i z(t)),
  z the standardised wheel speed on its 50 Hz grid, the gain g_i set by the unit's region (so
  that the regions differ) plus a little noise; counts per 20 ms sample, times uniform inside."""
  z = (wheel_speed - wheel_speed.mean()) / (wheel_speed.std() + 1e-9)
  region = np.array([COSMOS.index(r) for r in regions], np.float64)
  gain = 0.8 * (region - 4.5) / 4.5 + rng.normal(0, 0.1, len(rates))
  expected = rates[:, None] * np.exp(np.clip(gain[:, None] * z[None], -3, 3)) / FS  # [units, samples]
  unit, sample = np.nonzero(np.ones_like(expected, bool))
  counts = rng.poisson(expected.reshape(-1))
  unit, sample = np.repeat(unit, counts), np.repeat(sample, counts)
  times = (sample + rng.uniform(0, 1, sample.size)) / FS
  order = np.argsort(times, kind="stable")
  return times[order], unit[order]


def write_session(
  path, session_id, *, eval_session, build, seed, n_units=24, duration=DURATION, spacing=5.0, tuned=False
):
  """Writes one session file at `path` (temporaldata's Data.to_hdf5, as BWB's pipeline does), `duration`
  seconds long (the default six minutes give TS2 no val chunk: it starts at 900 s), a trial every
  `spacing` s. tuned: the units' rates follow the wheel, with region-specific gains
  (_tuned_spikes), so that there is something to decode; else constant rates."""
  rng = np.random.default_rng(seed)
  selected = build == "selected_units"
  n_total = n_units + (0 if selected else 8)  # all_units keeps the units selected_units drops
  rates = rng.uniform(1.5, 12.0, n_total)
  counts = rng.poisson(rates * duration)
  times = np.concatenate([np.sort(rng.uniform(0.0, duration, c)) for c in counts])
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
    qc_neural=np.array(["PASS"] * n_total),
    qc_neural_alignment=np.array(["PASS"] * n_total),
  )
  if eval_session and selected:
    unit_table.ts2_co_smoothing_is_held_out_test = held_out_mask(uuids, "ts2_co_smoothing_test")
    unit_table.ts2_co_smoothing_is_held_out_val = held_out_mask(uuids, "ts2_co_smoothing_val")
  spikes = IrregularTimeSeries(
    timestamps=times[order], unit_index=units[order], amplitude=rng.uniform(50, 200, times.size), domain="auto"
  )
  trials = _trials(rng, duration, spacing)
  behaviour = _behaviour(rng, duration)
  if tuned:
    times, units = _tuned_spikes(
      np.random.default_rng(seed + 7919), rates, unit_table.region_cosmos, behaviour["wheel"].wheel_speed
    )
    spikes = IrregularTimeSeries(
      timestamps=times, unit_index=units, amplitude=np.full(times.size, 100.0), domain="auto"
    )
  brainset = Data(id="ibl_brain_wide_bench_2026", derived_version="0.1.0", source="fixture", unit_filtering=build)
  data = Data(
    brainset=brainset,
    subject=Data(id=f"mouse{seed}", species="MUS_MUSCULUS"),
    session=Data(id=session_id),
    spikes=spikes,
    units=unit_table,
    trials=trials,
    task_aligned_intervals=_task_aligned(trials),
    **behaviour,
    domain=spikes.domain,
  )
  domain = (spikes.domain.start, spikes.domain.end)
  task_domain = (data.task_aligned_intervals.domain.start, data.task_aligned_intervals.domain.end)
  if eval_session:
    for name, split in splits.causal_splits(domain, task_domain, splits.EVAL_RATIOS).items():
      setattr(data, f"ts1_{name}_domain", Interval(*split))
    for name, split in splits.chunked_splits(domain, task_domain).items():
      setattr(data, f"ts2_{name}_domain", Interval(*split))
  else:
    pre = splits.causal_splits(domain, task_domain, splits.PRETRAIN_RATIOS)
    data.pretrain_train_domain, data.pretrain_val_domain = Interval(*pre["train"]), Interval(*pre["val"])
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with h5py.File(path, "w") as f:
    data.to_hdf5(f)
  return path


def make(root, eval_ids=EVAL_IDS, eval_duration=DURATION, **options):
  """Writes the fixture files under `root` (each of `eval_ids`, `eval_duration` s long, and the
  three pretrain sessions, in both builds; options: write_session's spacing and tuned); returns
  {(build, session id): path}. The TS2 splits have a val chunk only in sessions over 900 s long."""
  out = {}
  for b, build in enumerate(BUILDS):
    for s, (session_id, eval_session) in enumerate([(i, True) for i in eval_ids] + [(i, False) for i in PRETRAIN_IDS]):
      folder = os.path.join(root, build, "ibl_brain_wide_bench_2026", "eval" if eval_session else "pretrain")
      path = os.path.join(folder, f"{session_id}.h5")
      duration = eval_duration if eval_session else DURATION
      out[(build, session_id)] = write_session(
        path, session_id, eval_session=eval_session, build=build, seed=100 + s + 10 * b, duration=duration, **options
      )
  return out
