"""`experiments.import_checkpoint --kind=neds` without PyTorch: a NEDS state dict in their
names (the .npz parity/export_torch.py writes, built here with random tensors for one of
our sessions) becomes a workdir that loads with the checkpoint's weights and runs; every
bad input is a clear error that leaves no workdir. (Their code's outputs on an imported
workdir: tests/test_parity_neds.py.)"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import import_checkpoint
from mtm_jax import modalities as M
from mtm_jax.interop import neds as neds_interop, state_dict
from mtm_jax.tasks import registry
from tests import run_checks
from tests.conftest import DATASET, STUDY_DATASETS

WIDTH, LAYERS, HEADS, MLP, T = 16, 1, 2, 32, 100  # T: the fixture's bins
EMB = neds_interop.EMB


def neds_state_dict(eids: dict, n_table: int, seed: int = 0) -> dict:
  """{their tensor name: random array} of a NEDS MultiModal ("mm", stitching) for sessions
  eids {eid: neurons} and a session-embedding table of n_table rows."""
  rng = np.random.default_rng(seed)
  n_max, d, out = max(eids.values()), WIDTH, {}
  for m in M.MODALITIES:
    n_in, hidden, tok, n_out = {
      M.SPIKE: (n_max, 2 * n_max, 2 * n_max, n_max),
      **{k: (1, 2, 2, 1) for k in M.DYNAMIC},
      **{k: (1, 2 * T, 2, M.CLASSES[k]) for k in M.STATIC},
    }[m]
    base, enc = f"{EMB}.{m}", f"{EMB}.{m}.embedder.mod_stitch_encoder"
    shapes = {
      f"{base}.embedder.mod_emb.weight": (len(M.MODALITIES), d),
      f"{base}.embedder.pos_embed.weight": (T, d),
      f"{base}.embedder.session_emb.weight": (n_table, d),
    }
    for e in eids:
      for prefix, (o, i) in (
        (f"{enc}.stitcher_dict.{e}", (hidden, n_in)),
        (f"{enc}.project_dict.{e}", (d, tok)),
        (f"{base}.mod_stitcher_proj_dict.stitch_decoder_dict.{e}", (n_out, d)),
      ):
        shapes.update({f"{prefix}.weight": (o, i), f"{prefix}.bias": (o,)})
      if m in M.STATIC:
        shapes[f"{base}.mod_static_weight_dict.{e}"] = (T,)
    out.update({k: rng.normal(size=s).astype(np.float32) * 0.3 for k, s in shapes.items()})
  for layer in range(LAYERS):
    p = f"encoder.{layer}"
    for name, shape in (
      ("attn.query", (d, d)),
      ("attn.key", (d, d)),
      ("attn.value", (d, d)),
      ("attn.out_proj", (d, d)),
    ):
      out.update({f"{p}.{name}.weight": rng.normal(size=shape) * 0.3, f"{p}.{name}.bias": rng.normal(size=d) * 0.1})
    for name, (o, i) in (("mlp.up_proj", (MLP, d)), ("mlp.down_proj", (d, MLP))):
      out.update({f"{p}.{name}.weight": rng.normal(size=(o, i)) * 0.3, f"{p}.{name}.bias": np.zeros(o)})
    for ln in ("ln1", "ln2"):
      out.update({f"{p}.{ln}.weight": 1 + 0.1 * rng.normal(size=d), f"{p}.{ln}.bias": 0.1 * rng.normal(size=d)})
  out.update({"encoder_norm.weight": np.ones(d), "encoder_norm.bias": np.zeros(d)})
  out["mask_token"] = rng.normal(size=(1, 1, d))
  return {k: np.asarray(v, np.float32) for k, v in out.items()}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """(.npz of a NEDS state dict for the fixture's session, eid = its session_id, table row
  1 of 3; the session's eid)."""
  eid = DATASET.split("/")[1]
  path = str(tmp_path_factory.mktemp("neds_src") / "neds_state.npz")
  state_dict.save(state_dict.TorchCheckpoint(neds_state_dict({eid: 114}, 3), {"source": "test"}), path)
  return path, eid


def _import(source, workdir, data_dir, **kwargs):
  kwargs = {"datasets": [DATASET], "data_dir": data_dir, "n_heads": HEADS, "session_rows": ["1"], **kwargs}
  return import_checkpoint.run(source, "neds", str(workdir), **kwargs)


def test_a_state_dict_imports_as_a_loadable_workdir(source, data_dir, tmp_path):
  path, eid = source
  summary = _import(path, tmp_path / "w", data_dir)
  assert summary["kind"] == "neds" and summary["unused"] == [] and summary["eids"] == [eid]
  assert summary["architecture"]["size"] == f"{WIDTH}x{LAYERS}x{HEADS}x{MLP}" and summary["session_rows"] == [1]
  trained = registry.load_trained(str(tmp_path / "w"))
  assert trained.names == [DATASET] and trained.step == 0
  assert set(trained.records[0]["present"]) == set(M.MODALITIES) and "wheel" in trained.records[0]["stats"]
  ckpt = state_dict.load(path)
  expected, _ = neds_interop.convert(ckpt, {eid: 114}, ["a", eid, "b"], n_heads=HEADS)
  ours, theirs = run_checks.flat(trained.params), run_checks.flat(nnx.state(expected, nnx.Param))
  assert ours.keys() == theirs.keys()
  for name in ours:
    np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
  model = nnx.merge(trained.graphdef, trained.params)
  inputs = {M.SPIKE: jnp.ones((2, T, 114)), **{m: jnp.ones((2, T)) for m in M.DYNAMIC}}
  inputs.update({m: jnp.ones(2, jnp.int32) for m in M.STATIC})
  masks = {m: jnp.zeros((2, T), bool).at[:, ::3].set(True) for m in M.MODALITIES}
  preds = model(inputs, masks, session=jnp.zeros(2, jnp.int32))
  assert preds[M.SPIKE].shape == (2, T, 114) and all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(preds))


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(n_heads=None), "--n_heads"),
    (dict(session_eids=["nope"]), "--session_eids gives eid 'nope'"),
    (dict(session_rows=[]), "--eids .* or each session's row with --session_rows"),
    (dict(session_rows=["3"]), r"--session_rows: expected distinct rows in \[0, 3\)"),
    (dict(datasets=[]), "--datasets"),
  ],
)
def test_bad_inputs_are_clear_errors_and_write_nothing(source, data_dir, tmp_path, kwargs, message):
  with pytest.raises(ValueError, match=message):
    _import(source[0], tmp_path / "w", data_dir, **kwargs)
  assert not os.path.exists(tmp_path / "w")


def test_neuron_counts_and_eid_files_are_checked(source, study_data_dir, tmp_path):
  path, eid = source
  with pytest.raises(ValueError, match=r"'ibl_binned/synthetic_007' \(eid .*\): 134 neurons, .* spike tables hold 114"):
    _import(path, tmp_path / "w", study_data_dir, datasets=[STUDY_DATASETS[0]], session_eids=[eid])
  (tmp_path / "eids.json").write_text(f'{{"{eid}": 113}}')
  with pytest.raises(ValueError, match=r"'ibl_binned/synthetic_000' \(eid .*\): 114 neurons, their eid list has 113"):
    _import(path, tmp_path / "w", study_data_dir, eid_list_file=str(tmp_path / "eids.json"))
  (tmp_path / "train.txt").write_text("x\ny\n")
  with pytest.raises(ValueError, match="lists 2 eids; the checkpoint's session-embedding table has 3 rows"):
    _import(path, tmp_path / "w", study_data_dir, session_rows=[], eids_file=str(tmp_path / "train.txt"))
  (tmp_path / "test.txt").write_text(f"{eid}\n")
  files = f"{tmp_path / 'train.txt'},{tmp_path / 'test.txt'}"
  summary = _import(path, tmp_path / "w", study_data_dir, session_rows=[], eids_file=files)
  assert summary["session_rows"] == [2]


def test_a_checkpoint_of_another_kind_is_named(data_dir, tmp_path):
  path = str(tmp_path / "other.npz")
  state_dict.save(state_dict.TorchCheckpoint({"encoder.layers.0.ln1.weight": np.ones(4, np.float32)}, {}), path)
  with pytest.raises(ValueError, match="not a NEDS"):
    _import(path, tmp_path / "w", data_dir)
  assert not os.path.exists(tmp_path / "w")


def test_an_imported_workdir_fine_tunes_on_a_new_session(source, study_data_dir, tmp_path):
  """--pretrained=<imported workdir>: the imported architecture, its shared weights kept by
  unit identification, a fresh session row for the new session."""
  from mtm_jax.configs import neds as neds_config  # pylint: disable=import-outside-toplevel
  from mtm_jax.training import trainer  # pylint: disable=import-outside-toplevel

  _import(source[0], tmp_path / "imported", study_data_dir)
  task = registry.get("neds")
  config = neds_config.get_config("tiny")
  config.data.datasets, config.data.data_dir = STUDY_DATASETS[0], study_data_dir
  config.train.steps = config.train.eval_every = config.train.checkpoint_every = 2
  config.eval.split = "val"
  config = task.finetune_config(config, str(tmp_path / "imported"), "unit_id")
  assert (config.model.width, config.model.n_layers, config.model.mlp_width) == (WIDTH, LAYERS, MLP)
  trainer.train(task, config, str(tmp_path / "ft"))
  pre = run_checks.flat(registry.load_trained(str(tmp_path / "imported")).params)
  ft = registry.load_trained(str(tmp_path / "ft"))
  after = run_checks.flat(ft.params)
  assert ft.names == [STUDY_DATASETS[0]] and ft.step == 2
  for name in ("layers/0/attn/query/kernel", "mask_token", "io/spike/position/embedding"):
    np.testing.assert_array_equal(after[name], pre[name], err_msg=name)  # unit_id: shared weights as imported
  assert after["io/spike/stitch_in/kernel"].shape[1] == 134  # the new session's own table
