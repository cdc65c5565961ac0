"""Converters to and from the reference implementations' PyTorch names, without PyTorch:
round trips, errors, T-Fixup, and imported checkpoints through evaluation and fine-tuning.
(The comparison with PyTorch itself is tests/test_parity.py.)"""

import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx

from experiments import import_checkpoint
from mtm_jax.tasks import registry, ndt1 as ndt1_task
from mtm_jax.configs import ndt1 as ndt1_config
from mtm_jax.configs import poyo as poyo_config
from mtm_jax.datasets import pipeline
from mtm_jax.datasets.events import vocabulary
from mtm_jax.evaluation import ndt1 as ndt1_eval
from mtm_jax.interop import ndt1 as ndt1_interop
from mtm_jax.interop import poyo as poyo_interop
from mtm_jax.interop import state_dict
from mtm_jax.models import ndt1, poyo, rotary

from tests.conftest import DATASET, STUDY_DATASETS


def _pure(model):
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _assert_same(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def _stitch_model(neurons, seed=0):
  config = ndt1_config.get_config("tiny,stitch")
  model = ndt1.from_config(config, list(neurons), rngs=nnx.Rngs(seed))
  # The reference keys per-session layers by neuron count: equal counts share them.
  for table in (model.stitch_in, model.stitch_out):
    for s, n in enumerate(neurons):
      first = list(neurons).index(n)
      table.kernel[...] = table.kernel[...].at[s].set(table.kernel[...][first])
      table.bias[...] = table.bias[...].at[s].set(table.bias[...][first])
  return config, model


def test_ndt1_round_trip_through_the_authors_names():
  neurons, rows = [5, 9, 5], [3, 0, 1]
  config, model = _stitch_model(neurons)
  ckpt = ndt1_interop.to_torch(_pure(model), neurons, session_rows=rows, n_session_rows=4, n_heads=2)
  for name in (
    "encoder.stitcher.stitcher_dict.5.weight",
    "stitch_decoder.stitch_decoder_dict.9.bias",
    "encoder.embedder.embed_prompt.weight",
    "encoder.layers.0.attn.out_proj.weight",
    "encoder.layers.0.mlp.up_proj.bias",
    "encoder.out_norm.weight",
  ):
    assert name in ckpt
  assert ckpt.get("encoder.embedder.embed_session.weight").shape == (4, 32)
  arch = ndt1_interop.architecture(ckpt)
  assert (arch["size"], arch["stitch_dim"], arch["stitched_neurons"]) == ("tiny", 16, [5, 9])
  back, unused = ndt1_interop.convert(ckpt, ndt1_interop.model_config(arch, config), neurons, rows)
  _assert_same(_pure(back), _pure(model))
  assert unused == ["decoder.0.bias", "decoder.0.weight"]  # the reference's unused decoder under stitching
  assert back.special_tokens_see_future  # the reference's causal mode


def test_ndt1_conversion_errors_name_what_is_wrong():
  neurons = [5, 9]
  config, model = _stitch_model(neurons)
  ckpt = ndt1_interop.to_torch(_pure(model), neurons, session_rows=[0, 1], n_heads=2)
  config = ndt1_interop.model_config(ndt1_interop.architecture(ckpt), config)
  with pytest.raises(ValueError, match="6 neurons"):
    ndt1_interop.convert(ckpt, config, [5, 6], [0, 1])
  with pytest.raises(ValueError, match="give each session's row"):
    ndt1_interop.convert(ckpt, config, neurons, None)
  with pytest.raises(ValueError, match=r"rows \[7\] are outside"):
    ndt1_interop.convert(ckpt, config, neurons, [0, 7])
  with pytest.raises(ValueError, match="has 2 attention heads, but 3 were given"):
    ndt1_interop.architecture(ckpt, n_heads=3)
  headless = state_dict.TorchCheckpoint(ckpt.arrays, {}, "authors.npz")
  with pytest.raises(ValueError, match=r"authors.npz: the number of attention heads .* give it \(--n_heads\)"):
    ndt1_interop.architecture(headless)
  with pytest.raises(ValueError, match="width 32 is not a multiple of 3 attention heads"):
    ndt1_interop.architecture(headless, n_heads=3)
  _, other = _stitch_model([5, 5], seed=1)
  other.stitch_in.bias[...] = other.stitch_in.bias[...].at[1].add(1.0)
  with pytest.raises(ValueError, match="keys its per-session layers by neuron count"):
    ndt1_interop.to_torch(_pure(other), [5, 5], session_rows=[0, 1])


def _random_ndt1(neurons, dims, seed):
  """An NDT1 (prompt and session tokens, no stitching) of dims (width, layers, heads, MLP
  width), every parameter random (LayerNorms too)."""
  width, n_layers, n_heads, mlp_width = dims
  model = ndt1.NDT1(
    neurons,
    width=width,
    n_layers=n_layers,
    n_heads=n_heads,
    mlp_width=mlp_width,
    stitch_dim=0,
    max_bins=100,
    embed_mult=2,
    dropout=0.0,
    attention_dropout=0.0,
    embed_dropout=0.0,
    use_prompt=True,
    use_session=True,
    special_tokens_see_future=True,
    rngs=nnx.Rngs(seed),
  )
  state = nnx.state(model, nnx.Param)
  rng = np.random.default_rng(seed)
  nnx.replace_by_pure_dict(
    state, jax.tree.map(lambda x: rng.normal(0, 0.3, x.shape).astype(np.float32), nnx.to_pure_dict(state))
  )
  nnx.update(model, state)
  return model


@pytest.mark.parametrize(
  "dims, size",
  [
    ((32, 4, 2, 64), "32x4x2x64"),  # 4 layers: no row of PRESETS
    ((128, 2, 4, 256), "demo"),
  ],
)  # a row of PRESETS
def test_ndt1_of_any_size_converts_from_its_state_dict(dims, size):
  """Layers, widths and MLP width come from the state dict, heads from the pickled module
  (or the caller): sizes that are no row of PRESETS convert too."""
  model = _random_ndt1(17, dims, seed=dims[1])
  ckpt = ndt1_interop.to_torch(_pure(model), [17], session_rows=[1], n_session_rows=3, n_heads=dims[2])
  arch = ndt1_interop.architecture(ckpt)
  assert arch["size"] == size and ndt1.size_dims(arch["size"]) == dims
  back, unused = ndt1_interop.convert(ckpt, ndt1_interop.model_config(arch), [17], [1])
  assert unused == []
  _assert_same(_pure(back), _pure(model))
  spikes = np.random.default_rng(0).poisson(1.0, (2, 24, 17)).astype(np.float32)
  for causal in (False, True):
    _assert_same(back(spikes, prompt=1, session=0, causal=causal), model(spikes, prompt=1, session=0, causal=causal))
  headless = state_dict.TorchCheckpoint(ckpt.arrays, {})
  assert ndt1_interop.architecture(headless, n_heads=dims[2])["size"] == size
  gap = state_dict.TorchCheckpoint(
    {k: v for k, v in ckpt.arrays.items() if not k.startswith("encoder.layers.0.")}, ckpt.meta, "authors.npz"
  )
  with pytest.raises(ValueError, match=rf"encoder layers \[1[0-9, ]*\] are not numbered 0..{dims[1] - 2}"):
    ndt1_interop.architecture(gap)


def test_ndt1_explicit_size_is_read_back_and_checked():
  assert ndt1.size_dims("paper") == dataclasses.astuple(ndt1.PRESETS["paper"])[:4]
  assert ndt1.size_dims(ndt1.size_name(48, 3, 6, 96)) == (48, 3, 6, 96)
  assert ndt1.size_name(*dataclasses.astuple(ndt1.PRESETS["mini"])[:4]) == "mini"
  with pytest.raises(ValueError, match=r"config.model.size: unknown '48x3x6'"):
    ndt1.size_dims("48x3x6")


def test_t_fixup_scales_the_blocks_as_the_reference():
  make = lambda fixup: ndt1.NDT1(7, width=32, n_layers=3, n_heads=2, mlp_width=64, fixup_init=fixup, rngs=nnx.Rngs(0))
  plain, fixed = make(False), make(True)
  factor = 0.67 * 3**-0.25
  for a, b in zip(plain.layers, fixed.layers):
    for name, f in (("out", factor), ("value", factor * 2**0.5), ("query", 1.0), ("key", 1.0)):
      np.testing.assert_allclose(getattr(b.attn, name).kernel[...], f * getattr(a.attn, name).kernel[...], rtol=1e-6)
    np.testing.assert_allclose(b.mlp.up.kernel[...], factor * a.mlp.up.kernel[...], rtol=1e-6)
    np.testing.assert_allclose(b.mlp.down.kernel[...], factor * a.mlp.down.kernel[...], rtol=1e-6)
  _assert_same(plain.embed_spikes.kernel[...], fixed.embed_spikes.kernel[...])


POYO_RECORDS = [
  dict(name="a", session_id="a", unit_ids=["a/u0", "a/u1", "a/u2"]),
  dict(name="b", session_id="b", unit_ids=["b/u0", "b/u1"]),
]


def _tiny_poyo(seed=0):
  config = poyo_config.get_config("tiny")
  vocab = vocabulary.Vocabulary.from_records(POYO_RECORDS)
  return config, poyo.from_config(config, len(vocab.unit_ids), len(vocab.session_ids), rngs=nnx.Rngs(seed))


def test_poyo_round_trip_reorders_the_vocabularies():
  config, model = _tiny_poyo()
  ckpt = poyo_interop.to_torch(model, POYO_RECORDS)
  # torch_brain's vocabularies may list the units in any order: shuffle them.
  order = [0, 4, 1, 5, 3, 2]  # "NA" stays at row 0
  words = ckpt.meta["vocab"]["unit_emb.vocab"]
  arrays = dict(ckpt.arrays, **{"unit_emb.weight": ckpt.get("unit_emb.weight")[order]})
  meta = json.loads(json.dumps(ckpt.meta))
  meta["vocab"]["unit_emb.vocab"] = [words[i] for i in order]
  shuffled = state_dict.TorchCheckpoint(arrays, meta)
  assert ckpt.get("enc_atn.to_kv.weight").shape == (2 * 64, 32)  # fused key/value, one head of 64
  assert ckpt.get("proc_layers.0.0.to_qkv.weight").shape == (3 * 128, 32)
  arch = poyo_interop.architecture(shuffled)
  assert arch["size"] == "tiny" and arch["dim_out"] == 2
  np.testing.assert_array_equal(arch["rotary_frequencies"], model.frequencies())
  back_config = poyo_interop.model_config(arch, "hand_velocity", base=config)
  assert poyo_interop.default_sessions(ckpt) == POYO_RECORDS  # units by "<session>/" prefix
  back, unused = poyo_interop.convert(shuffled, back_config, POYO_RECORDS)
  assert unused == []
  _assert_same(_pure(back), _pure(model))
  missing = [dict(POYO_RECORDS[0], unit_ids=["a/u0", "a/u9"])]
  with pytest.raises(ValueError, match="a/u9"):
    poyo_interop.convert(shuffled, back_config, missing)


def test_host_angles_keep_the_precision_of_float64_timestamps():
  """torch_brain multiplies float64 timestamps by its float32 frequencies in float64; the
  float32 angle of the same time is off by up to ~4e-3 rad at 2 pi / 1e-4 s."""
  t = np.random.default_rng(0).random((3, 200))  # float64 seconds in a 1 s window
  freqs = rotary.rotary_frequencies()
  exact = t[..., None] * freqs.astype(np.float64)
  host = rotary.host_angles(t, freqs)
  assert host.dtype == np.float32 and host.shape == (3, 200, 16)
  for fn in (np.cos, np.sin):
    assert np.max(np.abs(fn(host.astype(np.float64)) - fn(exact))) < 1e-6
    assert np.max(np.abs(fn(np.asarray(rotary.rotary_angles(t, freqs), np.float64)) - fn(exact))) > 1e-4
  t32 = t.astype(np.float32)  # float32 timestamps: exactly the model's own float32 angles
  np.testing.assert_array_equal(rotary.host_angles(t32, freqs), np.asarray(rotary.rotary_angles(t32, freqs)))


def _their_batch(ckpt, rng):
  """A collated batch as torch_brain's pipeline gives it (its indices, float64 times), of
  two windows of the checkpoint's sessions a and b."""
  units = ckpt.meta["vocab"]["unit_emb.vocab"]
  sessions = ckpt.meta["vocab"]["session_emb.vocab"]
  b, l, q, n_lat = 2, 16, 8, 8 * 2  # 8 latent steps of 2 latents (tiny)
  unit_index = np.zeros((b, l), np.int64)
  mask = np.zeros((b, l), bool)
  for i, (session, n) in enumerate((("a", 11), ("b", 16))):
    own = [units.index(u) for u in units if u.startswith(f"{session}/")]
    unit_index[i, :n], mask[i, :n] = rng.choice(own, n), True
  return dict(
    input_unit_index=unit_index,
    input_timestamps=np.where(mask, rng.random((b, l)), 0.0),
    input_token_type=np.zeros((b, l), np.int64),
    input_mask=mask,
    latent_index=np.tile(np.arange(2), (b, n_lat // 2)),
    latent_timestamps=np.tile(np.repeat((np.arange(8) + 0.5) * 0.125, 2), (b, 1)),
    session_index=np.array([sessions.index("a"), sessions.index("b")]),
    output_timestamps=rng.random((b, q)),
    output_mask=np.ones((b, q), bool),
  )


def test_torch_brain_batches_map_to_ours_with_their_precision():
  config, model = _tiny_poyo(seed=2)
  ckpt = poyo_interop.to_torch(model, POYO_RECORDS)
  theirs = _their_batch(ckpt, np.random.default_rng(1))
  ours, angles = poyo_interop.torch_brain_batch(ckpt, POYO_RECORDS, theirs, model.frequencies())
  vocab = ckpt.meta["vocab"]
  ids = ("NA",) + vocabulary.Vocabulary.from_records(POYO_RECORDS).unit_ids  # our rows
  np.testing.assert_array_equal(
    [[ids[r] for r in row] for row in ours["unit_index"]],
    [[vocab["unit_emb.vocab"][r] for r in row] for row in theirs["input_unit_index"]],
  )
  np.testing.assert_array_equal(ours["session_index"], [1, 2])
  np.testing.assert_array_equal(angles["tokens"], rotary.host_angles(theirs["input_timestamps"], model.frequencies()))
  assert angles["latents"].shape == (2, 16, 16) and angles["queries"].shape == (2, 8, 16)
  out = model(ours, angles=angles)["hand_velocity"]
  assert out.shape == (2, 8, 2) and np.all(np.isfinite(out))
  # float32 timestamps: the same numbers as the model's own float32 angles.
  theirs32 = dict(
    theirs, **{k: theirs[k].astype(np.float32) for k in ("input_timestamps", "latent_timestamps", "output_timestamps")}
  )
  ours32, angles32 = poyo_interop.torch_brain_batch(ckpt, POYO_RECORDS, theirs32, model.frequencies())
  _assert_same(model(ours32, angles=angles32), model(ours32, latent_timestamps=theirs32["latent_timestamps"]))
  with pytest.raises(ValueError, match=r"angles\['queries'\] must have shape \(2, 8, 16\)"):
    model(ours, angles=dict(angles, queries=angles["tokens"]))
  with pytest.raises(ValueError, match="outside the sessions"):
    poyo_interop.torch_brain_batch(ckpt, POYO_RECORDS[:1], theirs, model.frequencies())
  with pytest.raises(ValueError, match="latent_index"):
    poyo_interop.torch_brain_batch(
      ckpt, POYO_RECORDS, dict(theirs, latent_index=theirs["latent_index"][:, ::-1]), model.frequencies()
    )


def test_imported_ndt1_loads_as_evaluation_and_finetuning_load_it(data_dir, tmp_path):
  """An authors'-layout NDT1-stitch (random weights) imported, then loaded the way
  experiments.evaluate (loop.load_trained + the evaluation predictor) and
  experiments.finetune (finetune_config, load_trained, graft_shared) load a model."""
  info = pipeline.session_info(DATASET, data_dir)
  base = ndt1_config.get_config("tiny,stitch")
  base.eval.head_steps = 0
  _, model = _stitch_model([info.n_neurons], seed=3)
  source = str(tmp_path / "authors.npz")
  state_dict.save(
    ndt1_interop.to_torch(_pure(model), [info.n_neurons], session_rows=[2], n_session_rows=3, n_heads=2), source
  )
  workdir = str(tmp_path / "imported")
  summary = import_checkpoint.run(
    source, "ndt1", workdir, datasets=[DATASET], data_dir=data_dir, session_rows=["2"], config=base
  )
  assert summary["session_rows"] == [2] and summary["architecture"]["size"] == "tiny"
  assert json.loads((tmp_path / "imported" / "import.json").read_text())["unused"] == summary["unused"]
  with pytest.raises(FileExistsError):
    import_checkpoint.run(source, "ndt1", workdir, datasets=[DATASET], data_dir=data_dir, session_rows=["2"])

  trained = registry.load_trained(workdir)
  assert trained.config.model.special_tokens_see_future and trained.config.model.fixup_init
  assert trained.names == [DATASET] and trained.step == 0 and trained.config.eval.head_steps == 0
  _assert_same(nnx.to_pure_dict(trained.params), _pure(model))
  spikes = pipeline.load_split(DATASET, data_dir, "test", ("spikes",))["spikes"][:4].astype(np.float32)
  rates = ndt1_eval.unmasked_log_rates(trained, spikes, prompt="neuron", session=0)
  np.testing.assert_allclose(rates, np.asarray(model(spikes, prompt=0, session=0)), rtol=1e-5, atol=1e-5)

  config = ndt1_config.get_config("tiny,stitch")
  config.data.datasets = STUDY_DATASETS[0]
  config = registry.get("ndt1").finetune_config(config, workdir)
  assert config.model.to_dict() == trained.config.model.to_dict()
  fresh = ndt1.from_config(config, [11], rngs=nnx.Rngs(0))
  grafted = ndt1_task.graft_shared(nnx.state(fresh, nnx.Param), trained.params)
  _assert_same(nnx.to_pure_dict(grafted)["layers"], _pure(model)["layers"])


def test_imported_ndt1_of_a_size_without_preset_loads(data_dir, tmp_path):
  """A 4-layer checkpoint without its number of heads: refused with the flag to give, then
  imported with it; the workdir's config holds the explicit size and loads."""
  info = pipeline.session_info(DATASET, data_dir)
  model = _random_ndt1(info.n_neurons, (32, 4, 2, 64), seed=7)
  source = str(tmp_path / "authors.npz")
  state_dict.save(ndt1_interop.to_torch(_pure(model), [info.n_neurons], session_rows=[0], n_session_rows=2), source)
  base = ndt1_config.get_config("tiny")
  kwargs = dict(datasets=[DATASET], data_dir=data_dir, session_rows=["0"], config=base)
  with pytest.raises(ValueError, match="--n_heads"):
    import_checkpoint.run(source, "ndt1", str(tmp_path / "refused"), **kwargs)
  assert not (tmp_path / "refused").exists()
  workdir = str(tmp_path / "imported")
  summary = import_checkpoint.run(source, "ndt1", workdir, n_heads=2, **kwargs)
  assert summary["architecture"]["size"] == "32x4x2x64"
  trained = registry.load_trained(workdir)
  assert trained.config.model.size == "32x4x2x64"
  _assert_same(nnx.to_pure_dict(trained.params), _pure(model))


def test_imported_poyo_loads_as_evaluation_and_finetuning_load_it(tmp_path):
  base = poyo_config.get_config("tiny")
  _, model = _tiny_poyo(seed=5)
  source = str(tmp_path / "torch_brain.npz")
  state_dict.save(poyo_interop.to_torch(model, POYO_RECORDS), source)
  workdir = str(tmp_path / "imported")
  summary = import_checkpoint.run(source, "poyo", workdir, scale=["2.0", "3.0"], config=base)
  assert summary["sessions"] == ["a", "b"]
  trained = registry.load_trained(workdir)
  np.testing.assert_array_equal(trained.scale, [2.0, 3.0])
  assert trained.vocab.unit_ids == tuple(u for r in POYO_RECORDS for u in r["unit_ids"])
  _assert_same(nnx.to_pure_dict(trained.params), _pure(model))
  config = registry.get("poyo").finetune_config(base, workdir, "unit_id")
  assert list(config.model.rotary_frequencies) == model.frequencies().tolist()
  with pytest.raises(ValueError, match="cannot hold"):
    import_checkpoint.run(source, "ndt1", str(tmp_path / "other"), config=base)


def test_poyo_mp_size_converts_both_ways():
  """The 11.8M POYO-MP / POYO-1 configuration ("large"): torch_brain names and back."""
  config = poyo_config.get_config("large")
  model = nnx.eval_shape(lambda: poyo.from_config(config, 5, 2, rngs=nnx.Rngs(0)))  # no init: random numbers below
  rng = np.random.default_rng(0)
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(
    state, jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(np.float32), nnx.to_pure_dict(state))
  )
  nnx.update(model, state)
  records = [
    dict(name="a", session_id="a", unit_ids=["a/0", "a/1"]),
    dict(name="b", session_id="b", unit_ids=["b/0", "b/1", "b/2"]),
  ]
  ckpt = poyo_interop.to_torch(model, records)
  assert len(ckpt.names("proc_layers.")) == 24 * 11
  arch = poyo_interop.architecture(ckpt)
  assert arch["size"] == "large" and poyo.count_params(model) > 11e6
  back, unused = poyo_interop.convert(ckpt, poyo_interop.model_config(arch, "hand_velocity", base=config), records)
  assert unused == []
  _assert_same(_pure(back), _pure(model))
