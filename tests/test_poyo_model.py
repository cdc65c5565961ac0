"""POYO: rotary time embedding vs its definition, attention masking, model invariances,
vocabulary growth, preset sizes and config."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mtm_jax.configs import poyo as poyo_config
from mtm_jax.datasets.events import tokens
from mtm_jax.models import attention
from mtm_jax.models import perceiver
from mtm_jax.models import poyo
from mtm_jax.models import rotary
from mtm_jax.tasks import poyo as poyo_task

N_UNITS, N_SESSIONS = 12, 3
TASKS = {"vel": 2, "pos": 3}  # task ids follow sorted names: pos = 0, vel = 1
KEY = functools.partial(jax.random.key, impl="rbg")  # compiles faster than threefry on CPU


# ----------------------------------------------------------------------------- rotary


def test_rotary_frequencies_are_the_reference_periods():
  omega = rotary.rotary_frequencies()
  assert omega.shape == (16,) and omega.dtype == np.float32
  periods = 2 * np.pi / omega.astype(np.float64)
  np.testing.assert_allclose(periods[[0, -1]], [1e-4, 2.0627], rtol=1e-6)  # both ends inclusive
  np.testing.assert_allclose(np.diff(np.log(periods)), np.log(2.0627 / 1e-4) / 15, rtol=1e-5)
  # The original formula: t_min * (t_max / t_min) ** (i / 16) with t_max = 4, i < 16.
  np.testing.assert_allclose(periods, 1e-4 * (4.0 / 1e-4) ** (np.arange(16) / 16), rtol=1e-4)
  with pytest.raises(ValueError, match="rotate_dim"):
    rotary.rotary_frequencies(head_dim=16, rotate_dim=32)


def test_rotary_angles_and_rotation_match_numpy():
  rng = np.random.default_rng(0)
  t = rng.uniform(0, 1, (2, 5))  # float64, as from the host
  omega = rotary.rotary_frequencies().astype(np.float64)
  angles = rotary.rotary_angles(t)
  assert angles.shape == (2, 5, 16) and angles.dtype == jnp.float32
  np.testing.assert_allclose(angles, t[..., None] * omega, rtol=1e-6)

  x = rng.normal(size=(2, 5, 3, 64)).astype(np.float32)  # [B, L, H, E]
  a = np.asarray(angles, np.float64)[:, :, None, :]  # [B, L, 1, F]
  expected = x.astype(np.float64).copy()
  for f in range(16):
    c, s = np.cos(a[..., f]), np.sin(a[..., f])
    expected[..., 2 * f] = x[..., 2 * f] * c - x[..., 2 * f + 1] * s
    expected[..., 2 * f + 1] = x[..., 2 * f + 1] * c + x[..., 2 * f] * s
  out = rotary.rotate(jnp.asarray(x), angles)
  np.testing.assert_allclose(out, expected, atol=2e-5)
  np.testing.assert_array_equal(out[..., 32:], x[..., 32:])  # unrotated tail
  np.testing.assert_allclose(rotary.rotate(out, angles, inverse=True), x, atol=2e-5)
  minor = rotary.rotate(jnp.asarray(x.transpose(0, 2, 3, 1)), angles, time_minor=True)  # [B, H, E, L]
  np.testing.assert_allclose(np.asarray(minor).transpose(0, 3, 1, 2), out, rtol=1e-6, atol=1e-6)

  # Interleaved pairs: a quarter turn of pair 0 sends e0 to e1 and e1 to -e0.
  quarter = jnp.zeros((1, 16)).at[0, 0].set(np.pi / 2)
  e = jnp.eye(64)[:2][None, :, None, :]  # [1, 2 (as L), 1, 64]
  turned = rotary.rotate(e, jnp.broadcast_to(quarter, (1, 2, 16)))
  np.testing.assert_allclose(turned[0, 0, 0, :3], [0, 1, 0], atol=1e-7)
  np.testing.assert_allclose(turned[0, 1, 0, :3], [-1, 0, 0], atol=1e-7)


def test_rotated_dot_products_depend_on_time_differences_only():
  rng = np.random.default_rng(1)
  q, k = (jnp.asarray(rng.normal(size=(1, 1, 1, 64)), jnp.float32) for _ in range(2))
  dot = lambda tq, tk: float(
    jnp.sum(
      rotary.rotate(q, rotary.rotary_angles(jnp.array([[tq]])))
      * rotary.rotate(k, rotary.rotary_angles(jnp.array([[tk]])))
    )
  )
  np.testing.assert_allclose(dot(0.25, 0.125), dot(0.75, 0.625), rtol=1e-3, atol=1e-3)
  assert abs(dot(0.25, 0.125) - dot(0.25, 0.5)) > 1e-2


# -------------------------------------------------------------------------- attention


def test_rotary_attention_masks_keys_and_zeroes_rows_without_keys():
  attn = perceiver.RotaryAttention(8, 2, head_dim=8, rotate_value=True, dropout=0.5, rngs=nnx.Rngs(KEY(0)))
  attn.out.bias[...] = jnp.arange(8.0)
  rng = np.random.default_rng(0)
  x, ctx = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((2, 3, 8), (2, 5, 8)))
  xa, ca = (
    rotary.rotary_angles(rng.uniform(0, 1, (2, 3)), np.ones(2)),
    rotary.rotary_angles(rng.uniform(0, 1, (2, 5)), np.ones(2)),
  )
  mask = jnp.array([[True, True, True, False, False], [False] * 5])
  out = attn(x, ctx, xa, ca, mask)
  np.testing.assert_allclose(out[1], jnp.broadcast_to(jnp.arange(8.0), (3, 8)))  # zero attention + bias
  changed = ctx.at[:, 3:].set(100.0)  # padded keys/values do not matter
  np.testing.assert_allclose(attn(x, changed, xa, ca, mask), out, atol=1e-6)
  assert not np.allclose(attn(x, changed, xa, ca, jnp.ones_like(mask))[0], out[0], atol=1e-3)


def test_attend_takes_keys_and_values_in_either_layout():
  rng = np.random.default_rng(2)
  q, k, v = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((2, 3, 2, 8), (2, 5, 2, 8), (2, 5, 2, 8)))
  mask = jnp.asarray(rng.uniform(size=(2, 1, 1, 5)) < 0.7).at[..., 0].set(True)
  key_last = lambda y: jnp.transpose(y, (0, 2, 3, 1))  # [B, K, H, E] -> [B, H, E, K]
  for kw in (dict(), dict(dropout_rate=0.3, key=KEY(1))):
    np.testing.assert_allclose(
      attention.attend(q, key_last(k), key_last(v), mask, kv_layout="bhek", **kw),
      attention.attend(q, k, v, mask, **kw),
      rtol=1e-6,
      atol=1e-6,
    )
  with pytest.raises(ValueError, match="kv_layout"):
    attention.attend(q, k, v, kv_layout="bkeh")


# ------------------------------------------------------------------------------ model


@pytest.fixture(scope="module")
def model():
  # t_min = 10 ms instead of 0.1 ms: the relative-time test then checks the architecture
  # rather than float32 rounding of t * omega (up to 5e-3 rad at a 0.1 ms period, which
  # moves outputs by ~1e-3 under a time shift).
  return poyo.POYO(N_UNITS, N_SESSIONS, poyo.PRESETS["tiny"], tasks=TASKS, t_min=1e-2, rngs=nnx.Rngs(KEY(0)))


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, state, batch, latent_timestamps, key):
  return nnx.merge(graphdef, state)(batch, latent_timestamps=latent_timestamps, key=key)


def run(model, batch, latent_timestamps=None, key=None):
  graphdef, state = nnx.split(model)
  if latent_timestamps is None:
    latent_timestamps = model.latent_timestamps()
  return jax.tree.map(np.asarray, _apply(graphdef, state, batch, latent_timestamps, key))


def make_batch(seed=0, b=2, units=4, spikes=16, q=6):
  """Windows of `units` units: start/end tokens per unit, then spikes; L = 2*units + spikes."""
  rng = np.random.default_rng(seed)
  unit_index, timestamps, token_type = [], [], []
  for _ in range(b):
    ids = rng.choice(np.arange(1, N_UNITS + 1), units, replace=False)
    unit_index.append(np.concatenate([np.repeat(ids, 2), rng.choice(ids, spikes)]))
    timestamps.append(np.concatenate([np.tile([0.0, 1.0], units), rng.uniform(0, 1, spikes)]))
    token_type.append(np.concatenate([np.tile([tokens.START, tokens.END], units), np.full(spikes, tokens.SPIKE)]))
  return dict(
    unit_index=np.array(unit_index, np.int32),
    timestamps=np.array(timestamps),  # float64 from the host
    token_type=np.array(token_type, np.int32),
    input_mask=np.ones((b, 2 * units + spikes), bool),
    session_index=rng.integers(1, N_SESSIONS + 1, b).astype(np.int32),
    output_timestamps=np.sort(rng.uniform(0, 1, (b, q))),
    output_task=rng.integers(0, 2, (b, q)).astype(np.int32),
    output_mask=np.ones((b, q), bool),
  )


def test_output_shapes_task_routing_and_latent_layout(model):
  batch = make_batch()
  batch["output_mask"][1, -1] = False
  out = run(model, batch)
  assert sorted(out) == ["pos", "vel"]
  assert out["pos"].shape == (2, 6, 3) and out["vel"].shape == (2, 6, 2)
  for i, name in enumerate(["pos", "vel"]):
    assert poyo.task_ids(TASKS)[name] == i
    mine = batch["output_mask"] & (batch["output_task"] == i)
    assert np.all(out[name][~mine] == 0) and np.all(np.abs(out[name][mine]).sum(-1) > 0)
  p = poyo.PRESETS["tiny"].latents_per_step
  np.testing.assert_allclose(model.latent_timestamps(), np.repeat(np.arange(8) * 0.125 + 0.0625, p))


def test_relative_time_invariance(model):
  """Shifting tokens, latents and queries by the same time leaves the outputs unchanged."""
  batch, shift = make_batch(1), 0.375
  base = run(model, batch)
  shifted = dict(batch, timestamps=batch["timestamps"] + shift, output_timestamps=batch["output_timestamps"] + shift)
  moved = run(model, shifted, model.latent_timestamps() + shift)
  for name in base:
    np.testing.assert_allclose(moved[name], base[name], atol=2e-5, rtol=1e-4)
  # Moving the tokens only (latents and queries fixed) does change them.
  tokens_only = run(model, dict(batch, timestamps=batch["timestamps"] + shift))
  assert max(np.abs(tokens_only[n] - base[n]).max() for n in base) > 1e-2


def test_padding_invariance(model):
  """Padded tokens (any unit, time, type) and padded queries change no real output."""
  batch, rng = make_batch(2), np.random.default_rng(3)
  base = run(model, batch)
  b, extra, extra_q = 2, 8, 3
  pad_units = rng.integers(1, N_UNITS + 1, (b, extra)).astype(np.int32)
  padded = dict(
    batch,
    unit_index=np.concatenate([batch["unit_index"], pad_units], 1),
    timestamps=np.concatenate([batch["timestamps"], rng.uniform(0, 1, (b, extra))], 1),
    token_type=np.concatenate([batch["token_type"], rng.integers(0, 3, (b, extra)).astype(np.int32)], 1),
    input_mask=np.concatenate([batch["input_mask"], np.zeros((b, extra), bool)], 1),
    output_timestamps=np.concatenate([batch["output_timestamps"], rng.uniform(0, 1, (b, extra_q))], 1),
    output_task=np.concatenate([batch["output_task"], rng.integers(0, 2, (b, extra_q)).astype(np.int32)], 1),
    output_mask=np.concatenate([batch["output_mask"], np.zeros((b, extra_q), bool)], 1),
  )
  out = run(model, padded)
  for name in base:
    np.testing.assert_allclose(out[name][:, :6], base[name], atol=1e-5, rtol=1e-5)
    assert np.all(out[name][:, 6:] == 0)
  # The same tokens unmasked do change the outputs: the mask is what hides them.
  unmasked = run(model, dict(padded, input_mask=np.ones_like(padded["input_mask"])))
  assert max(np.abs(unmasked[n][:, :6] - base[n]).max() for n in base) > 1e-3


def test_window_without_tokens_gives_finite_outputs(model):
  batch = make_batch(4)
  base = run(model, batch)
  batch["input_mask"][0] = False
  out = run(model, batch)
  for name in out:
    assert np.isfinite(out[name]).all()
    np.testing.assert_allclose(out[name][1], base[name][1], atol=1e-6)  # windows are independent
  keyed = run(model, batch, key=KEY(0))
  assert all(np.isfinite(v).all() for v in keyed.values())


def test_dropout_only_with_a_key(model):
  batch = make_batch(5)
  det = run(model, batch)
  a, a2, c = (run(model, batch, key=KEY(s)) for s in (1, 1, 2))
  for name in det:
    np.testing.assert_array_equal(a[name], a2[name])
    assert not np.allclose(a[name], c[name])
    assert not np.allclose(a[name], det[name])
  np.testing.assert_array_equal(run(model, batch)["vel"], det["vel"])


def test_batch_errors_name_the_field(model):
  batch = make_batch()
  with pytest.raises(ValueError, match="output_mask"):
    model({k: v for k, v in batch.items() if k != "output_mask"})
  with pytest.raises(ValueError, match="token_type"):
    model(dict(batch, token_type=batch["token_type"][:, :-1]))
  with pytest.raises(ValueError, match="input_mask"):
    model(dict(batch, input_mask=batch["input_mask"].astype(np.float32)))
  with pytest.raises(ValueError, match="latent_timestamps"):
    model(batch, latent_timestamps=np.zeros(5))


def test_grow_vocab_keeps_old_rows_and_adds_new_ones(model):
  old = nnx.to_pure_dict(nnx.state(model))
  grown = poyo.grow_vocab(model, 5, 2, KEY(7))
  assert (grown.n_units, grown.n_sessions) == (N_UNITS + 5, N_SESSIONS + 2)
  new = nnx.to_pure_dict(nnx.state(grown))
  paths = poyo.embedding_paths()
  for what, (outer, leaf), n_old, n_new in (
    ("unit", paths["unit"], N_UNITS + 1, 5),
    ("session", paths["session"], N_SESSIONS + 1, 2),
  ):
    table, before = np.asarray(new[outer][leaf]), np.asarray(old[outer][leaf])
    assert table.shape == (n_old + n_new, 32), what
    np.testing.assert_array_equal(table[:n_old], before)
    assert np.all(table[0] == 0)  # padding row
    assert np.all(np.abs(table[n_old:]).sum(-1) > 0) and np.abs(table[n_old:]).max() < 0.2
  # Everything else is unchanged, and the argument is untouched.
  rest = lambda p: {k: v for k, v in p.items() if k not in ("unit_emb", "session_emb")}
  jax.tree.map(np.testing.assert_array_equal, rest(new), rest(old))
  assert nnx.state(model)["unit_emb"]["embedding"][...].shape == (N_UNITS + 1, 32)
  # The pure-dict form gives the same tables; the filter selects exactly these tables.
  same = poyo.grow_vocab(old, 5, 2, KEY(7))
  np.testing.assert_array_equal(same["unit_emb"]["embedding"], new["unit_emb"]["embedding"])
  selected = nnx.to_flat_state(nnx.state(grown, poyo.embedding_filter()))
  assert sorted(tuple(path) for path, _ in selected) == sorted(paths.values())
  # The grown model runs on a batch that uses the new rows.
  batch = make_batch(6)
  batch["unit_index"][0, -1], batch["session_index"][0] = N_UNITS + 5, N_SESSIONS + 2
  assert all(np.isfinite(v).all() for v in run(grown, batch).values())


def _expected_params(dim, depth, cross, self_heads, per_step, n_units, n_sessions, out_dims, head=64):
  """Parameter count written out from the architecture."""
  ln = 2 * dim
  ffn = ln + (dim * 8 * dim + 8 * dim) + (4 * dim * dim + dim)
  cross_block = 2 * ln + 3 * dim * cross * head + (cross * head * dim + dim) + ffn
  self_block = ln + 3 * dim * self_heads * head + (self_heads * head * dim + dim) + ffn
  tables = (n_units + 1 + n_sessions + 1) * dim
  other = (4 + per_step) * dim + (dim if len(out_dims) > 1 else 0) + sum((dim + 1) * d for d in out_dims)
  return 2 * cross_block + depth * self_block + other, tables


@pytest.mark.parametrize("size,low,high", [("small", 1.2e6, 1.35e6), ("large", 11.6e6, 11.9e6)])
def test_preset_parameter_counts(size, low, high):
  config = poyo_config.get_config(size)
  poyo_task.check_config(config)
  abstract = nnx.eval_shape(lambda: poyo.from_config(config, 1, 1, rngs=nnx.Rngs(0)))
  s = poyo.PRESETS[size]
  body, tables = _expected_params(s.dim, s.depth, s.cross_heads, s.self_heads, s.latents_per_step, 1, 1, [2])
  assert poyo.count_params(abstract, embeddings=False) == body
  assert poyo.count_params(abstract) == body + tables
  assert low < body < high


def test_config_presets_and_validation():
  for preset in ("small", "large", "tiny"):
    poyo_task.check_config(poyo_config.get_config(preset))
  config = poyo_config.get_config("tiny")
  config.data.window_length = 2.0  # shared with the model
  assert config.model.window_length == 2.0
  abstract = nnx.eval_shape(lambda: poyo.from_config(config, N_UNITS, N_SESSIONS, rngs=nnx.Rngs(0)))
  assert abstract.n_latent_steps == 16 and abstract.dim == poyo.PRESETS["tiny"].dim
  config.data.token_buckets = (64, 100)
  with pytest.raises(ValueError, match="token_buckets"):
    poyo_task.check_config(config)
  with pytest.raises(ValueError, match="unknown preset"):
    poyo_config.get_config("medium")


def test_load_equals_grow_vocab_with_the_fresh_rows(model):
  """load(fresh, pretrained) is grow_vocab + replace_by_pure_dict bit for bit, except that
  the new table rows are the fresh model's."""
  pre = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  big = poyo.POYO(N_UNITS + 5, N_SESSIONS + 2, model.hparams, rngs=nnx.Rngs(KEY(3)))
  init = nnx.to_pure_dict(nnx.state(big, nnx.Param))
  out = poyo.load(nnx.state(big, nnx.Param), nnx.state(model, nnx.Param), where="pre")
  state = nnx.state(big, nnx.Param)
  nnx.replace_by_pure_dict(state, poyo.grow_vocab(pre, 5, 2, KEY(7)))
  grown = nnx.to_pure_dict(state)
  paths = poyo.embedding_paths()
  for (outer, leaf), n_old in ((paths["unit"], N_UNITS + 1), (paths["session"], N_SESSIONS + 1)):
    np.testing.assert_array_equal(out[outer][leaf][:n_old], grown[outer][leaf][:n_old])
    np.testing.assert_array_equal(out[outer][leaf][n_old:], init[outer][leaf][n_old:])
  rest = lambda p: {k: v for k, v in p.items() if k not in ("unit_emb", "session_emb")}
  jax.tree.map(np.testing.assert_array_equal, rest(out), rest(grown))
  assert jax.tree.structure(out) == jax.tree.structure(init)
  with pytest.raises(ValueError, match=r"pre: the unit table unit_emb/embedding has shape \(18, 32\)"):
    poyo.load(pre, init, where="pre")
  other = poyo.POYO(N_UNITS, N_SESSIONS, model.hparams, depth=2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="pre: has no parameter 'processor/1/"):
    poyo.load(nnx.state(other, nnx.Param), pre, where="pre")


def test_load_with_a_key_equals_grow_vocab(model):
  """load(fresh, pretrained, key=k) is grow_vocab(pretrained, key=k) bit for bit (POYO's fine-tuning)."""
  pre = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  big = poyo.POYO(N_UNITS + 5, N_SESSIONS + 2, model.hparams, rngs=nnx.Rngs(KEY(3)))
  out = poyo.load(nnx.state(big, nnx.Param), pre, where="pre", key=KEY(7), init_scale=0.05)
  state = nnx.state(big, nnx.Param)
  nnx.replace_by_pure_dict(state, poyo.grow_vocab(pre, 5, 2, KEY(7), init_scale=0.05))
  jax.tree.map(np.testing.assert_array_equal, out, nnx.to_pure_dict(state))


def test_hparams_presets_config_and_errors(model):
  assert sorted(poyo.PRESETS) == ["compact", "large", "small", "tiny"]
  assert model.hparams.tasks == (("pos", 3), ("vel", 2)) and model.tasks == model.hparams.tasks
  config = poyo_config.get_config("tiny")
  hp = poyo.Hparams.from_config(config.model)
  assert hp == dataclasses.replace(poyo.PRESETS["tiny"], ffn_dropout=0.1, lin_dropout=0.1, attn_dropout=0.1)
  assert poyo.from_config(config, 3, 1, rngs=nnx.Rngs(0)).hparams == hp
  for field, value in (
    ("head_dim", 30),
    ("latent_step", 2.0),
    ("tasks", {}),
    ("t_min", 3.0),
    ("ffn_dropout", 1.0),
    ("rotary_frequencies", (1.0,)),
  ):
    with pytest.raises(ValueError, match=f"config.model.{field}"):
      dataclasses.replace(hp, **{field: value})
    bad = poyo_config.get_config("tiny")
    bad.model[field] = value
    with pytest.raises(ValueError, match=f"config.model.{field}"):
      poyo_task.check_config(bad)
  config.model.size = "medium"
  with pytest.raises(ValueError, match="config.model.size: unknown 'medium'"):
    poyo.Hparams.from_config(config.model)
