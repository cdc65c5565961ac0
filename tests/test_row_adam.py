"""optimizer.row_adamw: per-row step counts under row masks (PyTorch's per-parameter Adam)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mtm_jax.configs import ndt1 as ndt1_config
from mtm_jax.models import ndt1
from mtm_jax.tasks import ndt1 as ndt1_task
from mtm_jax.training import checkpoint, optimizer, rows, step as step_lib

SCHEDULE = optax.cosine_onecycle_schedule(transition_steps=20, peak_value=1e-2, pct_start=0.3)
WD = 0.05


def _params(seed=0):
  r = np.random.default_rng(seed)
  return {
    "table": {"kernel": jnp.asarray(r.normal(size=(2, 3, 4)), jnp.float32)},  # [rows=2, in, out]
    "w": jnp.asarray(r.normal(size=(4,)), jnp.float32),
  }


def _loss(params, batch, consts, key):
  """[rows] weights in batch["rows"]: a row with weight 0 has no gradient."""
  del consts, key
  t = params["table"]["kernel"]
  per_row = jnp.sum((t - batch["x"][None]) ** 2, axis=(1, 2)) * batch["rows"]
  return jnp.sum(per_row) + jnp.sum((params["w"] - batch["x"][0]) ** 2), {}


def _row_mask(params, batch):
  return rows.table_mask(params, {"table": lambda n: batch["rows"] > 0}, rest=True)


def _batches(n, used):
  r = np.random.default_rng(1)
  return [
    dict(x=jnp.asarray(r.normal(size=(3, 4)), jnp.float32), rows=jnp.asarray([1.0, float(u)], jnp.float32))
    for u in used[:n]
  ]


def _bits_equal(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


@pytest.mark.parametrize("masked", [False, True])
def test_every_row_every_step_is_optax_adamw_bit_for_bit(masked):
  ref_tx = optax.adamw(SCHEDULE, b1=0.9, b2=0.999, eps=1e-8, weight_decay=WD)
  tx = optimizer.row_adamw(SCHEDULE, weight_decay=WD, row_tables=("table",))
  mask = _row_mask if masked else None  # the same train step around both (with a mask: every row True)
  ours = jax.jit(step_lib.make_train_step(_loss, tx, row_mask=mask))
  ref = jax.jit(step_lib.make_train_step(_loss, ref_tx, row_mask=mask))
  a, b = step_lib.init_state(_params(), tx), step_lib.init_state(_params(), ref_tx)
  for batch in _batches(8, [1] * 8):
    a, _ = ours(a, batch, None, jax.random.key(0))
    b, _ = ref(b, batch, None, jax.random.key(0))
    _bits_equal(a.params, b.params)
  _bits_equal(a.opt_state[0].mu, b.opt_state[0].mu)
  assert a.opt_state[0].count["table"]["kernel"].shape == (2, 1, 1)
  np.testing.assert_array_equal(a.opt_state[0].count["table"]["kernel"].ravel(), [8, 8])


def test_a_row_updated_on_some_steps_is_adamw_on_those_steps_alone():
  """Row 1 changes on 5 of 10 steps: its trajectory is optax.adamw's on row 1 alone seeing
  only those 5 steps (to float32 rounding), with the learning rate of each one's global step
  (the reference's k-th step takes the schedule at the global step of row 1's k-th)."""
  used = [1, 0, 0, 1, 1, 0, 1, 0, 0, 1]
  tx = optimizer.row_adamw(SCHEDULE, weight_decay=WD, row_tables=("table",))
  train_step = jax.jit(step_lib.make_train_step(_loss, tx, row_mask=_row_mask))
  state = step_lib.init_state(_params(), tx)
  global_steps = jnp.asarray([t for t, u in enumerate(used) if u], jnp.int32)
  ref_tx = optax.adamw(lambda k: SCHEDULE(global_steps[k]), weight_decay=WD)

  @jax.jit
  def ref_step(row, ref_state, x):  # row 1's share of _loss, alone
    grad = jax.grad(lambda r: jnp.sum((r - x) ** 2))(row)
    update, ref_state = ref_tx.update(grad, ref_state, row)
    return optax.apply_updates(row, update), ref_state

  row1 = state.params["table"]["kernel"][1]
  ref_state, worst = ref_tx.init(row1), 0.0
  for t, batch in enumerate(_batches(10, used)):
    state, metrics = train_step(state, batch, None, jax.random.key(0))
    if used[t]:
      row1, ref_state = ref_step(row1, ref_state, batch["x"])
    assert bool(metrics["finite"])
    worst = max(worst, float(jnp.max(jnp.abs(state.params["table"]["kernel"][1] - row1) / jnp.abs(row1))))
    np.testing.assert_allclose(state.opt_state[0].mu["table"]["kernel"][1], ref_state[0].mu, rtol=1e-6)
  print(f"row 1 vs adamw alone: max relative difference {worst:.2e}")
  assert worst < 5e-7  # float32 rounding of differently fused programs (bit for bit on the first steps)
  np.testing.assert_array_equal(state.opt_state[0].count["table"]["kernel"].ravel(), [10, sum(used)])


def test_unfrozen_backbone_starts_with_adams_first_step():
  """Warm-up on the table alone (backbone frozen), then everything: the backbone's first
  update is Adam's first step, lr x (g / (|g| + eps) + wd x w), not one damped by the
  warm-up steps' bias correction."""
  tx = optimizer.row_adamw(SCHEDULE, weight_decay=WD, row_tables=("table",))
  table_only = lambda params, batch: rows.rows_from(params, {"table": 0})
  warmup = jax.jit(step_lib.make_train_step(_loss, tx, row_mask=table_only))
  full = jax.jit(step_lib.make_train_step(_loss, tx))
  state = step_lib.init_state(_params(), tx)
  batches = _batches(6, [1] * 6)
  for batch in batches[:5]:
    state, _ = warmup(state, batch, None, jax.random.key(0))
  w = state.params["w"]
  np.testing.assert_array_equal(w, _params()["w"])
  assert int(state.opt_state[0].count["w"]) == 0
  g = jax.grad(lambda p: _loss(p, batches[5], None, None)[0])(state.params)["w"]
  state, _ = full(state, batches[5], None, jax.random.key(0))
  expected = w - SCHEDULE(5) * (g / (jnp.abs(g) + 1e-8) + WD * w)
  np.testing.assert_allclose(state.params["w"], expected, rtol=1e-6)
  assert int(state.opt_state[0].count["w"]) == 1


def test_a_mask_with_rows_of_a_table_without_row_counts_is_an_error():
  tx = optimizer.row_adamw(SCHEDULE, weight_decay=WD, row_tables=())
  train_step = step_lib.make_train_step(_loss, tx, row_mask=_row_mask)
  with pytest.raises(ValueError, match="row_tables"):
    train_step(step_lib.init_state(_params(), tx), _batches(1, [1])[0], None, jax.random.key(0))


def _ndt1_state(tx):
  config = ndt1_config.get_config("tiny")
  _, params = nnx.split(ndt1.from_config(config, 12, rngs=nnx.Rngs(0)), nnx.Param)
  return config, step_lib.init_state(params, tx)


def _saved(workdir, state, config):
  mngr = checkpoint.manager(str(workdir))
  checkpoint.save(mngr, 3, state, config, [dict(name="s")], key=jax.random.key(0), data_state=None)
  mngr.wait_until_finished()
  return mngr


def test_checkpoints_resume_bit_for_bit_and_older_layouts_are_named(tmp_path):
  config, state = _ndt1_state(ndt1_task.make_optimizer(ndt1_config.get_config("tiny")))
  mngr = _saved(tmp_path / "new", state, config)
  _bits_equal(checkpoint.restore(mngr, state).state, state)
  mngr.close()
  # A checkpoint of the optax.adamw state (before per-row step counts).
  _, old_state = _ndt1_state(optax.adamw(0.1))
  mngr = _saved(tmp_path / "old", old_state, config)
  with pytest.raises(ValueError, match=f"^{tmp_path / 'old'}: its checkpoint of step 3 was made by an older version"):
    checkpoint.restore(mngr, state, quarantine=True)
  assert mngr.all_steps() == [3]  # not taken for damaged
  _bits_equal(checkpoint.restore(mngr, state, params_only=True).state.params, old_state.params)
  mngr.close()
