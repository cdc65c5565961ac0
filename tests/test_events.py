"""Event sessions: the reaching task, validation, the spike_events builder round trip, windows."""

import dataclasses

import grain
import numpy as np
import pytest

from data_builders.spike_events import spike_events
from mtm_jax.datasets import reaching, recording
from mtm_jax.datasets.events import buckets as buckets_lib
from mtm_jax.datasets.events import batches as batches_lib
from mtm_jax.datasets.events import session as session_lib
from mtm_jax.datasets.events import stitching
from mtm_jax.datasets.events import tfds
from mtm_jax.datasets.events import tokens as tokens_lib
from mtm_jax.datasets.events import vocabulary
from mtm_jax.datasets.events import windows as windows_lib

SMALL = dict(min_units=20, max_units=30, min_trials=10, max_trials=12)


@pytest.fixture(scope="module")
def sessions():
  """Two tiny reaching sessions (20-30 units, 10-12 trials each)."""
  return [reaching.simulate_reaching_session(i, **SMALL) for i in (0, 1)]


# ------------------------------------------------------------------------------ reaching


def test_reaching_is_deterministic_and_sessions_differ(sessions):
  again = reaching.simulate_reaching_session(0, **SMALL)
  for key in ("spike_times", "spike_units", "behaviour_values", "trial_starts"):
    np.testing.assert_array_equal(getattr(again, key), getattr(sessions[0], key), err_msg=key)
  a, b = sessions
  assert not set(a.unit_ids) & set(b.unit_ids)  # unit ids unique across sessions
  assert a.spike_times.dtype == np.float64 and a.spike_units.dtype == np.int32
  # Spike times are continuous (jittered within 1 ms steps), not on a grid.
  assert np.mean(np.abs(a.spike_times * 1000 - np.round(a.spike_times * 1000)) > 1e-3) > 0.9
  spec = reaching.ReachingBrain().session_spec(3)
  assert 40 <= len(spec.neuron_ids) <= 200 and 100 <= spec.n_trials <= 200
  for s in sessions:
    s.validate(where=s.session_id)
    period, speed = s.extras["behaviour_period"], np.linalg.norm(s.behaviour_values, axis=1)
    np.testing.assert_array_equal(s.behaviour_weights, np.asarray(reaching.PERIOD_WEIGHTS, np.float32)[period])
    assert speed[period == 1].mean() > 5 * speed[period == 0].mean()  # the hand moves when reaching
    sizes = {k: len(v) for k, v in s.splits.items()}
    assert sum(sizes.values()) == len(s.trial_starts) and sizes["train"] > sizes["test"] > 0


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
  "change, message",
  [
    (lambda s: dict(s, spike_times=s["spike_times"][::-1].copy()), "'spike_times' are not sorted"),
    (lambda s: dict(s, spike_units=s["spike_units"][:-1]), "but 'spike_units' has"),
    (lambda s: dict(s, spike_units=s["spike_units"] + 1000), "'spike_units' must index the"),
    (
      lambda s: dict(s, spike_times=np.where(np.arange(len(s["spike_times"])) == 3, np.nan, s["spike_times"])),
      "NaN/inf times",
    ),
    (lambda s: dict(s, behaviour_timestamps=s["behaviour_timestamps"][::-1].copy()), "strictly increasing"),
    (lambda s: dict(s, behaviour_weights=s["behaviour_weights"][1:]), "'behaviour_weights' must have shape"),
    (lambda s: dict(s, unit_regions=s["unit_regions"][1:]), "'unit_regions' has"),
    (lambda s: dict(s, trial_ends=s["trial_starts"] - 0.1), "inverted or empty"),
    (lambda s: dict(s, splits=dict(s["splits"], val=s["splits"]["train"][:1])), "overlap"),
    (lambda s: dict(s, splits=dict(s["splits"], train=s["splits"]["train"][::-1])), "not sorted by start"),
    (lambda s: dict(s, splits=dict(s["splits"], bogus=s["splits"]["val"])), "unknown names \\['bogus'\\]"),
    (lambda s: {k: v for k, v in s.items() if k != "unit_ids"}, "missing fields \\['unit_ids'\\]"),
    (lambda s: dict(s, spike_times=s["spike_times"].astype(np.float16)), "'spike_times' are stored as float16"),
    (
      lambda s: dict(s, behaviour_timestamps=s["behaviour_timestamps"].astype(np.float16)),
      "'behaviour_timestamps' are stored as float16",
    ),
  ],
)
def test_validate_event_session_names_the_problem(sessions, change, message):
  with pytest.raises(ValueError, match=f"where: .*{message}"):
    session_lib.EventSession.from_dict(change(vars(sessions[0])), where="where")


def test_float32_times_of_an_event_session_are_warned_about(sessions):
  fields = dict(vars(sessions[0]), spike_times=sessions[0].spike_times.astype(np.float32))
  with pytest.warns(recording.LowPrecisionTimesWarning, match="^where: 'spike_times' are stored as float32"):
    session_lib.EventSession.from_dict(fields, where="where")


# ------------------------------------------------------------------------------ builder


def test_builder_round_trip(tmp_path):
  config = spike_events.SpikeEventsConfig(name="reaching_test", session_index=2, **SMALL)
  session = config.load_session()
  builder = spike_events.Builder(config=config, data_dir=str(tmp_path), file_format="array_record")
  builder.download_and_prepare()
  meta = builder.info.metadata
  assert meta["unit_ids"] == list(session.unit_ids) and meta["unit_regions"] == list(session.unit_regions)
  assert meta["behaviour_name"] == "hand_vel" and meta["behaviour_dim"] == 2
  for split in session_lib.SPLITS:
    source = builder.as_data_source(split=split)
    intervals = session.splits[split]
    assert len(source) == len(intervals) > 0
    np.testing.assert_array_equal(np.asarray(meta["split_intervals"][split]), intervals)
    for example in source.__getitems__(list(range(len(source)))):
      j = example["interval_index"]
      start, end = intervals[j]
      assert (example["interval_start"], example["interval_end"]) == (start, end)
      part = session_lib.interval_data(session, start, end)
      assert len(part["spike_times"]) > 0
      for key, value in part.items():
        np.testing.assert_array_equal(example[key], value, err_msg=f"{split} {j} {key}")
        assert example[key].dtype == value.dtype, key
  # The whole session comes back (its trials tile the session, so every spike is stored).
  back = tfds.load_event_session("spike_events/reaching_test", str(tmp_path))
  back.validate(where="read back")
  for key in (
    "spike_times",
    "spike_units",
    "behaviour_timestamps",
    "behaviour_values",
    "behaviour_weights",
    "trial_starts",
    "trial_ends",
  ):
    np.testing.assert_array_equal(getattr(back, key), getattr(session, key), err_msg=key)
  train = tfds.load_event_session("spike_events/reaching_test", str(tmp_path), splits=("train",))
  assert list(train.splits) == ["train"]
  assert len(train.spike_times) == len(session_lib.restrict_to_splits(session, ["train"]).spike_times)


def test_registered_configs():
  names = {c.name for c in spike_events.Builder.BUILDER_CONFIGS}
  assert {"reaching_000", "reaching_015", "nwb", "nlb_mc_maze", "nlb_mc_rtt"} <= names


# ------------------------------------------------------------------------------ windows


def _check_batch(batch, data, length):
  assert set(batch) == set(tokens_lib.BATCH_KEYS)
  b, n = batch["unit_index"].shape
  assert n in data.config.bucket_lengths
  q, d = data.max_outputs, data.n_dims
  assert batch["output_values"].shape == (b, q, d) and batch["output_mask"].shape == (b, q)
  dtypes = dict(
    unit_index=np.int32,
    timestamps=np.float32,
    token_type=np.int32,
    input_mask=np.bool_,
    session_index=np.int32,
    output_timestamps=np.float32,
    output_values=np.float32,
    output_weights=np.float32,
    output_task=np.int32,
    output_mask=np.bool_,
  )
  for key, dtype in dtypes.items():
    assert batch[key].dtype == dtype, key
  mask, omask = batch["input_mask"], batch["output_mask"]
  for i in range(b):
    real = int(mask[i].sum())
    assert mask[i, :real].all() and not mask[i, real:].any()  # real tokens first, then padding
    assert (batch["unit_index"][i, real:] == 0).all() and (batch["unit_index"][i, :real] > 0).all()
    if real == 0:  # an all-padding row (the end of an evaluation)
      assert batch["session_index"][i] == 0 and not batch["output_mask"][i].any()
      continue
    t, types = batch["timestamps"][i, :real], batch["token_type"][i, :real]
    assert t.min() >= 0 and t.max() <= length
    starts, ends = batch["unit_index"][i, :real][types == 1], batch["unit_index"][i, :real][types == 2]
    assert len(set(starts)) == len(starts) and sorted(starts) == sorted(ends)  # one start, one end per unit
    assert set(batch["unit_index"][i, :real][types == 0]) <= set(starts)  # spikes only of kept units
    assert (t[types == 1] == 0).all() and (t[types == 2] == length).all()
    m = int(omask[i].sum())
    assert omask[i, :m].all() and not omask[i, m:].any()
    assert (batch["output_weights"][i, m:] == 0).all() and (batch["output_values"][i, m:] == 0).all()
    ot = batch["output_timestamps"][i, :m]
    assert ot.min() >= 0 and ot.max() <= length and (np.diff(ot) > 0).all()
  assert (batch["output_task"] == 0).all()


def test_training_batches(sessions):
  config = windows_lib.WindowConfig(unit_dropout=(5, 10, 15), bucket_lengths=(128, 256, 512, 1024))
  data = windows_lib.prepare(sessions, "train", config)
  ds = batches_lib.training_batches(data, batch_size=4, seed=0)
  batches = [ds[i] for i in range(6)]
  for batch in batches:
    _check_batch(batch, data, 1.0)
    kept = (batch["token_type"] == 1).sum(axis=1)
    assert kept.min() >= 5 and kept.max() <= 15  # unit dropout within its bounds
    assert set(batch["session_index"]) <= {1, 2}
  assert len({len(b["unit_index"][0]) for b in batches}) <= len(config.bucket_lengths)
  # Global vocabulary: session 2's units follow session 1's.
  u0 = len(sessions[0].unit_ids)
  np.testing.assert_array_equal(
    data.vocab.unit_rows(sessions[1].session_id), 1 + u0 + np.arange(len(sessions[1].unit_ids))
  )
  for batch in batches:
    rows = batch["unit_index"][batch["input_mask"]].reshape(-1)
    sess = np.repeat(batch["session_index"], batch["input_mask"].sum(1))
    assert ((rows <= u0) == (sess == 1)).all()
  # Deterministic from (seed, index); a resumed iterator reads the same batches.
  again = batches_lib.training_batches(data, batch_size=4, seed=0)
  for key in tokens_lib.BATCH_KEYS:
    np.testing.assert_array_equal(again[5][key], batches[5][key])
  resumed = iter(again[3:].to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=1)))
  np.testing.assert_array_equal(next(resumed)["timestamps"], batches[3]["timestamps"])
  other = batches_lib.training_batches(data, batch_size=4, seed=1)[0]
  assert not np.array_equal(other["timestamps"], batches[0]["timestamps"])
  # Each epoch visits every interval with fresh offsets.
  stream = batches_lib._TrainingWindows(data, seed=0)
  n = stream.per_epoch
  epoch0, epoch1 = stream.starts(range(n)), stream.starts(range(n, 2 * n))
  assert sorted(s[1] for s in epoch0) != sorted(s[1] for s in epoch1)
  assert sorted((s[0], s[2]) for s in epoch0) == sorted((s[0], s[2]) for s in epoch1)
  assert [(s[0], s[2]) for s in epoch0] != [(s[0], s[2]) for s in epoch1]  # in a fresh order
  for _, start, end in epoch0:
    assert any(
      a - 1e-9 <= start and (start + 1.0 <= b + 1e-9 or (b - a < 1.0 and start == a))
      for a, b in sessions[0].splits["train"].tolist() + sessions[1].splits["train"].tolist()
    )


def test_unit_dropout_caps_at_session_units(sessions):
  rng = np.random.default_rng(0)
  counts = [windows_lib.sample_unit_count(rng, 500, (30, 100, 300)) for _ in range(2000)]
  assert 30 <= min(counts) and max(counts) <= 300 and 80 < np.mean(counts) < 160  # mean of (30,100,300) is 143
  assert {windows_lib.sample_unit_count(rng, 25, (30, 100, 300)) for _ in range(20)} == {25}
  data = windows_lib.prepare(sessions[:1], "train", windows_lib.WindowConfig())  # 30/100/300: a small session keeps all
  batch = batches_lib.training_batches(data, batch_size=2, seed=0)[0]
  assert ((batch["token_type"] == 1).sum(1) == len(sessions[0].unit_ids)).all()


def test_outputs_scaled_buckets_grown_and_truncation_counted(sessions):
  config = windows_lib.WindowConfig(unit_dropout=None, bucket_lengths=(80, 96))
  data = windows_lib.prepare(sessions[:1], "train", config)
  n_units = len(sessions[0].unit_ids)
  assert 100 <= data.max_outputs <= 101  # 1 s of 100 Hz behaviour (+1 for rounding at the edge)
  scale = session_lib.behaviour_scale(sessions[:1])
  np.testing.assert_allclose(data.scale, scale)
  # The buckets grow up the ladder to hold the longest window: none loses a spike.
  longest, _, _ = windows_lib.longest_window(sessions[:1], "train", config)
  assert data.config.bucket_lengths == buckets_lib.grow_buckets((80, 96), longest) and longest > 96
  report = batches_lib.token_length_report(data, batch_size=3, seed=0, n_batches=2)
  assert report["truncated_windows"] == 0 and report["dropped_spikes"] == 0 and report["max_tokens"] <= longest
  # Buckets smaller than a window (EventData made by hand) still cut it, counted.
  data = dataclasses.replace(data, config=config)
  batch = batches_lib.training_batches(data, batch_size=3, seed=0)[0]
  _check_batch(batch, data, 1.0)
  assert batch["unit_index"].shape[1] == 96  # every window overflows: truncated to the largest bucket
  assert ((batch["token_type"] == 1).sum(1) == n_units).all()  # all start/end tokens kept
  report = batches_lib.token_length_report(data, batch_size=3, seed=0, n_batches=2)
  assert report["truncated_windows"] == 6 and report["dropped_spikes"] > 0 and report["bucket_counts"][96] == 2
  with pytest.raises(ValueError, match="max_outputs=10 is too small"):
    windows_lib.prepare(sessions[:1], "train", windows_lib.WindowConfig(max_outputs=10))
  sid = sessions[0].session_id
  with pytest.raises(ValueError, match=rf"max_tokens=32: session '{sid}' has a window of split 'train' \(from"):
    windows_lib.prepare(sessions[:1], "train", windows_lib.WindowConfig(bucket_lengths=(32,), max_tokens=32))


def test_evaluation_windows_cover_and_stitch(sessions):
  train = windows_lib.prepare(sessions, "train", windows_lib.WindowConfig(bucket_lengths=(1024, 2048)))
  data = windows_lib.prepare(
    sessions, "test", windows_lib.WindowConfig(bucket_lengths=(1024, 2048)), vocab=train.vocab, scale=train.scale
  )
  windows = windows_lib.evaluation_windows(data)
  for s, a, b in data.intervals:
    mine = windows[(windows[:, 0] == s) & (windows[:, 2] == b)][:, 1]
    assert mine[0] == a and np.all(np.diff(mine) <= 0.5 + 1e-9) and np.all(np.diff(mine) > 0)
    assert mine[-1] + 1.0 >= b - 1e-9 and mine[-1] + 1.0 <= b + 1e-9  # the last window ends at the interval end
  metas, predictions = [], []
  for batch, meta in batches_lib.evaluation_batches(data, batch_size=5):
    _check_batch(batch, data, 1.0)
    assert (batch["session_index"][meta["session_position"] < 0] == 0).all()
    metas.append(meta)
    predictions.append(batch["output_values"])  # a perfect model
  stitched = stitching.stitch_predictions(data, metas, predictions)
  for s, out in zip(sessions, stitched):
    test = session_lib.restrict_to_splits(s, ["test"])
    np.testing.assert_array_equal(out["timestamps"], test.behaviour_timestamps)  # every test sample covered
    np.testing.assert_allclose(out["prediction"], out["target"], rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------------------ vocabulary


def test_vocabulary_records_round_trip_and_new_rows(sessions):
  vocab = vocabulary.build_vocabulary(sessions[:1])
  records = vocab.records(["first"])
  assert records == [
    dict(name="first", session_id=sessions[0].session_id, unit_ids=[str(u) for u in sessions[0].unit_ids])
  ]
  assert vocabulary.Vocabulary.from_records(records) == vocab
  grown = vocab.extend(sessions[1:])
  assert grown.records(["first", "second"])[0] == records[0]
  new = grown.new_rows(vocab)
  u0, u1 = len(sessions[0].unit_ids), len(sessions[1].unit_ids)
  np.testing.assert_array_equal(new["units"], np.arange(1 + u0 + u1) > u0)
  np.testing.assert_array_equal(new["sessions"], [False, False, True])
  assert not grown.new_rows(grown)["units"].any()
  with pytest.raises(ValueError, match="not a prefix"):
    vocab.new_rows(grown)
  with pytest.raises(ValueError, match="not a prefix"):
    grown.new_rows(vocabulary.build_vocabulary(sessions[1:]))
  with pytest.raises(ValueError, match="2 names for 1 sessions"):
    vocab.records(["a", "b"])


# ------------------------------------------------------------------------------ multi-host rows


def _process_rows(batch_size, n_processes):
  return [slice(p * batch_size // n_processes, (p + 1) * batch_size // n_processes) for p in range(n_processes)]


def _assert_rows_make_the_batch(parts, whole, keys, where):
  for key in keys:
    np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key], err_msg=f"{where} {key}")
    assert all(p[key].dtype == whole[key].dtype for p in parts), key


@pytest.mark.parametrize("n_processes", [2, 4])
def test_process_rows_concatenate_to_the_global_batch(sessions, n_processes):
  config = windows_lib.WindowConfig(unit_dropout=(5, 10, 15), bucket_lengths=(64, 128, 256, 512, 1024))
  data = windows_lib.prepare(sessions, "train", config)
  whole = batches_lib.training_batches(data, batch_size=8, seed=3)
  mine = [batches_lib.training_batches(data, batch_size=8, seed=3, rows=r) for r in _process_rows(8, n_processes)]
  smaller = 0  # rows whose own windows would fit a smaller bucket than the global batch's
  for step in range(5):
    parts = [m[step] for m in mine]
    _assert_rows_make_the_batch(parts, whole[step], tokens_lib.BATCH_KEYS, f"training step {step}")
    smaller += sum(
      buckets_lib.bucket_length(int(p["input_mask"].sum(1).max()), config.bucket_lengths) < p["unit_index"].shape[1]
      for p in parts
    )
  assert smaller > 0  # the bucket is the global batch's, not the rows'

  test = windows_lib.prepare(sessions, "test", config, vocab=data.vocab, scale=data.scale)
  whole = list(batches_lib.evaluation_batches(test, batch_size=8))
  mine = [list(batches_lib.evaluation_batches(test, batch_size=8, rows=r)) for r in _process_rows(8, n_processes)]
  assert (whole[-1][1]["session_position"] < 0).any()  # the last batch has padding rows
  for i, (batch, meta) in enumerate(whole):
    _assert_rows_make_the_batch([m[i][0] for m in mine], batch, tokens_lib.BATCH_KEYS, f"evaluation batch {i}")
    _assert_rows_make_the_batch([m[i][1] for m in mine], meta, meta.keys(), f"evaluation meta {i}")
