"""POYO training, evaluation and new-session adaptation: loss and LAMB against their
definitions, a short run (loss goes down, exact resume), unit identification (only the
new rows change), window averaging, the ridge baseline and metrics.json."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.experimental.compilation_cache import compilation_cache

from tests import run_checks
from mtm_jax.tasks import registry, poyo as poyo_task, spike_tokens
from mtm_jax.configs import poyo as poyo_config
from mtm_jax.datasets import reaching
from mtm_jax.datasets.events import batches as batches_lib
from mtm_jax.datasets.events import session as session_lib
from mtm_jax.datasets.events import stitching
from mtm_jax.datasets.events import windows as windows_lib
from mtm_jax.evaluation import poyo as poyo_eval
from mtm_jax.models import poyo
from mtm_jax.training import optimizer, trainer

SMALL = dict(min_units=20, max_units=30, min_trials=10, max_trials=12)
STEPS = 6


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
  """Runs that compile the same step (the resumed run) reuse the executable."""
  names = (
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
  )
  old = {n: getattr(jax.config, n) for n in names}
  jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  compilation_cache.reset_cache()
  yield
  for n, v in old.items():
    jax.config.update(n, v)
  compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def sessions():
  """Three tiny reaching sessions: 0 and 1 to pretrain on, 2 held out."""
  return [reaching.simulate_reaching_session(i, **SMALL) for i in (0, 1, 2)]


def tiny_config():
  c = poyo_config.get_config("tiny")
  c.data.token_buckets = (512,)  # one compiled shape
  c.mesh.data = 2  # batches split over two devices
  c.optimizer.base_learning_rate = 5e-4  # 2e-3 overshot in 6 steps with some dropout draws
  c.optimizer.constant_fraction = 1.0
  c.train.steps = STEPS
  c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 3, STEPS, 3
  return c


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, sessions):
  workdir = str(tmp_path_factory.mktemp("pretrain"))
  metrics = trainer.train(registry.get("poyo"), tiny_config(), workdir, sessions[:2])
  return workdir, metrics


# ------------------------------------------------------------------------------ definitions


def test_weighted_mse_by_hand():
  tasks = {"b": 2, "a": 1}  # ids: a = 0, b = 1
  outputs = {
    "a": jnp.array([[[1.0], [7.0], [7.0], [7.0]]]),  # only query 0 is task a's (query 3 is padding)
    "b": jnp.array([[[7.0, 7.0], [1.0, 3.0], [2.0, 2.0], [7.0, 7.0]]]),
  }
  batch = dict(
    output_values=jnp.array([[[0.0, 5.0], [0.0, 0.0], [1.0, 1.0], [9.0, 9.0]]]),
    output_weights=jnp.array([[1.0, 2.0, 0.5, 3.0]]),
    output_task=jnp.array([[0, 1, 1, 0]]),
    output_mask=jnp.array([[True, True, True, False]]),
  )
  loss, aux = poyo_task.weighted_mse(outputs, batch, tasks)
  # a: (1 - 0)^2 with weight 1 -> 1.  b: (2 * mean(1, 9) + 0.5 * mean(1, 1)) / 2.5 = 4.2.
  np.testing.assert_allclose(aux["loss/a"], 1.0, rtol=1e-6)
  np.testing.assert_allclose(aux["loss/b"], 4.2, rtol=1e-6)
  np.testing.assert_allclose(aux["weight/b"], 2.5, rtol=1e-6)
  np.testing.assert_allclose(loss, 5.2, rtol=1e-6)
  # A task without weight contributes 0, not NaN.
  loss, _ = poyo_task.weighted_mse(outputs, dict(batch, output_weights=jnp.zeros((1, 4))), tasks)
  assert float(loss) == 0.0


def test_sparse_lamb_matches_the_reference_update():
  lr, b1, b2, eps, wd, clip = 0.1, 0.9, 0.99, 1e-6, 0.01, 10.0
  rng = np.random.default_rng(0)
  params = {
    "unit_emb": {"embedding": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)},
    "w": jnp.asarray(rng.normal(size=(3,)) * 20, jnp.float32),
  }  # |w| > clip
  sparse = {"unit_emb": {"embedding": True}, "w": False}
  tx = optimizer.sparse_lamb(lr, b1, b2, eps, wd, clip, sparse)
  state = tx.init(params)
  p = {k: np.asarray(v, np.float64) for k, v in (("t", params["unit_emb"]["embedding"]), ("w", params["w"]))}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  for step in range(3):
    g = {"t": rng.normal(size=(4, 3)), "w": rng.normal(size=(3,))}
    g["t"][step % 4] = 0.0  # one table row absent from the batch
    grads = {"unit_emb": {"embedding": jnp.asarray(g["t"], jnp.float32)}, "w": jnp.asarray(g["w"], jnp.float32)}
    updates, state = tx.update(grads, state, params)
    params = jax.tree.map(lambda a, u: a + u, params, updates)
    for k in p:  # the reference: no bias correction, clamped weight norm, zero-gradient rows untouched
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
      used = np.abs(g[k]).sum(-1, keepdims=True) > 0 if k == "t" else np.ones_like(g[k], bool)
      m[k], v[k] = np.where(used, m[k], 0.0), np.where(used, v[k], 0.0)
      adam = m[k] / (np.sqrt(v[k]) + eps) + wd * p[k]
      trust = min(np.linalg.norm(p[k]), clip) / np.linalg.norm(adam)
      p[k] = p[k] + np.where(used, -lr * trust * adam, 0.0)
    np.testing.assert_allclose(params["unit_emb"]["embedding"], p["t"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(params["w"], p["w"], rtol=1e-5, atol=1e-6)


def test_learning_rate_schedule():
  c = poyo_config.get_config("small")
  c.train.steps = 1000
  lr = optimizer.poyo_learning_rate_schedule(c)
  peak = 3.125e-5 * 128
  np.testing.assert_allclose([lr(0), lr(499), lr(500)], [peak] * 3, rtol=1e-6)
  np.testing.assert_allclose(lr(750), peak * (0.5 + 0.5 / 1e4), rtol=1e-4)  # half-way down the cosine
  np.testing.assert_allclose(lr(1000), peak / 1e4, rtol=1e-4)


# ------------------------------------------------------------------------------ training


def test_training_reduces_the_loss(pretrained, sessions):
  workdir, metrics = pretrained
  assert np.isfinite(metrics["loss"]) and np.isfinite(metrics["val_r2"])
  trained = registry.load_trained(workdir)
  assert trained.step == STEPS and trained.vocab.session_ids == ("reaching_000", "reaching_001")
  config = trained.config
  data = windows_lib.prepare(
    sessions[:2], "train", poyo_task.window_config(config, train=False), vocab=trained.vocab, scale=trained.scale
  )
  _, _, fresh = registry.get("poyo").create(config, trained.records, trained.mesh)  # the run's initial parameters
  loss = jax.jit(
    lambda params, batch: poyo_task.loss_fn(trained.graphdef, params, batch, None, tasks=dict(config.model.tasks))[0]
  )
  batches = [batches_lib.training_batches(data, 16, seed=1)[i] for i in range(2)]
  before = np.mean([loss(fresh.params, b) for b in batches])
  after = np.mean([loss(trained.params, b) for b in batches])
  assert after < 0.95 * before, (before, after)


def test_resume_gives_the_uninterrupted_parameters(pretrained, sessions, tmp_path):
  run_checks.assert_resumes_exactly("poyo", tiny_config(), pretrained[0], sessions[:2], STEPS, tmp_path)


def test_unit_identification_changes_only_the_new_rows(pretrained, sessions, tmp_path):
  workdir, _ = pretrained
  config = registry.get("poyo").finetune_config(tiny_config(), workdir, "unit_id")
  config.train.steps = 3
  trainer.train(registry.get("poyo"), config, str(tmp_path / "unit_id"), sessions[2:])
  pre, new = registry.load_trained(workdir), registry.load_trained(str(tmp_path / "unit_id"))
  assert new.vocab.session_ids == pre.vocab.session_ids + ("reaching_002",)
  np.testing.assert_array_equal(new.scale, pre.scale)
  n_new = len(sessions[2].unit_ids)
  grown = run_checks.flat(
    poyo.grow_vocab(
      nnx.to_pure_dict(jax.device_get(pre.params)),
      n_new,
      1,
      jax.random.key(config.seed + 7),
      init_scale=config.model.emb_init_scale,
    )
  )
  old, after = run_checks.flat(pre.params), run_checks.flat(new.params)
  tables = {"unit_emb/embedding": pre.vocab.n_unit_rows, "session_emb/embedding": pre.vocab.n_session_rows}
  assert set(tables) < set(after)
  for k in after:
    if k in tables:
      rows = tables[k]
      np.testing.assert_array_equal(after[k][:rows], old[k], err_msg=k)  # old rows: bit for bit
      assert after[k].shape[0] == rows + (n_new if k.startswith("unit") else 1)
      changed = np.any(after[k][rows:] != grown[k][rows:], axis=1)  # units absent from every batch stay put
      assert changed.mean() > 0.5, f"{k}: new rows that did not train: {np.flatnonzero(~changed)}"
    else:
      np.testing.assert_array_equal(after[k], old[k], err_msg=k)


def test_new_rows_mask():
  params = {
    "unit_emb": {"embedding": jnp.ones((5, 2))},
    "session_emb": {"embedding": jnp.ones((3, 2))},
    "readout": {"kernel": jnp.ones((2, 2))},
  }
  mask = spike_tokens.new_rows_mask(3, 2)(params, None)
  np.testing.assert_array_equal(mask["unit_emb"]["embedding"][:, 0], [False, False, False, True, True])
  np.testing.assert_array_equal(mask["session_emb"]["embedding"][:, 0], [False, False, True])
  assert not bool(mask["readout"]["kernel"])


# ------------------------------------------------------------------------------ evaluation


def test_overlapping_windows_are_averaged(sessions):
  config = tiny_config()
  data = windows_lib.prepare(sessions[:1], "test", poyo_task.window_config(config, train=False))
  mesh = jax.make_mesh(
    (2, 1), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2, devices=jax.devices()[:2]
  )
  # Each window predicts, at every query, its time from the window start.
  relative_time = lambda params, batch: jnp.broadcast_to(
    batch["output_timestamps"][..., None], batch["output_timestamps"].shape + (data.n_dims,)
  )
  metas, predictions = poyo_eval.predict_windows(relative_time, None, data, 16, mesh)
  (stitched,) = stitching.stitch_predictions(data, metas, predictions)
  windows = windows_lib.evaluation_windows(data)
  assert len(windows) > len(data.intervals)  # some intervals hold several overlapping windows
  s = sessions[0]
  for t, pred in zip(stitched["timestamps"][::7], stitched["prediction"][::7]):
    covering = [a for _, a, end in windows if a <= t < min(a + 1.0, end)]
    expected = np.mean([t - a for a in covering]) * data.scale
    np.testing.assert_allclose(pred, expected, rtol=1e-4, atol=1e-4)
  assert len(stitched["timestamps"]) == sum(
    np.sum((s.behaviour_timestamps >= a) & (s.behaviour_timestamps < b)) for a, b in s.splits["test"]
  )
  # A perfect predictor scores R^2 = 1 in every dimension.
  perfect = lambda params, batch: batch["output_values"]
  per_session, _ = poyo_eval.stitched_r2(data, *poyo_eval.predict_windows(perfect, None, data, 16, mesh))
  np.testing.assert_allclose(per_session["reaching_000"], 1.0, atol=1e-5)


def test_r2_and_summary_by_hand():
  target = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 4.0]])
  prediction = np.array([[1.0, 1.0], [2.0, 1.0], [3.0, 4.0]])
  # dim 0: SS_res 2, SS_tot 8 -> 0.75; dim 1: SS_res 0 -> 1.
  np.testing.assert_allclose(poyo_eval.r2_per_dim(prediction, target), [0.75, 1.0])
  out = poyo_eval.summarise({"a": np.array([0.75, 1.0]), "b": np.array([0.25, 0.0])})
  np.testing.assert_allclose([out["behaviour_r2"], out["behaviour_r2_dim0"], out["behaviour_r2_dim1"]], [0.5, 0.5, 0.5])
  assert out["sessions"]["a"]["behaviour_r2"] == 0.875


def test_evaluate_workdir_writes_metrics_with_the_baseline(pretrained, sessions):
  workdir, _ = pretrained
  results = registry.evaluate_workdir(workdir, "test", sessions=sessions[:2])
  with open(os.path.join(workdir, "metrics.json"), encoding="utf-8") as f:
    import json  # pylint: disable=g-import-not-at-top

    saved = json.load(f)
  assert saved == results
  for key in (
    "behaviour_r2",
    "behaviour_r2_dim0",
    "behaviour_r2_dim1",
    "baseline_r2",
    "baseline_r2_dim0",
    "baseline_r2_dim1",
  ):
    assert np.isfinite(saved[key]), key
  assert saved["step"] == STEPS and saved["split"] == "test"
  assert set(saved["sessions"]) == {"reaching_000", "reaching_001"}
  assert {"behaviour_r2", "baseline_r2", "baseline_r2_dim1"} <= set(saved["sessions"]["reaching_000"])
  with pytest.raises(ValueError, match="vocabulary"):
    registry.evaluate_workdir(workdir, "test", sessions=sessions[2:], decode=False)


def _thinned(session: session_lib.EventSession, split: str, keep: int) -> session_lib.EventSession:
  """`session` keeping only the first `keep` behaviour samples inside its `split` intervals."""
  stamps = session.behaviour_timestamps
  inside = np.any([(stamps >= a) & (stamps < b) for a, b in session.splits[split]], axis=0)
  drop = np.flatnonzero(inside)[keep:]
  return dataclasses.replace(
    session,
    **{
      k: np.delete(getattr(session, k), drop, axis=0)
      for k in ("behaviour_timestamps", "behaviour_values", "behaviour_weights")
    },
  )


def test_evaluate_workdir_skips_sessions_too_small_to_score(pretrained, sessions):
  """One test sample (no R^2) in one session, one training sample (no ridge fit) in the
  other: what can be scored is written, the rest is skipped with its reason."""
  import json  # pylint: disable=g-import-not-at-top

  workdir, _ = pretrained
  one_test, one_train = _thinned(sessions[0], "test", 1), _thinned(sessions[1], "train", 1)
  results = registry.evaluate_workdir(workdir, "test", sessions=[one_test, one_train])
  with open(os.path.join(workdir, "metrics.json"), encoding="utf-8") as f:
    saved = json.load(f)
  assert saved == results
  first, second = saved["sessions"]["reaching_000"], saved["sessions"]["reaching_001"]
  assert set(first) == {"skipped"} and set(first["skipped"]) == {"behaviour_r2", "baseline_r2"}
  assert "needs at least 2 behaviour samples, got 1" in first["skipped"]["behaviour_r2"]
  assert "needs at least 2 behaviour samples, got 1" in first["skipped"]["baseline_r2"]
  assert np.isfinite(second["behaviour_r2"]) and saved["behaviour_r2"] == second["behaviour_r2"]
  assert "baseline_r2" not in second and "fitting needs 2" in second["skipped"]["baseline_r2"]
  assert "baseline_r2" not in saved and list(saved["skipped"]) == ["baseline_r2"]
  assert saved["skipped"]["baseline_r2"].startswith("reaching_000: r2: needs at least 2")
  assert "reaching_001: ridge baseline: the train split" in saved["skipped"]["baseline_r2"]


def test_ridge_baseline_decodes_a_larger_session():
  session = reaching.simulate_reaching_session(5, min_units=50, max_units=50, min_trials=30, max_trials=30)
  test = session_lib.restrict_to_splits(session, ["test"])
  prediction, target = poyo_eval.ridge_baseline(session, test.behaviour_timestamps, bin_size=0.02, lags=10)
  assert prediction.shape == target.shape == test.behaviour_values.shape
  assert poyo_eval.r2_per_dim(prediction, target).mean() > 0.3


def test_plots_draw_predicted_and_true_behaviour(pretrained, sessions, tmp_path, caplog):
  """--plots on a POYO model: behaviour.png, one row per output dimension (2 here), written whole."""
  workdir, _ = pretrained
  trained = registry.load_trained(workdir)
  task = registry.of(trained.config)
  assert task.plot_file() == "behaviour.png"
  path = tmp_path / "figures" / "behaviour.png"
  assert (
    task.plot({"pretrained": trained}, str(path), split="test", sessions=sessions[:1]) == "behaviour of reaching_000"
  )
  png = path.read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n"
  width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
  assert height == round((2.0 * 2 + 0.8) * 120), (width, height)  # two rows of panels at 120 dpi
  assert width in (round((3.2 * k + 0.8) * 120) for k in (1, 2, 3)), width
  assert os.listdir(path.parent) == ["behaviour.png"]  # no temporary file left


def test_behaviour_figure_has_a_panel_per_dimension_and_window(tmp_path):
  from mtm_jax.evaluation import behaviour_plots  # pylint: disable=g-import-not-at-top

  t = np.arange(0, 20, 0.01)
  target = np.stack([np.sin(t), np.cos(t)], 1).astype(np.float32)
  stitched = {
    "a": dict(timestamps=t, prediction=target * 0.5, target=target),
    "b": dict(timestamps=t, prediction=target, target=target),
  }
  fig = behaviour_plots.behaviour_figure(tmp_path / "b.png", stitched, ["x", "y"], length=2.0, count=3)
  assert len(fig.axes) == 2 * 3
  assert [line.get_label() for line in fig.axes[0].lines] == ["true", "a", "b"]
  assert fig.axes[0].get_title() == "0.0-2.0 s" and fig.axes[2].get_title() == "18.0-20.0 s"
  with pytest.raises(ValueError, match=r"behaviour figure: a: expected \[T, 3\] predictions"):
    behaviour_plots.behaviour_figure(tmp_path / "c.png", stitched, ["x", "y", "z"])
