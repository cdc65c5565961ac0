"""NEDS (models/neds.py) and its masking schemes and losses (modalities.py): shapes, what
masks and absent modalities change, the schemes' structure, the losses' normalisations,
determinism, a finite jit'ed gradient step, and `load`."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mtm_jax import modalities as M
from mtm_jax.models import neds

B, T, SIZES = 4, 6, (5, 7, 3)
SESSION = jnp.array([0, 1, 2, 1])


def _model(seed=0, sizes=SIZES, **fields):
  hp = dataclasses.replace(neds.PRESETS["tiny"], max_bins=T, **fields)
  return neds.NEDS(sizes, hp, rngs=nnx.Rngs(seed))


def _inputs(seed=1, n=max(SIZES)):
  k = jax.random.split(jax.random.PRNGKey(seed), 5)
  return {
    "spike": jax.random.poisson(k[0], 1.5, (B, T, n)).astype(jnp.float32),
    "choice": jax.random.randint(k[1], (B,), 0, 2),
    "block": jax.random.randint(k[2], (B,), 0, 3),
    "wheel": jax.random.normal(k[3], (B, T)),
    "whisker": jax.random.normal(k[4], (B, T)),
  }


def _masks(scheme: str, seed=2):
  schemes = jnp.full((B,), M.SCHEMES.index(scheme), jnp.int32)
  return M.scheme_masks(jax.random.PRNGKey(seed), schemes, T, M.MODALITIES, 0.5)


def test_shapes_and_session_rows():
  model, x, masks = _model(), _inputs(), _masks("cross_modal")
  out = model(x, masks, session=SESSION)
  assert {k: v.shape for k, v in out.items()} == {
    "spike": (B, T, 7),
    "choice": (B, 2),
    "block": (B, 3),
    "wheel": (B, T),
    "whisker": (B, T),
  }
  assert model.encode(x, masks, session=SESSION).shape == (B, 5 * T, 32)
  one = model(x, masks, session=1)  # a scalar session = the whole batch is that session
  many = model(x, masks, session=jnp.ones((B,), jnp.int32))
  for k in one:
    np.testing.assert_allclose(one[k], many[k], rtol=1e-5, atol=1e-6)
  other = model(x, masks, session=jnp.array([0, 1, 0, 1]))  # session row changes example 2 only
  assert not np.allclose(other["wheel"][2], out["wheel"][2]) and np.allclose(other["wheel"][:2], out["wheel"][:2])
  with pytest.raises(ValueError, match="'spike'"):
    model({**x, "spike": x["spike"][..., :5]}, masks, session=0)


def test_masked_tokens_inputs_do_not_matter_visible_ones_do():
  model, x = _model(), _inputs()
  masks = {m: jnp.zeros((B, T), bool) for m in M.MODALITIES}
  masks["wheel"] = masks["wheel"].at[:, 2].set(True)
  masks["spike"] = masks["spike"].at[:, 4].set(True)
  base = model(x, masks, session=SESSION)
  hidden = {**x, "wheel": x["wheel"].at[:, 2].add(5.0), "spike": x["spike"].at[:, 4].add(3.0)}
  for k, v in model(hidden, masks, session=SESSION).items():
    np.testing.assert_array_equal(v, base[k])
  visible = model({**x, "wheel": x["wheel"].at[:, 3].add(5.0)}, masks, session=SESSION)
  assert not np.allclose(visible["spike"], base["spike"])
  # encoding masks every spike token: the spikes do not reach the outputs at all
  enc = _masks("encoding")
  a = model(x, enc, session=SESSION)
  b = model({**x, "spike": x["spike"] * 0 + 9.0}, enc, session=SESSION)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])


def test_absent_modality_is_never_attended_to_nor_a_target():
  model, x, masks = _model(), _inputs(), _masks("cross_modal")
  present = {m: jnp.ones((B,), bool) for m in M.MODALITIES}
  present["wheel"] = present["wheel"].at[0].set(False)
  base = model(x, masks, session=SESSION, present=present)
  changed = {**x, "wheel": x["wheel"].at[0].set(jnp.nan)}
  other_masks = {**masks, "wheel": masks["wheel"].at[0].set(~masks["wheel"][0])}
  out = model(changed, other_masks, session=SESSION, present=present)
  for k in M.MODALITIES:
    keep = out[k] if k != "wheel" else out[k][1:]
    np.testing.assert_allclose(keep, base[k] if k != "wheel" else base[k][1:], rtol=1e-6, atol=1e-6)
  assert np.all(np.isfinite(out["spike"]))
  # present, the same change moves the other modalities' outputs
  assert not np.allclose(
    model({**x, "wheel": x["wheel"].at[0].add(3.0)}, masks, session=SESSION)["spike"][0],
    model(x, masks, session=SESSION)["spike"][0],
  )
  valid = jnp.ones((B, 7), bool)
  _, per = M.losses(base, x, masks, valid_neurons=valid, present=present)
  _, per2 = M.losses({**base, "wheel": base["wheel"].at[0].add(100.0)}, x, masks, valid_neurons=valid, present=present)
  assert float(per["wheel"]) == float(per2["wheel"])


def test_schemes_per_example_and_per_batch():
  schemes = jnp.array([0, 1, 2, 3, 4] * 8, jnp.int32)
  key = jax.random.PRNGKey(3)
  for per_example in (True, False):
    masks = M.scheme_masks(key, schemes, 20, M.MODALITIES, 0.3, per_example=per_example)
    s = np.asarray(schemes)
    sp, beh = np.asarray(masks["spike"]), {m: np.asarray(masks[m]) for m in M.MODALITIES[1:]}
    assert sp[s == 0].all() and not sp[s == 1].any() and not sp[s == 3].any()
    for m, v in beh.items():
      assert not v[s == 0].any() and v[s == 1].all() and not v[s == 2].any()
      np.testing.assert_array_equal(v[s == 4], sp[s == 4])  # cross_modal: one shared mask
    assert 0.1 < sp[s == 2].mean() < 0.6
    assert not np.array_equal(beh["wheel"][s == 3], beh["whisker"][s == 3])  # own draw per modality
    rows_equal = all((sp[s == k] == sp[s == k][:1]).all() for k in (2, 4))
    assert rows_equal == (not per_example)  # NEDS's row-0 masks only when per_example=False
  drawn = np.asarray(M.draw_schemes(key, 1000, weights=[0, 0, 1, 1, 0]))
  assert set(drawn) == {2, 3}


def test_losses_match_their_definitions():
  rng = np.random.default_rng(0)
  preds = {"spike": rng.normal(size=(B, T, 7)), "wheel": rng.normal(size=(B, T)), "choice": rng.normal(size=(B, 2))}
  x = _inputs()
  masks = {m: jnp.asarray(rng.random((B, T)) < 0.4) for m in preds}
  valid = jnp.asarray(rng.random((B, 7)) < 0.7)
  total, per = M.losses({k: jnp.asarray(v) for k, v in preds.items()}, x, masks, valid_neurons=valid)
  y, r = np.asarray(x["spike"]), preds["spike"]
  sel = np.asarray(masks["spike"])[:, :, None] & np.asarray(valid)[:, None, :]
  np.testing.assert_allclose(per["spike"], (np.exp(r) - y * r)[sel].mean(), rtol=1e-5)
  np.testing.assert_allclose(
    per["wheel"], ((preds["wheel"] - np.asarray(x["wheel"])) ** 2)[np.asarray(masks["wheel"])].mean(), rtol=1e-5
  )
  logits = preds["choice"]
  ce = -(logits[np.arange(B), np.asarray(x["choice"])] - np.log(np.exp(logits).sum(-1)))
  np.testing.assert_allclose(per["choice"], ce.sum() / np.asarray(masks["choice"]).sum(), rtol=1e-5)  # NEDS's quirk
  _, per_ex = M.losses(
    {k: jnp.asarray(v) for k, v in preds.items()}, x, masks, valid_neurons=valid, reduction="masked_examples"
  )
  hidden = np.asarray(masks["choice"]).any(1)
  np.testing.assert_allclose(per_ex["choice"], ce[hidden].mean(), rtol=1e-5)
  np.testing.assert_allclose(total, sum(per.values()), rtol=1e-6)
  none = {m: jnp.zeros((B, T), bool) for m in preds}
  assert float(M.losses({k: jnp.asarray(v) for k, v in preds.items()}, x, none, valid_neurons=valid)[0]) == 0.0
  with pytest.raises(ValueError, match="reduction"):
    M.losses(preds, x, masks, valid_neurons=valid, reduction="mean")


def test_deterministic_without_key_and_a_finite_jitted_grad_step():
  model, x, masks = _model(), _inputs(), _masks("self_behaviour")
  a, b = model(x, masks, session=SESSION), model(x, masks, session=SESSION)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  c = model(x, masks, session=SESSION, key=jax.random.PRNGKey(0))
  assert not np.allclose(c["spike"], a["spike"])
  graph, params = nnx.split(model, nnx.Param)
  valid = jnp.ones((B, 7), bool)

  @jax.jit
  def step(params, key):
    def loss(p):
      preds = nnx.merge(graph, p)(x, masks, session=SESSION, key=key)
      return M.losses(preds, x, masks, valid_neurons=valid)[0]

    value, grads = jax.value_and_grad(loss)(params)
    return value, jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads), grads

  value, new, grads = step(params, jax.random.PRNGKey(1))
  assert np.isfinite(float(value))
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert any(np.abs(g).max() > 0 for g in jax.tree.leaves(grads))


def test_hparams_errors_name_the_field():
  with pytest.raises(ValueError, match="config.model.modalities"):
    neds.Hparams(modalities=("spike", "reward"))
  with pytest.raises(ValueError, match="config.model.n_heads"):
    neds.Hparams(width=30, n_heads=4)
  with pytest.raises(ValueError, match="max_bins"):
    short = {k: v[:, : T - 1] if v.ndim > 1 else v for k, v in _inputs().items()}
    _model()(short, {m: jnp.zeros((B, T - 1), bool) for m in M.MODALITIES}, session=0)


# nnx.state paths and shapes of the tiny model (D 32, T 6) for sessions of 5, 7, 3 neurons.
PATHS = {
  "spike": "stitch_in/kernel 3,7,14 stitch_in/bias 3,14 stitch_project/kernel 3,14,32 stitch_out/kernel 3,32,7",
  "wheel": "stitch_in/kernel 3,1,2 stitch_project/kernel 3,2,32 stitch_out/kernel 3,32,1",
  "choice": "stitch_in/kernel 3,1,12 stitch_project/kernel 3,2,32 stitch_out/kernel 3,32,2 token_weights 3,6",
}


def test_parameter_paths():
  state = {"/".join(map(str, p)): v.shape for p, v in nnx.state(_model(), nnx.Param).flat_state()}
  for mod, text in PATHS.items():
    items = text.split()
    for name, shape in zip(items[::2], items[1::2]):
      assert state[f"io/{mod}/{name}"] == tuple(int(s) for s in shape.split(","))
    assert state[f"io/{mod}/session/embedding"] == (3, 32) and state[f"io/{mod}/position/embedding"] == (6, 32)
  assert state["mask_token"] == (32,) and state["layers/0/attn/query/kernel"] == (32, 32)


def test_load_takes_shared_weights_and_matching_session_rows():
  pre = _model(seed=0, sizes=(5, 7), modalities=("spike", "choice", "wheel"))
  new = _model(seed=1, sizes=(5, 7, 9))  # a third session (wider) and two new modalities
  fresh = nnx.state(new, nnx.Param)
  merged = nnx.to_pure_dict(neds.load(fresh, nnx.state(pre, nnx.Param), where="pretrained"))
  p, f = nnx.to_pure_dict(nnx.state(pre, nnx.Param)), nnx.to_pure_dict(fresh)
  np.testing.assert_array_equal(
    merged["layers"][0]["attn"]["query"]["kernel"], p["layers"][0]["attn"]["query"]["kernel"]
  )
  np.testing.assert_array_equal(
    merged["io"]["wheel"]["position"]["embedding"], p["io"]["wheel"]["position"]["embedding"]
  )
  stitch, fresh_stitch = merged["io"]["spike"]["stitch_in"]["kernel"], f["io"]["spike"]["stitch_in"]["kernel"]
  np.testing.assert_array_equal(stitch[:2, :7, :14], p["io"]["spike"]["stitch_in"]["kernel"])  # rows 0, 1 taken
  np.testing.assert_array_equal(stitch[2], fresh_stitch[2])  # the new session stays fresh
  np.testing.assert_array_equal(merged["io"]["choice"]["token_weights"][:2], p["io"]["choice"]["token_weights"])
  np.testing.assert_array_equal(merged["io"]["block"]["stitch_out"]["kernel"], f["io"]["block"]["stitch_out"]["kernel"])
  nnx.update(new, neds.load(fresh, nnx.state(pre, nnx.Param), where="pretrained"))  # a usable model
  assert np.all(np.isfinite(new(_inputs(n=9), _masks("decoding"), session=SESSION)["block"]))
  wide = _model(seed=0, sizes=(5, 7), width=64, n_heads=2, modalities=("spike",))
  with pytest.raises(ValueError, match="pretrained: parameter 'final_norm/bias'"):
    neds.load(fresh, nnx.state(wide, nnx.Param), where="pretrained")
