"""NDT1: shapes, causal attention, tokens, loss, hyper-parameters, loading pretrained weights."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mtm_jax.tasks import ndt1 as ndt1_task
from mtm_jax.models import attention, ndt1


def _model(**kw):
  args = dict(
    width=32,
    n_layers=2,
    n_heads=2,
    mlp_width=64,
    dropout=0.1,
    attention_dropout=0.1,
    embed_dropout=0.1,
    rngs=nnx.Rngs(0),
  )
  args.update(kw)
  return ndt1.NDT1(args.pop("sessions", 7), **args)


def _spikes(seed=0, shape=(2, 100, 7)):
  return jnp.asarray(np.random.default_rng(seed).poisson(1.0, shape), jnp.float32)


def test_output_shape_and_determinism():
  model, x = _model(), _spikes()
  out = model(x)
  assert out.shape == (2, 100, 7)
  np.testing.assert_array_equal(out, model(x))  # no key: no dropout
  a = model(x, key=jax.random.key(1))
  b = model(x, key=jax.random.key(1))
  c = model(x, key=jax.random.key(2))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_causal_mode_ignores_future_bins():
  model, x = _model(), _spikes()
  y = x.at[:, 60:].set(5.0)
  out_x, out_y = model(x, causal=True), model(y, causal=True)
  np.testing.assert_allclose(out_x[:, :60], out_y[:, :60], rtol=1e-5, atol=1e-5)
  assert not np.allclose(out_x[:, 60:], out_y[:, 60:])
  # Bidirectional mode does see them.
  assert not np.allclose(model(x)[:, :60], model(y)[:, :60])


def test_reference_causal_leak_is_an_option():
  """special_tokens_see_future=True reproduces the reference's leak through the special
  tokens (from the second layer on, past bins see the future)."""
  model, x = _model(special_tokens_see_future=True), _spikes()
  y = x.at[:, 60:].set(5.0)
  assert not np.allclose(model(x, causal=True)[:, :60], model(y, causal=True)[:, :60])


def test_prompt_and_session_tokens_change_the_output():
  model, x = _model(sessions=(7, 7, 7), stitch_dim=8), _spikes()
  base = model(x, prompt=0, session=0)
  assert not np.allclose(base, model(x, prompt=2, session=0))
  assert not np.allclose(base, model(x, prompt=0, session=1))
  plain = _model(sessions=(7, 7, 7), stitch_dim=8, use_prompt=False, use_session=False)
  assert plain.n_special == 0 and plain(x).shape == base.shape


def test_wrong_neuron_count_is_a_clear_error():
  with pytest.raises(ValueError, match="8 neurons, the model was built for 7"):
    _model()(_spikes(shape=(1, 100, 8)))


def test_masked_poisson_nll():
  rng = np.random.default_rng(0)
  log_rates = rng.normal(size=(2, 5, 3))
  spikes = rng.poisson(1.0, size=(2, 5, 3)).astype(float)
  targets = rng.uniform(size=(2, 5, 3)) < 0.4
  total, count = ndt1_task.masked_poisson_nll(jnp.asarray(log_rates), jnp.asarray(spikes), jnp.asarray(targets))
  expected = sum(np.exp(l) - y * l for l, y, m in zip(log_rates.ravel(), spikes.ravel(), targets.ravel()) if m)
  assert float(total) == pytest.approx(expected, rel=1e-5)
  assert int(count) == targets.sum()


def test_paper_size_parameter_count():
  model = ndt1.NDT1(668, width=512, n_layers=5, n_heads=8, mlp_width=1024, rngs=nnx.Rngs(0))
  n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  # 5 layers x (4 x 512^2 + 2 x 512 x 1024 + biases, norms) + embedding + readout
  layer = 4 * (512 * 512 + 512) + (512 * 1024 + 1024) + (1024 * 512 + 512) + 4 * 512
  embed = 668 * 1336 + 1336 + 1336 * 512 + 512 + 100 * 512 + 4 * 512 + 512
  assert n == 5 * layer + embed + 2 * 512 + 512 * 668 + 668


@pytest.mark.parametrize("rate", [0.1, 0.2, 0.4])
def test_dropout_keeps_the_rate_and_the_mean(rate):
  x = jnp.ones((64, 3, 1001), jnp.bfloat16)
  y = np.asarray(attention.dropout(x, rate, jax.random.key(3)), np.float32)
  assert y.shape == x.shape and attention.dropout(x, rate, jax.random.key(3)).dtype == jnp.bfloat16
  kept = y != 0
  assert abs(kept.mean() - (1 - rate)) < 4 * np.sqrt(rate * (1 - rate) / y.size)
  np.testing.assert_allclose(y[kept], np.float32(jnp.bfloat16(1 / (1 - rate))), rtol=1e-2)
  assert abs(y.mean() - 1.0) < 0.01
  assert attention.dropout(x, rate, None) is x
  np.testing.assert_array_equal(
    attention.dropout(x, rate, jax.random.key(3)), attention.dropout(x, rate, jax.random.key(3))
  )
  with pytest.raises(ValueError, match="dropout: expected a rate"):
    attention.dropout(x, 1.0, jax.random.key(0))


def test_hparams_presets_config_and_errors():
  from mtm_jax.configs import ndt1 as ndt1_config  # pylint: disable=g-import-not-at-top

  assert sorted(ndt1.PRESETS) == ["demo", "mini", "paper", "tiny"]
  config = ndt1_config.get_config("demo,stitch")
  hp = ndt1.Hparams.from_config(config.model)
  assert hp == dataclasses.replace(ndt1.PRESETS["demo"], stitch_dim=256, dropout=0.2, attention_dropout=0.0)
  assert hp.size == "demo" and ndt1.from_config(config, [5, 6], rngs=nnx.Rngs(0)).hparams == hp
  config.model.size = "48x3x6x96"
  assert dataclasses.astuple(ndt1.Hparams.from_config(config.model))[:4] == (48, 3, 6, 96)
  model = ndt1.NDT1(7, ndt1.PRESETS["tiny"], max_bins=20, rngs=nnx.Rngs(0))
  assert model.hparams == dataclasses.replace(ndt1.PRESETS["tiny"], max_bins=20) and model.max_bins == 20
  with pytest.raises(ValueError, match="config.model.dropout: must be in"):
    dataclasses.replace(ndt1.PRESETS["tiny"], dropout=1.0)
  with pytest.raises(ValueError, match="config.model.size: width, layers"):
    ndt1.Hparams(width=0, n_layers=1, n_heads=1, mlp_width=4)
  with pytest.raises(dataclasses.FrozenInstanceError):
    ndt1.PRESETS["tiny"].width = 4


def test_load_takes_the_shared_parameters_and_leaves_the_session_layers_fresh():
  hp = dataclasses.replace(ndt1.PRESETS["tiny"], stitch_dim=8)
  pre = nnx.to_pure_dict(nnx.state(ndt1.NDT1([5, 9], hp, rngs=nnx.Rngs(1)), nnx.Param))
  init = nnx.to_pure_dict(nnx.state(ndt1.NDT1([6], hp, rngs=nnx.Rngs(2)), nnx.Param))
  out = ndt1.load(init, pre, where="pre")
  for name in out:
    source = init if name in ndt1.SESSION_PARAMS else pre
    jax.tree.map(np.testing.assert_array_equal, out[name], source[name])
  wider = nnx.to_pure_dict(nnx.state(ndt1.NDT1([6], dataclasses.replace(hp, width=64), rngs=nnx.Rngs(2)), nnx.Param))
  with pytest.raises(ValueError, match=r"pre: parameter 'embed_project/bias' has shape \(32,\), this model needs"):
    ndt1.load(wider, pre, where="pre")
  with pytest.raises(ValueError, match="pre: has no parameter 'prompt/embedding'"):
    ndt1.load(init, {k: v for k, v in pre.items() if k != "prompt"}, where="pre")
