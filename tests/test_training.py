"""Sharded training step, checkpoint resume, and the experiment programs end to end."""

import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mtm_jax.tasks import registry, ndt1 as ndt1_task
from mtm_jax import masking
from mtm_jax.configs import ndt1 as ndt1_config
from mtm_jax.datasets import pipeline
from mtm_jax.evaluation import decoding, report
from mtm_jax.models import ndt1
from mtm_jax.parallel import mesh as mesh_lib
from mtm_jax.training import checkpoint, step as step_lib, trainer
from tests.conftest import DATASET


def _config(data_dir, **train):
  c = ndt1_config.get_config("tiny")
  c.data.datasets, c.data.data_dir = DATASET, data_dir
  c.train.update(train)
  return c


def _losses_on(devices: int, n_steps: int = 4) -> np.ndarray:
  config = ndt1_config.get_config("tiny")
  mesh = mesh_lib.make_mesh(devices)
  model = ndt1.from_config(config, 12, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  tx = ndt1_task.make_optimizer(config)
  state = jax.device_put(step_lib.init_state(params, tx), mesh_lib.replicated(mesh))
  train_step = jax.jit(ndt1_task.make_train_step(graphdef, tx, masking.MTM, masking.MaskConfig()), donate_argnums=0)
  regions = jax.device_put(jnp.asarray((np.arange(12) % 3)[None], jnp.int32), mesh_lib.replicated(mesh))  # [S=1, N]
  rng = np.random.default_rng(0)
  losses = []
  with jax.set_mesh(mesh):
    for _ in range(n_steps):
      batch = mesh_lib.shard_batch({"spikes": rng.poisson(0.5, (8, 100, 12)).astype(np.int32)}, mesh)
      assert len(batch["spikes"].sharding.device_set) == devices
      state, metrics = train_step(state, batch, regions, jax.random.key(0))
      losses.append(float(metrics["loss"]))
  return np.array(losses)


def test_same_loss_on_one_and_eight_devices():
  assert len(jax.devices()) == 8
  one, eight = _losses_on(1), _losses_on(8)
  np.testing.assert_allclose(one, eight, rtol=2e-5)
  assert one[-1] < one[0] * 1.5  # it is training, not diverging


def test_mesh_and_batch_errors():
  with pytest.raises(ValueError, match="not divisible by the 8 devices"):
    mesh_lib.check_batch_size(12, mesh_lib.make_mesh())
  with pytest.raises(ValueError, match="needs more than the 8 devices"):
    mesh_lib.make_mesh(16)


def test_config_validation():
  c = ndt1_config.get_config("tiny")
  c.masking.mode = "space"
  with pytest.raises(ValueError, match="config.masking.mode"):
    ndt1_task.check_config(c)
  c = ndt1_config.get_config("tiny")
  c.masking.mode = "temporal"
  with pytest.raises(ValueError, match="config.model.use_prompt"):
    ndt1_task.check_config(c)
  with pytest.raises(ValueError, match="unknown preset"):
    ndt1_config.get_config("huge")


def _tagged(x):
  """A to_dict() value in the JSON form of tests/config_snapshot.json: tuples tagged."""
  if isinstance(x, dict):
    return {k: _tagged(v) for k, v in x.items()}
  if isinstance(x, (tuple, list)):
    items = [_tagged(v) for v in x]
    return {"tuple": items} if isinstance(x, tuple) else items
  return x


def test_config_presets_are_the_snapshot():
  """Every preset and option of the NDT1 and POYO configs, field for field, as before the
  configs became data (tests/config_snapshot.json)."""
  from mtm_jax.configs import poyo as poyo_config  # pylint: disable=g-import-not-at-top

  with open(os.path.join(os.path.dirname(__file__), "config_snapshot.json"), encoding="utf-8") as f:
    snapshot = json.load(f)
  assert len(snapshot["ndt1"]) == 12 and len(snapshot["poyo"]) == 3
  for family, module in (("ndt1", ndt1_config), ("poyo", poyo_config)):
    for arg, expected in snapshot[family].items():
      got = json.loads(json.dumps(_tagged(module.get_config(arg).to_dict())))
      assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True), (family, arg)


def _params(workdir, step=None):
  return jax.device_get(registry.load_trained(workdir, step).params)


def test_resume_continues_exactly(data_dir, tmp_path, caplog):
  full, resumed = str(tmp_path / "full"), str(tmp_path / "resumed")
  trainer.train(registry.get("ndt1"), _config(data_dir, steps=12, checkpoint_every=6, eval_every=6), full)
  # A run "interrupted" after step 6: only that checkpoint exists, then it is re-run.
  os.makedirs(os.path.join(resumed, "checkpoints"))
  shutil.copytree(os.path.join(full, "checkpoints", "6"), os.path.join(resumed, "checkpoints", "6"))
  trainer.train(registry.get("ndt1"), _config(data_dir, steps=12, checkpoint_every=6, eval_every=6), resumed)
  a, b = _params(full), _params(resumed)
  assert registry.load_trained(resumed).step == 12
  jax.tree.map(np.testing.assert_array_equal, a, b)
  # And it did train: step-12 parameters differ from step 6.
  assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, _params(full, 6), a)))
  # Logs: JSONL and TensorBoard event files.
  lines = [json.loads(l) for l in open(os.path.join(full, "metrics.jsonl"))]
  assert {"loss", "steps_per_second", "val_loss"} <= set().union(*lines)
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(full, "tensorboard")))
  # Re-run as it was: it says so, and changes nothing.
  trainer.train(registry.get("ndt1"), _config(data_dir, steps=12, checkpoint_every=6, eval_every=6), full)
  assert "the run is at step 12 and config.train.steps is 12: nothing to train" in caplog.text
  jax.tree.map(np.testing.assert_array_equal, a, _params(full))


def _with_val_trials(n):
  """pipeline.load_sessions whose validation splits keep only their first n trials."""
  load = pipeline.load_sessions

  def loaded(*args, **kwargs):
    sessions = load(*args, **kwargs)
    for s in sessions:
      s.splits["val"] = {k: v[:n] for k, v in s.splits["val"].items()}
    return sessions

  return loaded


@pytest.mark.parametrize("val_trials, batch_size", [(4, 8), (None, 64)])  # None: all 54 of the session
def test_val_loss_covers_a_validation_split_smaller_than_a_batch(
  data_dir, tmp_path, monkeypatch, val_trials, batch_size
):
  if val_trials:
    monkeypatch.setattr(pipeline, "load_sessions", _with_val_trials(val_trials))
  workdir = str(tmp_path / "run")
  config = _config(data_dir, steps=2, checkpoint_every=2, eval_every=1)
  config.data.batch_size = batch_size
  last = trainer.train(registry.get("ndt1"), config, workdir)
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert np.isfinite(last["val_loss"]) and last["val_loss"] > 0  # a real loss, not 0 and not left out
  assert [l["step"] for l in lines if "val_loss" in l] == [1, 2]


def test_padded_batches_hold_every_trial_once():
  batches = ndt1_task.padded_batches(11, 4)
  assert [len(i) for i, _ in batches] == [4, 4, 4] and [int(v.sum()) for _, v in batches] == [4, 4, 3]
  assert sorted(np.concatenate([i[v] for i, v in batches]).tolist()) == list(range(11))
  assert ndt1_task.padded_batches(0, 4) == []


def test_padding_rows_of_a_validation_batch_carry_no_targets():
  config = ndt1_config.get_config("tiny")
  graphdef, params = nnx.split(ndt1.from_config(config, 12, rngs=nnx.Rngs(0)), nnx.Param)
  regions = jnp.asarray((np.arange(12) % 3)[None], jnp.int32)
  spikes = np.random.default_rng(0).poisson(0.5, (8, 100, 12)).astype(np.float32)
  valid = np.arange(8) < 5
  nll = jax.jit(
    lambda batch: ndt1_task.masked_nll(
      graphdef,
      params,
      batch,
      regions,
      jax.random.key(3),
      mode=masking.MTM,
      mask_config=masking.MaskConfig(),
      train=False,
    )
  )
  total, aux = nll({"spikes": spikes, "valid": valid})
  other = spikes.copy()
  other[5:] = np.random.default_rng(1).poisson(2.0, (3, 100, 12))  # other padding rows: nothing changes
  total_other, aux_other = nll({"spikes": other, "valid": valid})
  assert float(total_other) == float(total) and int(aux_other["n_targets"]) == int(aux["n_targets"])
  all_total, all_aux = nll({"spikes": spikes})  # every row counted
  assert 0 < int(aux["n_targets"]) < int(all_aux["n_targets"]) and float(total) < float(all_total)
  other[0] += 1  # a real row does count
  assert float(nll({"spikes": other, "valid": valid})[0]) != float(total)


def test_evaluate_writes_the_four_metrics(data_dir, tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  trainer.train(registry.get("ndt1"), _config(data_dir, steps=4, checkpoint_every=4, eval_every=4), workdir)
  results = registry.evaluate_workdir(workdir)
  saved = json.load(open(os.path.join(workdir, "metrics.json")))
  for m in report.METRICS:
    assert np.isfinite(saved[m]) and saved[m] == results[m]
    assert saved[f"oracle_{m}"] > 0.1  # synthetic data: true rates are informative
  assert saved["n_trials"] == 107 and saved["session_id"] == "synthetic_000"
  for m in decoding.BEHAVIOUR_METRICS + report.HEAD_METRICS:
    assert np.isfinite(saved[m]), m
  assert 0.0 <= saved["choice_accuracy"] <= 1.0 and 0.0 <= saved["head_choice_accuracy"] <= 1.0
  # Its data sets moved (or the workdir was copied to another machine): data_dir says where.
  moved = tmp_path / "moved"
  shutil.copytree(os.path.join(data_dir, "ibl_binned", "synthetic_000"), moved / "ibl_binned" / "synthetic_000")
  again = registry.evaluate_workdir(workdir, decode=False, data_dir=str(moved))
  assert [again[m] for m in report.METRICS] == [results[m] for m in report.METRICS]
  with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "empty"))):
    registry.evaluate_workdir(workdir, decode=False, data_dir=str(tmp_path / "empty"))
  with pytest.raises(ValueError, match=r"--datasets: \['ibl_binned/synthetic_000'\] given more than once"):
    registry.evaluate_workdir(workdir, decode=False, sessions=[DATASET, DATASET])
  # A read-only workdir (a read-only mount: root's os.access sees it) is refused before scoring.
  monkeypatch.setattr(os, "access", lambda path, mode: False)
  with pytest.raises(PermissionError, match=rf"{re.escape(workdir)}: not writable, so metrics.json"):
    registry.evaluate_workdir(workdir, decode=False)


def test_load_config_of_missing_run_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoints directory"):
    checkpoint.load_metadata(str(tmp_path))
