"""Spike-token MtM checkpoints written before config.model.unit_readout existed (the
per-unit readout is on by default since): they evaluate, fine-tune and resume as the
model they hold, and a config that asks for the readout is refused with the field named."""

import glob
import os
import shutil

import numpy as np
import pytest

from mtm_jax.models import poyo_mtm
from mtm_jax.tasks import registry
from mtm_jax.training import checkpoint, trainer
from tests import run_checks
from tests.test_poyo_mtm import tiny_config, trial_session

STEPS = 2


def legacy_config():
  """tiny_config as the library wrote it before the readout field: no model.unit_readout."""
  c = tiny_config()
  c.train.steps, c.train.eval_every, c.train.checkpoint_every = STEPS, STEPS, STEPS
  with c.unlocked():
    del c.model["unit_readout"]
  return c


@pytest.fixture(scope="module")
def legacy_run(tmp_path_factory):
  sessions = [trial_session(0), trial_session(2, n_units=6)]
  workdir = str(tmp_path_factory.mktemp("legacy"))
  trainer.train(registry.get("poyo_mtm"), legacy_config(), workdir, sessions[:1])
  # A checkpoint of those days predates run provenance too: its resume checks family, model and sessions.
  os.remove(os.path.join(workdir, "provenance.json"))
  for item in glob.glob(os.path.join(checkpoint.checkpoint_dir(workdir), "*", "provenance")):
    shutil.rmtree(item)
  return workdir, sessions


def test_the_unit_readout_adds_one_kernel_and_changes_the_rates():
  from flax import nnx

  hp = poyo_mtm.Hparams.from_config(tiny_config().model)
  assert hp.unit_readout and not poyo_mtm.Hparams.from_config(legacy_config().model).unit_readout
  with_readout = poyo_mtm.PoyoMtM(5, 1, hp, rngs=nnx.Rngs(0))
  without = poyo_mtm.PoyoMtM(5, 1, poyo_mtm.Hparams.from_config(legacy_config().model), rngs=nnx.Rngs(0))
  a, b = run_checks.flat(nnx.state(with_readout, nnx.Param)), run_checks.flat(nnx.state(without, nnx.Param))
  assert set(a) - set(b) == {"unit_readout/kernel"} and set(b) <= set(a)
  assert a["unit_readout/kernel"].shape == (hp.dim, hp.dim)
  latents = np.random.default_rng(0).normal(size=(1, with_readout.n_latent_steps * hp.latents_per_step, hp.dim))
  units, times = np.array([[1, 2, 3]]), np.array([[0.01, 0.5, 1.99]], np.float32)
  args = (latents.astype(np.float32), units, times, np.array([1]), np.array([0]))
  nnx.update(without, nnx.state(with_readout, nnx.Param).filter(lambda path, _: "unit_readout" not in path))
  got, base = np.asarray(with_readout.decode(*args)), np.asarray(without.decode(*args))
  assert got.shape == base.shape == (1, 3) and np.abs(got - base).max() > 1e-6


def test_a_checkpoint_without_the_field_fine_tunes_and_resumes_as_it_was(legacy_run, tmp_path):
  workdir, sessions = legacy_run
  saved, _ = checkpoint.load_metadata(workdir)
  assert "unit_readout" not in saved.model
  assert "unit_readout/kernel" not in run_checks.flat(registry.load_trained(workdir).params)
  task = registry.get("poyo_mtm")
  config = task.finetune_config(tiny_config(), workdir, "unit_id")  # today's defaults: readout on
  assert config.model.unit_readout is False
  config.train.steps = config.train.eval_every = config.train.checkpoint_every = 2
  trainer.train(task, config, str(tmp_path / "unit_id"), sessions[1:])
  assert "unit_readout/kernel" not in run_checks.flat(registry.load_trained(str(tmp_path / "unit_id")).params)
  more = legacy_config()
  more.train.steps = more.train.checkpoint_every = more.train.eval_every = STEPS + 1
  trainer.train(task, more, workdir, sessions[:1])  # resumed: same model
  assert registry.load_trained(workdir).step == STEPS + 1
  with pytest.raises(ValueError, match=r"config\.model\.unit_readout: checkpoint False, this config True"):
    trainer.train(task, tiny_config(), workdir, sessions[:1])
