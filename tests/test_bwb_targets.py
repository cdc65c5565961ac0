"""mtm_jax.bwb.targets regenerates BWB's scored items and ground truth from session files (the
fixtures of tests/bwb_sessions.py): binning against a per-spike loop, TS1 items against their
split domains and task windows, TS2 windows and targets, and a perfect submission scored and
validated against the written ground truth."""

import dataclasses
import warnings

import bwb_sessions
import numpy as np
import pytest

from mtm_jax.bwb import scoring, sessions, submission, tasks, targets, windows

EVAL = bwb_sessions.EVAL_IDS[0]
SEEDS = (43, 44, 45)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  return bwb_sessions.make(str(tmp_path_factory.mktemp("bwb_targets")))


@pytest.fixture(scope="module")
def sess(files):
  return {build: sessions.read_session(files[(build, EVAL)]) for build in bwb_sessions.BUILDS}


def _loop_counts(times, units, starts, n_units, n_bins=50, bin_size=0.02):
  out = np.zeros((len(starts), n_bins, n_units), np.int32)
  for w, s in enumerate(starts):
    for t, u in zip(times, units, strict=True):
      if s <= t < s + n_bins * bin_size:
        out[w, int(np.floor((t - s) / bin_size)), u] += 1
  return out


def test_bin_counts_matches_a_per_spike_loop():
  rng = np.random.default_rng(0)
  times = np.sort(rng.uniform(0.0, 20.0, 3000))
  units = rng.integers(0, 7, times.size)
  starts = np.sort(rng.uniform(0.5, 18.5, 40))
  want = _loop_counts(times, units, starts, 7)
  got = targets.bin_counts(times, units, starts, 7)
  assert got.dtype == np.int32 and got.shape == (40, 50, 7) and np.array_equal(got, want)
  assert np.array_equal(targets.bin_counts(times, units, starts, 7, max_pairs=50), want)  # chunked alike
  sub = targets.bin_counts(times, units, starts, 7, units=[5, 1], bins=slice(-5, None))
  assert np.array_equal(sub, want[:, -5:][:, :, [5, 1]])


def _bin_spikes_steps(times, units, s, n_units, first, last):
  """torch_brain 0.2.0a0's Data.slice then bin_spikes of one 1 s window, step by step in scalars."""
  e = s + 1.0
  rel = times[(times >= s) & (times < e)] - s
  u = units[(times >= s) & (times < e)]
  start, end = max(first, s) - s, min(last, e) - s
  discard = (end - start) - np.floor((end - start) / 0.02 + 1e-3) * 0.02
  if discard > 0:
    start += discard
    keep = (rel >= start) & (rel < end)
    rel, u = rel[keep] - start, u[keep]
    start = 0.0
  out = np.zeros((round((end - start) / 0.02) if discard <= 0 else 50, n_units), np.int32)
  np.add.at(out, (np.floor((rel - start) * (1 / 0.02)).astype(int), u), 1)
  return out


def test_bin_counts_follows_bin_spikes_rounding_rule():
  # s + 1.0 rounds up at s = 3.06, so bin_spikes drops the rounding excess d > 0 at the window's
  # start: a spike at s is not counted and one at s + 0.5 lands in bin 24 (naive edges: 25).
  s = 3.06
  times = np.array([s - 1.0, s, s + 0.5, s + 2.0])
  got = targets.bin_counts(times, np.zeros(4, int), np.array([s]), 1)
  assert (s + 1.0) - s > 1.0 and got.sum() == 1 and got[0, 24, 0] == 1
  rng = np.random.default_rng(1)
  starts = np.round(rng.uniform(1.0, 900.0, 60) / 0.02) * 0.02  # grid starts, spikes on bin edges
  edges = (starts[:, None] + np.arange(-2, 53) * 0.02).reshape(-1)
  times = np.sort(np.concatenate([edges, np.nextafter(edges, 0), rng.uniform(0, 1000, 5000)]))
  units = rng.integers(0, 3, times.size)
  got = targets.bin_counts(times, units, starts, 3)
  for w, s in enumerate(starts):
    assert np.array_equal(got[w], _bin_spikes_steps(times, units, s, 3, times[0], times[-1])), s


def test_ts1_items_lie_in_their_split_with_the_task_window(sess):
  s = sess["all_units"]
  trials = s.trials
  anchors = {
    "choice": trials["movement_onset_time"] - 1.0,
    "reward": trials["feedback_time"],
    "stimulus_contrast": trials["stim_on_time"] - 0.9,
    "wheel_speed": trials["movement_onset_time"],
    "licking_rate": trials["feedback_time"],
  }
  seen = {}
  for task, anchor in anchors.items():
    for split in ("train", "val", "test"):
      items = targets.ts1_items(s, task, split)
      lo, hi = s.splits[f"ts1_{split}"]
      assert items.trial_id.size > 0 and np.all(trials["is_valid"][items.trial_id])
      assert np.all((items.window_start >= lo[0]) & (items.window_start + 1.0 <= hi[-1]))
      assert np.array_equal(items.window_start, anchor[items.trial_id])
      seen.setdefault(task, []).append(set(items.trial_id.tolist()))
      if task in tasks.TS1_CLASS_DIMS:
        assert items.values.dtype == np.int64 and items.timestamps is None
        assert np.array_equal(items.values, np.asarray(trials[task])[items.trial_id])
      else:
        assert items.values.shape == items.timestamps.shape == (items.trial_id.size, 50)
  for sets in seen.values():
    assert not (sets[0] & sets[1] or sets[1] & sets[2] or sets[0] & sets[2])
  lick = targets.ts1_items(s, "licking_rate", "test")
  rate = s.behaviour["licks"].values["licking_rate"]
  t = s.behaviour["licks"].timestamps
  first = np.searchsorted(t, lick.window_start[0] - 1e-9)
  assert np.array_equal(lick.values[0], np.round(rate[first : first + 50] / 50.0))


def test_ts1_zscores_with_train_statistics(sess):
  s = sess["all_units"]
  series = s.behaviour["whisker"]
  t, raw = series.timestamps, series.values["whisker_motion_energy"]
  table = s.task_aligned["movement_window"]
  lo, hi = s.splits["ts1_train"]
  train = (table["start"] >= lo[0]) & (table["end"] <= hi[-1])
  inside = np.zeros(t.size, bool)
  for a, b in zip(table["start"][train], table["end"][train], strict=True):
    inside |= (t >= a - 1e-9) & (t < b - 1e-9)
  mean, std = raw[inside].mean(), raw[inside].std()
  items = targets.ts1_items(s, "whisker_motion_energy", "test")
  first = np.searchsorted(t, items.window_start - 1e-9)
  want = (raw[first[:, None] + np.arange(50)] - mean) / std
  assert np.allclose(items.values, want, atol=1e-5)
  assert np.allclose(items.timestamps[:, 0], t[first] - items.window_start)
  paw = targets.ts1_items(s, "left_paw_speed", "test")
  confident = s.behaviour["paws"].values["is_left_paw_confident"]
  first = np.searchsorted(t, paw.window_start - 1e-9)
  assert paw.mask.dtype == bool and np.array_equal(paw.mask, confident[first[:, None] + np.arange(50)])
  no_wheel = dataclasses.replace(s, behaviour={k: v for k, v in s.behaviour.items() if k != "wheel"})
  assert targets.ts1_items(no_wheel, "wheel_speed", "test") is None


def test_ts2_starts_and_targets(sess):
  s = sess["selected_units"]
  dom = s.task_aligned["domain"]
  starts = targets.ts2_starts(s)
  want = windows.window_starts(*windows.intersect(dom["start"], dom["end"], *s.splits["ts2_test"]))
  assert starts.dtype == np.float64 and np.array_equal(starts, want) and starts.size > 100
  counts = targets.bin_counts(s.spike_times, s.spike_units, starts, len(s.units.ids))
  co, co_ids = targets.ts2_targets(s, "co_smoothing", starts)
  held = np.flatnonzero(s.units.held_out_test)
  assert co.dtype == np.float32 and np.array_equal(co, counts[:, :, held])
  assert co_ids == [f"{EVAL}/{u}" for u in s.units.ids[held]]
  fc, fc_ids = targets.ts2_targets(s, "forecasting", starts)
  assert np.array_equal(fc, counts[:, -5:, :]) and len(fc_ids) == len(s.units.ids)
  with pytest.raises(targets.TargetError, match="selected_units"):
    targets.ts2_targets(sess["all_units"], "forecasting", starts)


def test_ts3_targets_apply_bwb_unit_rules(sess):
  s = sess["selected_units"]
  cols = dict(s.units.columns)
  cols["qc_neural"] = cols["qc_neural"].copy()
  cols["qc_neural"][0] = "WARNING"
  cosmos = s.units.cosmos.copy()
  cosmos[1] = "void"
  units = dataclasses.replace(s.units, columns=cols, cosmos=cosmos)
  ids, labels = targets.ts3_targets([dataclasses.replace(s, units=units)])
  assert ids == [f"{EVAL}/{u}" for u in s.units.ids[2:]]
  assert [tasks.COSMOS_LABELS[i] for i in labels] == list(s.units.cosmos[2:])


def test_ts3_probe_units_keep_warnings_and_drop_failures_and_void(sess):
  s = sess["selected_units"]
  cols = dict(s.units.columns)
  cols["qc_neural"], cols["qc_neural_alignment"] = cols["qc_neural"].copy(), cols["qc_neural_alignment"].copy()
  cols["qc_neural"][0], cols["qc_neural"][1], cols["qc_neural_alignment"][2] = "WARNING", "FAIL", "FAIL"
  cosmos = s.units.cosmos.copy()
  cosmos[3] = "root"
  keep = targets.ts3_probe_units(
    dataclasses.replace(s, units=dataclasses.replace(s.units, columns=cols, cosmos=cosmos))
  )
  assert keep[0] and not keep[1:4].any() and keep[4:].all()


def test_perfect_submission_scores_perfectly(files, tmp_path):
  gt = str(tmp_path / "gt")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    written = targets.write_ground_truth(list(files.values()), gt)
  assert len(written) == 2 * (8 + 2) + 1
  sub, label = str(tmp_path / "sub"), "perfect"
  meta = dict(dataset_version="0.1.0")
  all_ids, all_labels = [], []
  for sid in bwb_sessions.EVAL_IDS:
    full = sessions.read_session(files[("all_units", sid)])
    sel = sessions.read_session(files[("selected_units", sid)])
    for seed in SEEDS:
      for task in tasks.TS1_TASKS:
        items = targets.ts1_items(full, task, "test")
        spec = tasks.ts1_spec(task)
        if spec.classification:
          pred = np.eye(spec.dim, dtype=np.float32)[items.values] * 10.0
        elif task == "licking_rate":
          pred = np.log(items.values + 1e-6)
        else:
          pred = items.values
        submission.write_ts1(
          sub,
          label,
          task,
          sid,
          seed,
          pred,
          items.trial_id,
          timestamps=items.timestamps,
          unit_filtering="all_units",
          **meta,
        )
      starts = targets.ts2_starts(sel)
      for task in tasks.TS2_TASKS:
        tgt, ids = targets.ts2_targets(sel, task, starts)
        submission.write_ts2(sub, label, task, sid, seed, np.log(tgt + 1e-6), starts, ids, dtype=np.float32, **meta)
    ids, labels = targets.ts3_targets([sel])
    all_ids += ids
    all_labels.append(labels)
  for seed in SEEDS:
    proba = np.eye(len(tasks.COSMOS_LABELS), dtype=np.float32)[np.concatenate(all_labels)]
    submission.write_ts3(sub, label, seed, proba, all_ids, **meta)
  assert submission.validate(sub, gt) == []
  scores = scoring.score_folder(sub, gt)
  assert not scores.warnings
  for key, value in scores.raw.items():
    task = key[1]
    if task.startswith("ts3-"):
      present = set(np.concatenate(all_labels).tolist())
      for i, name in enumerate(tasks.COSMOS_LABELS):  # absent labels score 0 (macro over all ten)
        assert value[f"{name}/f1-score"] == (1.0 if i in present else 0.0)
      assert value["macro/f1-score"] == pytest.approx(len(present) / len(tasks.COSMOS_LABELS))
    elif task.startswith("ts2-") or task == "ts1-licking_rate":
      assert value["poisson_d2"] > 0.99, (key, value)
    elif tasks.ts1_spec(task).classification:
      assert value["bacc"] == pytest.approx(1.0), (key, value)
    else:
      assert value["r2"] == pytest.approx(1.0, abs=1e-6), (key, value)
