"""Multi-session NDT1 (stitching): padded session tables, lazy per-session updates,
partial restore of shared weights, interleaved batches and fine-tuning (the scaling study:
tests/test_family_study.py)."""

import os

import jax
import ml_collections
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mtm_jax.tasks import registry, ndt1 as ndt1_task
from mtm_jax import masking
from mtm_jax.configs import ndt1 as ndt1_config
from mtm_jax.datasets import pipeline
from mtm_jax.models import ndt1
from mtm_jax.training import config_checks, step as step_lib, trainer


def _stitched(sessions, seed=0, **kw):
  args = dict(
    width=16,
    n_layers=1,
    n_heads=2,
    mlp_width=32,
    stitch_dim=8,
    dropout=0.0,
    attention_dropout=0.0,
    embed_dropout=0.0,
    rngs=nnx.Rngs(seed),
  )
  args.update(kw)
  return ndt1.NDT1(sessions, **args)


def test_session_tables_are_zero_outside_each_session():
  model = _stitched((5, 9))
  k_in = np.asarray(model.stitch_in.kernel[...])  # [S, N_max, C]
  k_out = np.asarray(model.stitch_out.kernel[...])  # [S, D, N_max]
  assert k_in.shape == (2, 9, 8) and k_out.shape == (2, 16, 9)
  assert np.all(k_in[0, 5:] == 0) and np.all(k_out[0, :, 5:] == 0)
  assert np.all(k_in[0, :5] != 0) and np.all(k_in[1] != 0)
  # A 5-neuron session, zero-padded to 9: padded outputs are exactly 0 log-rate.
  x = jnp.asarray(np.random.default_rng(0).poisson(1.0, (2, 100, 9)) * (np.arange(9) < 5), jnp.float32)
  out = model(x, session=0)
  assert out.shape == (2, 100, 9) and np.all(np.asarray(out[..., 5:]) == 0)
  assert not np.allclose(out[..., :5], model(x, session=1)[..., :5])


def test_many_sessions_need_stitching():
  with pytest.raises(ValueError, match="set stitch_dim > 0"):
    _stitched((5, 9), stitch_dim=0)
  config = ndt1_config.get_config("tiny")
  config.data.datasets = "a/x,a/y"
  with pytest.raises(ValueError, match="config.model.stitch_dim"):
    ndt1_task.check_config(config)
  config.data.n_sessions = 3
  with pytest.raises(ValueError, match="config.data.n_sessions"):
    config_checks.dataset_names(config)
  config.data.n_sessions = 1
  assert config_checks.dataset_names(config) == ["a/x"]


def test_a_step_changes_only_the_batch_sessions_rows():
  model = _stitched((6, 9))
  graphdef, params = nnx.split(model, nnx.Param)
  config = ndt1_config.get_config("tiny")
  tx = ndt1_task.make_optimizer(config)
  state = step_lib.init_state(params, tx)
  step = jax.jit(ndt1_task.make_train_step(graphdef, tx, masking.MTM, masking.MaskConfig()))
  regions = jnp.asarray([[0, 0, 1, 1, 2, 2, -1, -1, -1], [0, 1, 2, 0, 1, 2, 0, 1, 2]], jnp.int32)
  rng = np.random.default_rng(0)
  before = jax.device_get(state)
  for session, n in ((1, 9), (1, 9), (0, 6)):
    spikes = pipeline.pad_neurons(rng.poisson(1.0, (4, 100, n)).astype(np.int32), 9)
    state, _ = step(
      state, {"spikes": jnp.asarray(spikes), "session": jnp.full((4,), session, jnp.int32)}, regions, jax.random.key(0)
    )
    if session == 1:  # row 0 of every session table untouched, in params and Adam moments
      after = jax.device_get(state)
      for tree_before, tree_after in ((before.params, after.params), (before.opt_state, after.opt_state)):
        for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(tree_before)[0], jax.tree.leaves(tree_after)):
          name = str(path[0])
          if any(p in name for p in ndt1.SESSION_PARAMS) and a.ndim >= 2:
            np.testing.assert_array_equal(a[0], b[0], err_msg=name)
  after = jax.device_get(state.params)
  assert not np.allclose(before.params["stitch_in"]["kernel"][...][0], after["stitch_in"]["kernel"][...][0])
  assert not np.allclose(before.params["embed_project"]["kernel"][...], after["embed_project"]["kernel"][...])


def test_graft_takes_shared_weights_and_keeps_fresh_session_layers():
  pre = nnx.state(_stitched((6, 9), seed=1), nnx.Param)
  fresh = nnx.state(_stitched((7,), seed=2), nnx.Param)
  out = ndt1_task.graft_shared(fresh, pre)
  np.testing.assert_array_equal(out["embed_spikes"]["kernel"][...], pre["embed_spikes"]["kernel"][...])
  np.testing.assert_array_equal(
    out["layers"][0]["attn"]["query"]["kernel"][...], pre["layers"][0]["attn"]["query"]["kernel"][...]
  )
  for name in ndt1.SESSION_PARAMS:
    for a, b in zip(jax.tree.leaves(out[name]), jax.tree.leaves(fresh[name])):
      np.testing.assert_array_equal(a, b)
  wider = nnx.state(_stitched((7,), width=32), nnx.Param)
  with pytest.raises(ValueError, match="parameter 'embed_project/(kernel|bias)' has shape"):
    ndt1_task.graft_shared(wider, pre)


def test_interleaved_batches_hold_one_padded_session_each():
  a = {"spikes": np.ones((20, 100, 3), np.uint8), "trial_index": np.arange(20)}
  b = {"spikes": 2 * np.ones((40, 100, 5), np.uint8), "trial_index": np.arange(40)}
  ds = pipeline.multi_session_batches([a, b], 4, seed=0, n_neurons=5)
  batches = [ds[i] for i in range(60)]
  counts = np.bincount([int(x["session"][0]) for x in batches], minlength=2)
  assert counts[1] == 2 * counts[0]  # in proportion to the trial counts
  for x in batches:
    s = int(x["session"][0])
    assert x["spikes"].shape == (4, 100, 5) and np.all(x["session"] == s)
    assert np.all(x["spikes"][..., : 3 if s == 0 else 5] == s + 1) and np.all(
      x["spikes"][..., 3 if s == 0 else 5 :] == 0
    )
  again = pipeline.multi_session_batches([a, b], 4, seed=0, n_neurons=5)
  for i in (0, 7, 59):
    np.testing.assert_array_equal(again[i]["trial_index"], batches[i]["trial_index"])


def test_pretrain_two_sessions_then_finetune_on_a_third(study_data_dir, tmp_path):
  config = ndt1_config.get_config("tiny,stitch")
  config.data.datasets = "ibl_binned/synthetic_000,ibl_binned/synthetic_007"
  config.data.data_dir = study_data_dir
  config.train.steps = config.train.checkpoint_every = config.train.eval_every = 4
  pre_dir = str(tmp_path / "pre")
  trainer.train(registry.get("ndt1"), config, pre_dir)
  pre = registry.load_trained(pre_dir)
  assert pre.names == ["ibl_binned/synthetic_000", "ibl_binned/synthetic_007"]
  assert [i.n_neurons for i in pre.sessions] == [114, 134] and pre.n_neurons == 134

  ft_config = ndt1_config.get_config("tiny,stitch")
  ft_config.data.datasets = "ibl_binned/synthetic_027"
  ft_config.data.data_dir = study_data_dir
  ft_config.model.size = "mini"  # replaced by the pretrained architecture
  ft_config.train.steps = ft_config.train.checkpoint_every = ft_config.train.eval_every = 2
  ft_config = registry.get("ndt1").finetune_config(ft_config, pre_dir)
  assert ft_config.model.size == "tiny" and ft_config.init.pretrained == os.path.abspath(pre_dir)
  ft_dir = str(tmp_path / "ft")
  trainer.train(registry.get("ndt1"), ft_config, ft_dir)
  ft = registry.load_trained(ft_dir)
  assert ft.names == ["ibl_binned/synthetic_027"] and ft.n_neurons == 138
  assert ft.params["stitch_in"]["kernel"][...].shape == (1, 138, 16)
  # A workdir holding another run's sessions is refused before any work.
  other = ndt1_config.get_config("tiny,stitch")
  other.data.datasets, other.data.data_dir = "ibl_binned/synthetic_000", study_data_dir
  with pytest.raises(ValueError, match="holds a run on sessions"):
    trainer.train(registry.get("ndt1"), other, ft_dir)
  # unit_id: the new stitchers and session row train, the shared weights stay pretrained;
  # full with a warm-up: the same for the warm-up steps, then everything.
  shared = lambda p: p["embed_project"]["kernel"][...]
  for mode, warmup, changed in (("unit_id", 0, False), ("full", 2, False), ("full", 1, True)):
    c = ml_collections.ConfigDict(ft_config.to_dict())
    c.finetune.warmup_steps = warmup
    c = registry.get("ndt1").finetune_config(c, pre_dir, mode)
    assert c.finetune.mode == mode
    run_dir = str(tmp_path / f"ft_{mode}_{warmup}")
    trainer.train(registry.get("ndt1"), c, run_dir)
    out = registry.load_trained(run_dir).params
    assert np.array_equal(shared(out), shared(pre.params)) != changed, (mode, warmup)
  with pytest.raises(ValueError, match="--mode: expected one of"):
    registry.get("ndt1").finetune_config(ft_config, pre_dir, "frozen")
