"""Spike-token MtM: masking on tokens (what is dropped is exactly what is hidden, what is
scored exactly the targets), the model's relative-time and padding invariance, batched
evaluation against one mask at a time, and training (exact resume, unit identification
changes only the new rows, evaluation at three bin widths)."""

import dataclasses
import re

import jax
import ml_collections
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mtm_jax import masking, token_masking
from mtm_jax.configs import poyo_mtm as poyo_mtm_config
from mtm_jax.datasets import synthetic, synthetic_events
from mtm_jax.datasets.events import session as session_lib
from mtm_jax.datasets.events import tokens as tokens_lib
from mtm_jax.datasets.events import trials as trials_lib
from mtm_jax.evaluation import activity, copies, poyo_mtm as poyo_mtm_eval
from mtm_jax.models import poyo_mtm
from tests import run_checks
from mtm_jax.tasks import poyo_mtm as poyo_mtm_task, registry
from mtm_jax.training import trainer

REGIONS = ("CA1", "LP", "VISa")
STEPS = 6


def trial_session(index: int, n_units: int = 9, n_trials: int = 20, seed: int = 0) -> session_lib.EventSession:
  """Whole 2 s trials 0.5 s apart; unit u of region u % 3 fires at 4-20 Hz, more in the
  second half of a trial for region 0."""
  rng = np.random.default_rng([seed, index])
  starts = np.arange(n_trials) * 2.5 + 1.0
  times, units = [], []
  for s in starts:
    for u in range(n_units):
      rate = 4.0 + 4.0 * (u % 5)
      first, second = rng.poisson(rate), rng.poisson(rate * (3.0 if u % 3 == 0 else 1.0))
      times += [s + rng.uniform(0, 1, first), s + 1.0 + rng.uniform(0, 1, second)]
      units += [np.full(first, u), np.full(second, u)]
  times, units = np.concatenate(times), np.concatenate(units)
  order = np.argsort(times, kind="stable")
  stamps = (starts[:, None] + np.arange(0.01, 2.0, 0.02)[None]).reshape(-1)
  sid = f"trials_{index:03d}"
  return session_lib.EventSession.from_dict(
    dict(
      session_id=sid,
      spike_times=times[order],
      spike_units=units[order].astype(np.int32),
      unit_ids=np.array([f"{sid}/u{u}" for u in range(n_units)]),
      unit_regions=np.array([REGIONS[u % 3] for u in range(n_units)]),
      behaviour_name="speed",
      behaviour_timestamps=stamps,
      behaviour_values=np.zeros((len(stamps), 1), np.float32),
      behaviour_weights=np.ones(len(stamps), np.float32),
      trial_starts=starts,
      trial_ends=starts + 2.0,
      splits=session_lib.split_intervals(starts, starts + 2.0, seed=0),
    ),
    where=sid,
  )


@pytest.fixture(scope="module")
def sessions():
  """Sessions 0 and 1 to pretrain on (9 and 12 units), 2 held out (6 units)."""
  return [trial_session(0), trial_session(1, n_units=12), trial_session(2, n_units=6)]


def tiny_config():
  c = poyo_mtm_config.get_config("tiny")
  c.mesh.data = 2
  c.data.token_buckets = (512, 1024)
  c.train.steps = STEPS
  c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 3, STEPS, 3
  return c


# ------------------------------------------------------------------------------ masking


@pytest.mark.parametrize("scheme", range(len(masking.SCHEMES) + 1))
def test_token_masks_drop_exactly_the_hidden_spikes_and_score_the_targets(sessions, scheme):
  data = trials_lib.prepare(sessions[:2], "train", trials_lib.TrialConfig(), n_units=14)  # 2+ padding slots
  batch = trials_lib.collate(data, list(range(6)) + [-1], int(data.token_counts().max()))
  mask = token_masking.sample_mask(
    jax.random.key(scheme), jnp.int32(scheme), jnp.asarray(batch["unit_regions"]), 100, masking.MaskConfig()
  )
  keep = np.asarray(token_masking.keep_tokens(mask, batch, 0.02))
  hidden, targets = np.asarray(mask.hidden()), np.asarray(mask.targets())
  hide_units, hide_bins = np.asarray(mask.hide_units), np.asarray(mask.hide_bins)
  name = (masking.SCHEMES + (masking.TEMPORAL,))[scheme]
  for b in range(6):
    real = batch["input_mask"][b]
    unit, t = batch["token_unit"][b][real], batch["timestamps"][b][real]
    spike = batch["token_type"][b][real] == tokens_lib.SPIKE
    bins = np.clip(np.floor(t / 0.02).astype(int), 0, 99)
    expect = np.where(spike, ~hidden[b, bins, unit], ~(hide_units[b, unit] & hide_bins[b].all()))
    np.testing.assert_array_equal(keep[b][real], expect)
    assert not keep[b][~real].any()
    pad = batch["unit_regions"][b] < 0
    assert not targets[b][:, pad].any() and not hidden[b][:, pad].any()
    assert (targets[b] <= hidden[b]).all()  # scored entries are never seen
    if name == "intra-region":
      kept = ~hide_units[b] & ~pad
      region = batch["unit_regions"][b][kept | targets[b].any(0)]
      assert len(set(region)) == 1  # one region's units are seen or scored ...
      inside = batch["unit_regions"][b] == region[0]
      np.testing.assert_array_equal(hidden[b][:, ~inside & ~pad], True)  # ... and every other region hidden
      np.testing.assert_array_equal(targets[b][:, inside], hidden[b][:, inside])
    else:
      np.testing.assert_array_equal(targets[b], hidden[b])
    if name == "causal":
      cut = np.argmax(hide_bins[b])
      assert 40 <= cut < 100 and hide_bins[b][cut:].all() and not hide_bins[b][:cut].any()
    if name == "inter-region":
      assert len(set(batch["unit_regions"][b][hide_units[b]])) == 1
  assert targets[:6].any(axis=(1, 2)).sum() >= 4  # most trials have targets
  assert not targets[6].any() and not keep[6].any()  # a padding row: no unit slot, no token


def test_sample_queries_draws_distinct_targets():
  targets = np.zeros((3, 10, 5), bool)
  targets[0, 2:4, 1] = True  # 2 targets
  targets[1] = True  # 50 targets
  bins, units, valid = jax.device_get(token_masking.sample_queries(jax.random.key(0), jnp.asarray(targets), 8))
  assert valid[0].sum() == 2 and valid[1].all() and not valid[2].any()
  for b in range(2):
    picked = set(zip(bins[b][valid[b]], units[b][valid[b]]))
    assert len(picked) == valid[b].sum() and all(targets[b, t, n] for t, n in picked)


# ------------------------------------------------------------------------------ model


@pytest.fixture(scope="module")
def model():
  hp = poyo_mtm.Hparams(**{**poyo_mtm.PRESETS["tiny"].__dict__, "ffn_dropout": 0.0, "lin_dropout": 0.0, "t_min": 1e-2})
  return poyo_mtm.PoyoMtM(30, 3, hp, rngs=nnx.Rngs(0))


def model_batch(sessions):
  data = trials_lib.prepare(sessions[:1], "train", trials_lib.TrialConfig())
  batch = trials_lib.collate(data, [0, 1], int(data.token_counts()[:2].max()))
  queries = dict(query_unit=batch["unit_rows"][:, [0, 3, 5, 7]], query_time=np.array([[0.01, 0.5, 1.23, 1.99]] * 2))
  return batch, queries


def run(model, batch, queries, latent_timestamps=None):
  graphdef, state = nnx.split(model)
  fn = lambda s, b, u, t, lt: nnx.merge(graphdef, s)(b, u, t, jnp.array([1, 2]), latent_timestamps=lt)
  return np.asarray(jax.jit(fn)(state, batch, queries["query_unit"], queries["query_time"], latent_timestamps))


def test_relative_time_invariance(model, sessions):
  """Shifting tokens, latents and queries by the same time leaves the log-rates unchanged."""
  batch, queries = model_batch(sessions)
  shift = 0.375
  base = run(model, batch, queries, model.latent_timestamps())
  moved = run(
    model,
    dict(batch, timestamps=batch["timestamps"] + shift),
    dict(queries, query_time=queries["query_time"] + shift),
    model.latent_timestamps() + shift,
  )
  np.testing.assert_allclose(moved, base, atol=2e-5, rtol=1e-4)
  tokens_only = run(model, dict(batch, timestamps=batch["timestamps"] + shift), queries, model.latent_timestamps())
  assert np.abs(tokens_only - base).max() > 1e-3


def test_padding_invariance(model, sessions):
  """Padding tokens (any unit, time, type) and a larger bucket change no log-rate; the
  same tokens unmasked do."""
  batch, queries = model_batch(sessions)
  rng, extra = np.random.default_rng(0), 40
  b = batch["unit_index"].shape[0]
  padded = dict(
    batch,
    unit_index=np.concatenate([batch["unit_index"], rng.integers(1, 30, (b, extra)).astype(np.int32)], 1),
    timestamps=np.concatenate([batch["timestamps"], rng.uniform(0, 2, (b, extra)).astype(np.float32)], 1),
    token_type=np.concatenate([batch["token_type"], rng.integers(0, 3, (b, extra)).astype(np.int32)], 1),
    input_mask=np.concatenate([batch["input_mask"], np.zeros((b, extra), bool)], 1),
  )
  base = run(model, batch, queries)
  np.testing.assert_allclose(run(model, padded, queries), base, atol=1e-5, rtol=1e-5)
  unmasked = run(model, dict(padded, input_mask=np.ones_like(padded["input_mask"])), queries)
  assert np.abs(unmasked - base).max() > 1e-3


# ------------------------------------------------------------------------------ evaluation


def test_batched_evaluation_equals_one_mask_at_a_time(model, sessions):
  data = trials_lib.prepare(sessions[:2], "test", trials_lib.TrialConfig())
  graphdef, params = nnx.split(model, nnx.Param)
  predictor = poyo_mtm_eval.make_predictor(graphdef, 0.02)
  factors = [1, 4]
  position = 1
  ks = data.session_trials(position)
  n = len(data.sessions[position].unit_ids)
  one = jax.jit(lambda p, b, u, t, prompt: nnx.merge(graphdef, p)(b, u, t, prompt))
  for task in masking.evaluation_masks(data.regions[position, :n], 100):
    got = poyo_mtm_eval.predict_masks(predictor, params, data, position, task, factors, batch_size=5, max_rows=7)
    assert [g.shape for g in got] == [(len(ks), 100, n), (len(ks), 400, n)]
    prompt = masking.scheme_index(task.prompt)
    units, group = copies.context_units(task)  # intra-region copies attend over their region alone
    regions = data.regions[position, :n]
    if task.name == "intra_region":
      assert sorted(map(tuple, units)) == sorted(tuple(regions == r) for r in np.unique(regions))
      assert all(units[group[m]][np.flatnonzero(task.score_neurons[m])].all() for m in range(len(group)))
    else:
      assert units.shape == (1, n) and units.all()
    for m in range(task.hide_neurons.shape[0]):
      for i, k in enumerate(ks):
        batch = trials_lib.collate(data, [int(k)], data.token_counts()[k])
        hide = np.pad(task.hide_neurons[m], (0, data.n_units - n))
        mask = token_masking.TokenMask(hide[None], task.hide_bins[None], hide[None], task.hide_bins[None])
        batch["input_mask"] = np.asarray(token_masking.keep_tokens(mask, batch, 0.02))
        for f, g in zip(factors, got):
          bins = np.flatnonzero(np.repeat(task.score_bins, f))
          for u in np.flatnonzero(task.score_neurons[m]):
            times = ((bins + 0.5) * 0.02 / f)[None].astype(np.float32)
            units = np.full_like(bins, data.unit_rows[position, u])[None]
            want = np.asarray(one(params, batch, units, times, jnp.array([prompt])))[0]
            np.testing.assert_allclose(g[i, bins, u], want, rtol=1e-5, atol=1e-5, err_msg=f"{task.name} {m} {u}")
      if m >= 2:
        break  # three masks of each task are enough


def test_a_subsample_of_masks_scores_the_same_neurons_the_same(model, sessions):
  """eval.max_masks: the four tasks score one fixed sample of the units, each as the full evaluation does."""
  data = trials_lib.prepare(sessions[:2], "test", trials_lib.TrialConfig())
  graphdef, params = nnx.split(model, nnx.Param)
  predictor = poyo_mtm_eval.make_predictor(graphdef, 0.02)
  kwargs = dict(batch_size=5, max_rows=64)
  full, full_bps = poyo_mtm_eval.evaluate_session(predictor, params, data, 1, (0.02,), **kwargs)
  part, part_bps = poyo_mtm_eval.evaluate_session(predictor, params, data, 1, (0.02,), max_masks=2, **kwargs)
  sample = masking.neuron_sample(len(data.sessions[1].unit_ids), 2)
  for name in ("co_smoothing", "forward_prediction", "inter_region", "intra_region"):
    scored = np.isfinite(part_bps[f"{name}_20ms"])
    np.testing.assert_array_equal(scored, sample, err_msg=name)
    np.testing.assert_allclose(part_bps[f"{name}_20ms"][scored], full_bps[f"{name}_20ms"][scored], rtol=1e-4, atol=1e-5)
    assert part[f"{name}_bps"] == pytest.approx(float(np.mean(full_bps[f"{name}_20ms"][scored])), rel=1e-4)


# ------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, sessions):
  workdir = str(tmp_path_factory.mktemp("poyo_mtm"))
  metrics = trainer.train(registry.get("poyo_mtm"), tiny_config(), workdir, sessions[:2])
  return workdir, metrics


def test_training_runs_and_evaluates_at_three_widths(pretrained, sessions, caplog):
  workdir, metrics = pretrained
  assert np.isfinite(metrics["loss"]) and np.isfinite(metrics["val_loss"])
  trained = registry.load_trained(workdir)
  assert trained.step == STEPS and trained.vocab.session_ids == ("trials_000", "trials_001")
  task = registry.of(trained.config)
  caplog.set_level("INFO")
  results, arrays = task.evaluate(trained, "test", sessions[:2])
  # One line per stage, each with its scores at every width and its time (mtm_jax.progress).
  ends = [m for m in caplog.messages if re.search(r" \((\d+\.\d s|\d+ s|\d+ min \d+ s)\)$", m)]
  stages = ["co_smoothing", "forward_prediction", "inter_region", "intra_region", "decoders' features"]  # no behaviour
  assert [m.split(" (")[0].split(": ", 1)[1].split(":")[0] for m in ends] == stages * 2, ends
  assert [m.split(": ")[0] for m in ends] == ["trials_000"] * 5 + ["trials_001"] * 5, ends
  assert re.fullmatch(r"trials_000: co_smoothing: 20ms -?\d+\.\d{4}, 10ms \S+, 5ms \S+ bps \(.*\)", ends[0]), ends
  for name in ("co_smoothing", "forward_prediction", "inter_region", "intra_region"):
    for suffix in ("", "_10ms", "_5ms"):
      assert np.isfinite(results[f"{name}_bps{suffix}"]), (name, suffix)
  assert set(results["sessions"]) == {"trials_000", "trials_001"}
  assert arrays["trials_001/co_smoothing_5ms"].shape == (12,)
  assert "co_smoothing" in task.report(results) and "5ms" in task.report(results)


def test_resume_gives_the_uninterrupted_parameters(pretrained, sessions, tmp_path):
  run_checks.assert_resumes_exactly("poyo_mtm", tiny_config(), pretrained[0], sessions[:2], STEPS, tmp_path)


def test_unit_identification_changes_only_the_new_rows(pretrained, sessions, tmp_path):
  workdir, _ = pretrained
  task = registry.get("poyo_mtm")
  config = task.finetune_config(tiny_config(), workdir, "unit_id")
  config.train.steps = 3
  trainer.train(task, config, str(tmp_path / "unit_id"), sessions[2:])
  pre, new = registry.load_trained(workdir), registry.load_trained(str(tmp_path / "unit_id"))
  assert new.vocab.session_ids == pre.vocab.session_ids + ("trials_002",)
  old, after = run_checks.flat(pre.params), run_checks.flat(new.params)
  _, _, fresh = task.create(config, new.records, new.mesh)  # the new rows' initial values
  fresh = run_checks.flat(fresh.params)
  tables = {"unit_emb/embedding": pre.vocab.n_unit_rows, "session_emb/embedding": pre.vocab.n_session_rows}
  for k in after:
    if k in tables:
      rows = tables[k]
      np.testing.assert_array_equal(after[k][:rows], old[k], err_msg=k)
      assert after[k].shape[0] == rows + (6 if k.startswith("unit") else 1)
      assert np.all(np.any(after[k][rows:] != fresh[k][rows:], axis=1)), k
    else:
      np.testing.assert_array_equal(after[k], old[k], err_msg=k)


def test_config_checks_name_the_field():
  for field, value, match in [
    ("data.bin_size", 0.03, "config.data.bin_size"),
    ("eval.bin_sizes", (0.02, 0.003), "config.eval.bin_sizes"),
    ("masking.mode", "blocks", "config.masking.mode"),
    ("data.token_buckets", (100,), "config.data.token_buckets"),
    ("model.size", "huge", "config.model.size"),
    ("eval.fine_tasks", ("co_smoothing", "cosmoothing"), "config.eval.fine_tasks"),
  ]:
    c = tiny_config()
    section, name = field.split(".")
    c[section][name] = value
    with pytest.raises(ValueError, match=match):
      poyo_mtm_task.check_config(c)
  with pytest.raises(ValueError, match="trials_000.*lasts 2.000000 s"):
    trials_lib.prepare([trial_session(0)], "train", trials_lib.TrialConfig(context=1.0, bin_size=0.02))


@pytest.fixture(scope="module")
def synthetic_model(pretrained):
  """The pretrained model adapted (2 unit-identification steps) to a synthetic brain event
  session of 12 units and 30 trials: (trained, session)."""
  sizes = synthetic.SessionSizes(min_neurons=12, max_neurons=12, min_trials=30, max_trials=30)
  session = synthetic_events.simulate(3, sizes=sizes)
  workdir, _ = pretrained
  task = registry.get("poyo_mtm")
  config = task.finetune_config(tiny_config(), workdir, "unit_id")
  config.train.steps = 2
  trainer.train(task, config, f"{workdir}_synthetic", [session])
  return registry.load_trained(f"{workdir}_synthetic"), session


def test_evaluation_of_a_synthetic_session_scores_the_oracle_at_every_width(synthetic_model):
  """On the synthetic brain's event session (true rates kept), the oracle is scored at
  20, 10 and 5 ms against the same counts as the model; at 20 ms it is the binned data
  set's oracle (the rates and counts of synthetic_events.binned_split)."""
  trained, session = synthetic_model
  task = registry.get("poyo_mtm")
  results, _ = task.evaluate(trained, "test", [session], decode=False)
  binned = synthetic_events.binned_split(session, "test")
  regions, _ = trials_lib.region_ids(session.unit_regions)
  for t in masking.evaluation_masks(regions, 100):
    want = np.nanmean(activity.score_masks(binned["rates"].astype(np.float64), binned["spikes"], t))
    np.testing.assert_allclose(results[f"oracle_{t.name}_bps"], want, rtol=1e-6)
    for suffix in ("_10ms", "_5ms"):
      assert np.isfinite(results[f"oracle_{t.name}_bps{suffix}"]) and np.isfinite(results[f"{t.name}_bps{suffix}"])
  assert results["oracle_co_smoothing_bps_5ms"] > 0
  assert set(results["skipped"]) == {"choice_accuracy", "whisker_motion_energy_r2", "wheel_speed_r2"}
  config = ml_collections.ConfigDict(trained.config.to_dict())
  config.eval.fine_tasks = ("co_smoothing",)  # the other tasks at 20 ms only
  fewer, _ = task.evaluate(dataclasses.replace(trained, config=config), "test", [session], decode=False)
  assert {k for k in fewer if k.endswith("ms")} == {
    f"{p}co_smoothing_bps_{w}" for p in ("", "oracle_") for w in ("5ms", "10ms")
  }
  for k, v in fewer.items():
    if isinstance(v, float):
      np.testing.assert_allclose(v, results[k], rtol=1e-6, err_msg=k)


def test_behaviour_decoders_read_the_unmasked_log_rates(synthetic_model, monkeypatch):
  """NDT1's decoders on the model's 20 ms log-rates of every unit on the unmasked trials
  (the neuron prompt), with the binned data set's choice and traces as targets."""
  trained, session = synthetic_model
  data = trials_lib.prepare([session], "train", trials_lib.TrialConfig(), vocab=trained.vocab)
  intervals = data.trials[:, 1:]
  targets = poyo_mtm_eval.trial_behaviour(session, "train", intervals, 100)
  binned = synthetic_events.binned_split(session, "train")
  for key in ("choice", "wheel_speed", "whisker_motion_energy"):
    np.testing.assert_allclose(targets[key], binned[key], rtol=1e-6, err_msg=key)
  seen = {}
  real = poyo_mtm_eval.decoding.decode_split
  monkeypatch.setattr(
    poyo_mtm_eval.decoding, "decode_split", lambda f, b, **kw: seen.update(features=f, behaviour=b) or real(f, b, **kw)
  )
  predictor = poyo_mtm_eval.make_predictor(trained.graphdef, 0.02)
  decoded = poyo_mtm_eval.decode_session(
    predictor, trained.params, data, 0, prompt="neuron", folds=3, seed=0, batch_size=8, max_rows=64
  )
  assert seen["features"].shape == (len(intervals), 100, 12)
  model = nnx.merge(trained.graphdef, trained.params)
  k = 3
  batch = {key: jnp.asarray(v) for key, v in trials_lib.collate(data, [k], int(data.token_counts()[k])).items()}
  units = np.repeat(data.unit_rows[0, :12][None], 100, axis=0)  # [T, N]
  times = np.broadcast_to(((np.arange(100) + 0.5) * 0.02)[:, None], (100, 12)).astype(np.float32)
  prompt = jnp.array([masking.scheme_index("neuron")])
  want = model(batch, jnp.asarray(units.reshape(1, -1)), jnp.asarray(times.reshape(1, -1)), prompt)
  np.testing.assert_allclose(seen["features"][k], np.asarray(want).reshape(100, 12), rtol=1e-5, atol=1e-5)
  assert np.isfinite(decoded.scores["wheel_speed_r2"]) and decoded.folds["wheel_speed_r2"] == 3
  assert set(decoded.scores) | set(decoded.skipped) == {"choice_accuracy", "whisker_motion_energy_r2", "wheel_speed_r2"}


def test_poyo_readout_fine_tunes_on_top_and_leaves_the_model_unchanged(synthetic_model):
  """POYO's readout fine-tuned with the model (tasks.poyo_mtm.heads): one score per
  behaviour of the synthetic session, in range; the trained parameters are not changed."""
  trained, session = synthetic_model
  before = jax.tree.map(np.array, jax.device_get(trained.params))
  data = trials_lib.prepare([session], "test", trials_lib.TrialConfig(), vocab=trained.vocab)
  decoded = poyo_mtm_task.heads(trained, [session], data, 2)(0)
  assert set(decoded.scores) == {"head_choice_accuracy", "head_whisker_motion_energy_r2", "head_wheel_speed_r2"}
  assert 0.0 <= decoded.scores["head_choice_accuracy"] <= 1.0
  assert all(np.isfinite(v) and v <= 1.0 for v in decoded.scores.values())
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, jax.device_get(trained.params)))
  no_train = dataclasses.replace(session, splits={"test": session.splits["test"]})
  assert set(poyo_mtm_task.heads(trained, [no_train], data, 2)(0).skipped) == {
    "head_choice_accuracy",
    "head_whisker_motion_energy_r2",
    "head_wheel_speed_r2",
  }


def test_query_times_are_bin_centres_or_jittered_within_their_bins():
  bins = jnp.array([[0, 3, 99], [7, 7, 7]])
  centres = poyo_mtm_task.query_times(jax.random.key(0), bins, 0.02, jitter=False)
  np.testing.assert_allclose(centres, (np.asarray(bins) + 0.5) * 0.02, rtol=1e-6)
  jittered = np.asarray(poyo_mtm_task.query_times(jax.random.key(0), bins, 0.02, jitter=True))
  assert np.all(jittered >= np.asarray(bins) * 0.02) and np.all(jittered < (np.asarray(bins) + 1) * 0.02)
  assert len(np.unique(jittered[1])) == 3  # the same bin queried at different times
