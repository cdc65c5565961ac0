"""The training loop's faults without a training run (training.trainer.run_steps on fake
updates, one train step on a non-finite batch): non-finite steps skipped, logged and
stopping the run with a checkpoint; SIGTERM and Ctrl-C saving the current step; a failed
save; the log lines (after the first step, ETAs, a timer)."""

import logging
import os
import re
import signal
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mtm_jax.tasks import ndt1 as ndt1_task
from mtm_jax import masking
from mtm_jax.configs import ndt1 as ndt1_config
from mtm_jax.models import ndt1
from mtm_jax.training import step as step_lib, stopping, trainer


def test_a_failed_save_without_an_earlier_checkpoint_says_to_start_again():
  from mtm_jax.training import saver  # pylint: disable=g-import-not-at-top

  failed = saver.SaveFailed(10, "/w/checkpoints", "[Errno 28] No space left on device", 11, None)
  assert failed.code.endswith("no checkpoint was written (re-run to start again once the cause is fixed)")


def test_a_nonfinite_batch_skips_the_update_and_keeps_the_optimizer_state():
  config = ndt1_config.get_config("tiny")
  model = ndt1.from_config(config, 12, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  tx = ndt1_task.make_optimizer(config)
  train_step = jax.jit(ndt1_task.make_train_step(graphdef, tx, masking.MTM, masking.MaskConfig()))
  regions = jnp.asarray((np.arange(12) % 3)[None], jnp.int32)
  spikes = np.random.default_rng(0).poisson(0.5, (8, 100, 12)).astype(np.float32)
  state = step_lib.init_state(params, tx)
  state, metrics = train_step(state, {"spikes": spikes}, regions, jax.random.key(0))
  assert bool(metrics["finite"])
  before = jax.device_get(state)
  spikes[0, 3, 5] = np.nan
  after, metrics = train_step(state, {"spikes": spikes}, regions, jax.random.key(0))
  assert not bool(metrics["finite"]) and int(after.step) == 2
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(after.params), before.params)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(after.opt_state), before.opt_state)


class _Recorder:
  def __init__(self):
    self.saved = []

  def __call__(self, step, state, progress):
    self.saved.append((step, int(state.step), progress))


def _fake_run(tmp_path, finite_at, saves, steps=20, limit=3, on_step=None, **run_args):
  """run_steps with an update that only counts and reports finite_at(step)."""
  train = ndt1_config.get_config("tiny").train
  train.update(steps=steps, log_every=4, eval_every=steps, checkpoint_every=10, max_nonfinite_steps=limit)

  def update(step, state, batch):
    if on_step:
      on_step(step)
    return step_lib.TrainState(state.step + 1, None, None), dict(loss=1.0, finite=finite_at(step + 1))

  writer = trainer.MetricWriter(str(tmp_path))
  try:
    last = trainer.run_steps(
      step_lib.TrainState(jnp.zeros((), jnp.int32), None, None),
      train,
      grain.MapDataset.range(1000),
      update=update,
      summarise=lambda w: dict(loss=1.0),
      learning_rate=lambda s: 0.1,
      evaluate=lambda s: {},
      save=saves,
      writer=writer,
      **run_args,
    )
  finally:
    writer.close()
  return last


def test_isolated_nonfinite_steps_are_skipped_and_logged(tmp_path, caplog):
  saves = _Recorder()
  with caplog.at_level(logging.WARNING):
    last = _fake_run(tmp_path, lambda s: s not in (3, 9, 10), saves)
  saved = saves.saved
  assert last["loss"] == 1.0
  warnings = [r.getMessage() for r in caplog.records if "update skipped" in r.getMessage()]
  assert [w.split(":")[0] for w in warnings] == ["step 3", "step 9", "step 10"]
  assert "(2 in a row)" in warnings[-1]
  assert [s[0] for s in saved] == [10, 20]
  assert saved[0][2] == dict(data_state={"next_index": 10}, nonfinite_in_a_row=2)


def test_k_nonfinite_steps_in_a_row_stop_with_a_checkpoint(tmp_path):
  saves = _Recorder()
  with pytest.raises(FloatingPointError, match=r"step 8: 3 steps in a row .*max_nonfinite_steps = 3.*\(step 5\)"):
    _fake_run(tmp_path, lambda s: s <= 5, saves, limit=3)  # steps 6, 7, 8 fail; counted at step 8 (log)
  assert saves.saved == [(8, 8, dict(data_state={"next_index": 8}, nonfinite_in_a_row=3))]


def test_sigterm_saves_the_current_step_and_raises_preempted(tmp_path):
  calls, saves = [], _Recorder()

  def on_step(step):
    calls.append(step)
    if step == 6:
      os.kill(os.getpid(), signal.SIGTERM)

  previous = signal.getsignal(signal.SIGTERM)
  with pytest.raises(stopping.Preempted) as error:
    _fake_run(tmp_path, lambda s: True, saves, on_step=on_step)
  assert error.value.step == 7 and error.value.code == stopping.PREEMPTED_EXIT_CODE
  assert calls[-1] == 6 and saves.saved[-1][:2] == (7, 7)
  assert signal.getsignal(signal.SIGTERM) is previous  # the handler is gone again


def test_ctrl_c_saves_the_current_step_and_raises_interrupted_and_a_second_one_aborts(tmp_path, capfd):
  saves = _Recorder()

  def on_step(step):
    if step == 6:
      os.kill(os.getpid(), signal.SIGINT)
      assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # a second Ctrl-C: KeyboardInterrupt

  previous = signal.getsignal(signal.SIGINT)
  with pytest.raises(stopping.Interrupted) as error:
    _fake_run(tmp_path, lambda s: True, saves, on_step=on_step)
  assert error.value.step == 7 and error.value.code == stopping.INTERRUPTED_EXIT_CODE == 130
  assert saves.saved[-1][:2] == (7, 7)
  assert signal.getsignal(signal.SIGINT) is previous
  assert "Ctrl-C: stopping after this step and saving it" in capfd.readouterr().err


def _info_lines(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]


def test_a_line_after_the_first_step_and_etas_without_the_compilation(tmp_path, caplog):
  """The first step (compiling: 1 s here) gets a line of its own; the ETA at step 4 counts
  steps 2-4 only (it counted the first second too: 4 steps/s, ETA 2s)."""
  with caplog.at_level(logging.INFO):
    _fake_run(tmp_path, lambda s: True, _Recorder(), steps=12, on_step=lambda s: time.sleep(1.0 if s == 0 else 0.001))
  lines = _info_lines(caplog)
  assert re.fullmatch(r"step 1/12 compiled and ran in 1\.\d s", lines[0]), lines
  assert [l.split("  ")[0] for l in lines[1:]] == ["step 4/12", "step 8/12", "step 12/12"]
  rate = float(re.search(r"([\d.]+) steps/s  ETA 0s", lines[1]).group(1))
  assert rate > 20, lines


def test_a_line_at_least_every_log_seconds_between_log_steps(tmp_path, caplog):
  with caplog.at_level(logging.INFO):
    last = _fake_run(
      tmp_path, lambda s: True, _Recorder(), steps=8, on_step=lambda s: time.sleep(0.06), log_seconds=0.1
    )  # log_every 4: without the timer, steps 1, 4 and 8 only
  lines = _info_lines(caplog)
  assert len(lines) >= 5 and lines[0].startswith("step 1/8 compiled"), lines
  assert all("steps/s  ETA" in l for l in lines[1:]), lines
  assert last["loss"] == 1.0
