"""mtm_jax.bwb.splits: BWB's split protocol on hand-checked cases, the fixtures' stored splits
recomputed, and altered files reported."""

import hashlib
import shutil

import bwb_sessions
import h5py
import numpy as np
import pytest

from mtm_jax.bwb import sessions, splits

EPS = splits.GAP_EPS


def _iv(*pairs):
  return np.array([p[0] for p in pairs], np.float64), np.array([p[1] for p in pairs], np.float64)


def _pairs(split):
  return list(zip(split[0].tolist(), split[1].tolist(), strict=True))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  return bwb_sessions.make(str(tmp_path_factory.mktemp("bwb_splits")))


def test_fixtures_agree_with_the_protocol(files):
  for path in files.values():
    s = sessions.read_session(path)
    splits.check_session(s)
    got = splits.session_splits(s)
    assert got.keys() == s.splits.keys()
    assert (~s.trials["is_valid"]).sum() >= 3


def _altered(files, tmp_path, field, edit, key=("selected_units", bwb_sessions.EVAL_IDS[0])):
  """The session of a copy of fixture `key` whose `field` (or fields, with edits) was edited."""
  path = str(tmp_path / "altered.h5")
  shutil.copy(files[key], path)
  fields, edits = (field, edit) if isinstance(field, tuple) else ((field,), (edit,))
  with h5py.File(path, "a") as f:
    for name, change in zip(fields, edits, strict=True):
      value = f[name][()]
      del f[name]
      f.create_dataset(name, data=change(value))
  return sessions.read_session(path)


@pytest.mark.parametrize(
  "field,edit,message",
  [
    ("ts1_val_domain/start", lambda v: v + 1.0, r"ts1_val_domain\.start\[0\]: stored .*, BWB's protocol gives"),
    ("ts2_test_domain/end", lambda v: np.nextafter(v, 0), r"ts2_test_domain\.end\[0\]"),
    ("ts1_test_domain/start", lambda v: v - 1e-9, r"ts1_test_domain\.start\[0\]"),
    ("units/ts2_co_smoothing_is_held_out_test", lambda v: v[::-1], r"is_held_out_test\[\d+\]"),
    ("trials/is_valid", lambda v: np.ones_like(v), r"trials\.is_valid\[\d+\]: stored True, BWB's protocol gives False"),
    ("task_aligned_intervals/choice/end", lambda v: v + 0.02, r"task_aligned_intervals\.choice\.end\[0\]"),
  ],
)
def test_an_altered_file_is_reported(files, tmp_path, field, edit, message):
  s = _altered(files, tmp_path, field, edit)
  with pytest.raises(splits.SplitMismatch, match=message) as error:
    splits.check_session(s)
  assert s.path in str(error.value)


def test_an_extra_stored_chunk_is_reported(files, tmp_path):
  fields = ("ts2_val_domain/start", "ts2_val_domain/end")
  s = _altered(files, tmp_path, fields, (lambda v: np.array([1.0]), lambda v: np.array([2.0])))
  with pytest.raises(splits.SplitMismatch, match=r"ts2_val_domain\.start: stored 1 entries, BWB's protocol gives 0"):
    splits.check_session(s)


def test_an_altered_pretrain_split_is_reported(files, tmp_path):
  key = ("all_units", bwb_sessions.PRETRAIN_IDS[1])
  s = _altered(files, tmp_path, "pretrain_val_domain/start", lambda v: v - 5.0, key)
  with pytest.raises(splits.SplitMismatch, match=r"pretrain_val_domain\.start\[0\]"):
    splits.check_session(s)


def test_trial_exclusions():
  stim = np.zeros(8)
  move = np.array([0.0, 10.0, 10.01, -0.01, 0.5, 0.5, 0.5, 0.5])
  trials = {k: np.ones(8) for k in splits.REQUIRED}
  trials.update(stim_on_time=stim, movement_onset_time=move, choice=np.array([1, 0, 1, 1, 2, 1, 0, 1.0]))
  trials["feedback_type"][5] = np.nan
  trials["probability_left"][7] = np.nan
  assert splits.valid_trials(trials).tolist() == [True, True, False, False, False, False, True, False]
  with pytest.raises(splits.SplitError, match=r"trials: missing column\(s\) \['feedback_time'\]"):
    splits.valid_trials({k: v for k, v in trials.items() if k != "feedback_time"})


def test_task_aligned_windows():
  trials = {k: np.ones(3) for k in splits.REQUIRED}
  trials.update(stim_on_time=np.array([10.0, 20.0, 30.0]), movement_onset_time=np.array([10.5, 20.2, 29.0]))
  trials.update(
    feedback_time=np.array([10.7, 21.5, 31.0]), choice=np.array([1, 0, 1]), block_prior=np.array([0, -1, 1])
  )
  t = splits.task_aligned(trials)
  assert t["choice"][2].tolist() == [0, 1] and t["block_prior"][2].tolist() == [0]
  assert _pairs(t["domain"]) == [(9.0, 11.7), (19.1, 22.5)]
  assert t["stimulus_side"][0].tolist() == [9.1, 19.1] and t["movement_window"][1].tolist() == [11.5, 21.2]


def test_causal_splits_cut_in_task_time_snap_to_edges_and_keep_gaps():
  task = _iv((0, 10), (30, 40), (65, 75), (90, 100), (120, 130))
  got = splits.causal_splits(_iv((0, 200)), task)
  # train: 40% of 50 s of task time = 20 s, the end of the second interval (40).
  # val end: 50 * (0.4 + 0.2) = 30.000000000000004, past the third interval's end: the nearer
  # edge is the fourth's start (90), where exactly 30 s would have given 70.
  assert _pairs(got["train"]) == [(0, 40)]
  assert _pairs(got["val"]) == [(60 + EPS, 90)]  # 40 + 20 lands on no interval's inside: + 1e-12
  assert _pairs(got["test"]) == [(110 + EPS, 200)]
  # A gap that ends inside a task interval moves on to its end.
  task = _iv((0, 10), (25, 35), (40, 50), (55, 65), (70, 80))
  got = splits.causal_splits(_iv((0, 100)), task, gap=10.0)
  assert _pairs(got["train"]) == [(0, 35)] and _pairs(got["val"]) == [(50, 55)]
  assert _pairs(got["test"]) == [(65 + EPS, 100)]
  # Pretraining: 90/10, val runs to the recording end, no test.
  got = splits.causal_splits(
    _iv((0, 200)), _iv((0, 10), (30, 40), (65, 75), (90, 100), (120, 130)), splits.PRETRAIN_RATIOS
  )
  assert _pairs(got["train"]) == [(0, 120)] and _pairs(got["val"]) == [(140 + EPS, 200)] and got["test"][0].size == 0


def test_causal_splits_clip_task_time_to_the_recording():
  got = splits.causal_splits(_iv((5, 100)), _iv((0, 10), (20, 30), (40, 50)), gap=5.0)
  assert _pairs(got["train"]) == [(5, 20)]  # 25 s of task time inside: 40% = 10 s, nearer edge 20
  assert _pairs(got["val"]) == [(30, 40)] and _pairs(got["test"]) == [(50, 100)]  # gaps end inside: edges
  # A gap ending exactly on a task start, + 1e-12, is inside that interval: BWB's assertion stops there.
  with pytest.raises(splits.SplitError, match="val_start 40.000000000001: inside a task interval"):
    splits.causal_splits(_iv((5, 100)), _iv((0, 10), (20, 30), (40, 50)), gap=20.0)
  with pytest.raises(splits.SplitError, match="no interval inside the recording"):
    splits.causal_splits(_iv((500, 600)), _iv((0, 10)))


def test_chunk_edges():
  assert _pairs(splits.chunk_edges(0.0, 1000.0)) == [(0, 300), (300, 600), (600, 900), (900, 1000)]
  assert _pairs(splits.chunk_edges(0.0, 900.0)) == [(0, 300), (300, 600), (600, 900)]


def test_chunk_order_repeats_every_five():
  got = splits.chunked_splits(_iv((0, 1600)), _iv((10, 20)), gap=0.0)
  assert _pairs(got["train"]) == [(0, 300), (600, 900), (1500, 1600)]
  assert _pairs(got["test"]) == [(300, 600), (1200, 1500)]
  assert _pairs(got["val"]) == [(900, 1200)]


def test_a_trial_across_two_chunks_moves_their_edge():
  got = splits.chunked_splits(_iv((0, 700)), _iv((295, 303), (598, 610)), gap=0.0)
  assert _pairs(got["train"]) == [(0, 303), (598, 700)] and _pairs(got["test"]) == [(303, 598)]
  with pytest.raises(splits.SplitError, match=r"interval 0 \[250.0, 650.0\] overlaps 3 chunks"):
    splits.chunked_splits(_iv((0, 1000)), _iv((250, 650)))


def test_gaps_snap_to_trial_starts():
  task = _iv((100, 102), (310, 312), (325, 327), (640, 642))
  got = splits.chunked_splits(_iv((0, 700)), task)
  assert _pairs(got["train"]) == [(0, 300), (640, 700)] and _pairs(got["test"]) == [(325, 600)]
  assert got["val"][0].size == 0
  got = splits.chunked_splits(_iv((0, 700)), _iv((100, 102)))  # no trial after a gap: chunks empty, dropped
  assert _pairs(got["train"]) == [(0, 300)] and got["test"][0].size == 0


def test_the_trial_containing_the_recording_end_is_excluded():
  # [598, 605] holds the recording end (601): it moves no chunk edge; without the rule the
  # chunks [300, 600] and [600, 601] would meet at 598.
  got = splits.chunked_splits(_iv((0, 601)), _iv((10, 20), (598, 605)), gap=0.0)
  assert _pairs(got["train"]) == [(0, 300), (600, 601)] and _pairs(got["test"]) == [(300, 600)]
  got = splits.chunked_splits(_iv((0, 601)), _iv((10, 20), (598, 601 - 5e-7)), gap=0.0)  # within 1e-6
  assert _pairs(got["test"]) == [(300, 600)]
  got = splits.chunked_splits(_iv((0, 601)), _iv((10, 20), (598, 600.5)), gap=0.0)  # ends before it
  assert _pairs(got["test"]) == [(300, 600.5)] and _pairs(got["train"]) == [(0, 300), (600.5, 601)]


def test_held_out_ranking_and_k():
  ids = [f"u{i}" for i in range(10)]
  assert np.flatnonzero(splits.held_out_mask(ids, splits.SALT_VAL)).tolist() == [2]
  assert np.flatnonzero(splits.held_out_mask(ids, splits.SALT_TEST)).tolist() == [4]
  assert (
    splits.held_out_mask([i.encode() for i in ids], splits.SALT_TEST).tolist()
    == splits.held_out_mask(ids, splits.SALT_TEST).tolist()
  )
  for n, k in [(1, 1), (5, 1), (15, 2), (24, 2), (25, 2), (35, 4), (45, 4), (46, 5)]:  # round half to even
    assert splits.held_out_mask([f"u{i}" for i in range(n)], splits.SALT_VAL).sum() == k
  ranked = sorted(ids, key=lambda u: hashlib.sha256(f"ts2_co_smoothing_test:{u}".encode()).hexdigest())
  mask = splits.held_out_mask(ids[::-1], splits.SALT_TEST)  # the order of the unit table does not matter
  assert [u for u, m in zip(ids[::-1], mask, strict=True) if m] == ranked[:1]
