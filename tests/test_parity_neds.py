"""Parity of models/neds.py (and modalities.losses) with the official NEDS code
(yzhang511/NEDS at 61d2ef6; docs/parity.md, "NEDS").

The PyTorch side runs in the NEDS parity environment (parity/.neds-venv, `make
parity-neds-env`, or the interpreter in $MTM_NEDS_PYTHON) on their source (parity/.neds-src
or $MTM_NEDS_SRC): parity/reference_neds.py builds their MultiModal with random weights and
writes its state dict, inputs, masks, predictions and losses for every masking scheme;
parity/export_torch.py turns the state dict into the .npz mtm_jax.interop reads. Here it
is imported with interop/neds.py and run on the same inputs and masks: relative error
(max |ours - theirs| / max |theirs|) below 1e-5 for every modality's predictions and
loss. Without that environment or source these tests are skipped, with the reason.
"""

import dataclasses
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mtm_jax import modalities as M
from mtm_jax.configs import neds as neds_config
from mtm_jax.interop import neds as neds_interop
from mtm_jax.interop import state_dict
from mtm_jax.models import neds
from mtm_jax.tasks import registry
from tests.conftest import DATASET, STUDY_DATASETS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-5
N_HEADS = 4  # parity/reference_neds.py's HEADS


def _environment():
  python = os.environ.get("MTM_NEDS_PYTHON") or os.path.join(ROOT, "parity", ".neds-venv", "bin", "python")
  source = os.environ.get("MTM_NEDS_SRC") or os.path.join(ROOT, "parity", ".neds-src")
  if not os.path.exists(python):
    pytest.skip("no NEDS parity environment (parity/.neds-venv or $MTM_NEDS_PYTHON): run `make parity-neds-env`")
  if not os.path.isfile(os.path.join(source, "src", "multi_modal", "mm.py")):
    pytest.skip("no NEDS source at 61d2ef6 (parity/.neds-src or $MTM_NEDS_SRC): run `make parity-neds-env`")
  return python, source


def _their(python, script, *args):
  """Runs parity/<script> in the NEDS parity environment."""
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  cmd = [python, os.path.join(ROOT, "parity", script), *args]
  run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, check=False)
  assert run.returncode == 0, run.stderr[-3000:]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """(checkpoint, meta, reference arrays) written by their code."""
  python, source = _environment()
  out = tmp_path_factory.mktemp("neds")
  _their(python, "reference_neds.py", f"--neds_src={source}", f"--out={out}")
  _their(python, "export_torch.py", f"--source={out}/neds_state.pt", f"--out={out}/neds_state.npz")
  with open(out / "meta.json") as f:
    meta = json.load(f)
  return state_dict.load(str(out / "neds_state.npz")), meta, dict(np.load(out / "reference.npz"))


def _io(meta, ref):
  """Our inputs (padding neurons 0, not their -1), session rows and valid neurons."""
  sizes = np.array(list(meta["eid_list"].values()))
  rows = ref["rows"]
  n_max = ref["spike"].shape[-1]
  valid = np.arange(n_max)[None] < sizes[rows][:, None]
  inputs = {
    "spike": np.where(valid[:, None, :], ref["spike"], 0.0).astype(np.float32),
    "choice": ref["choice"].astype(np.int32),
    "block": ref["block"].astype(np.int32),
    "wheel": ref["wheel"],
    "whisker": ref["whisker"],
  }
  return inputs, jnp.asarray(rows), jnp.asarray(valid)


def scheme_errors(model, meta, ref, scheme):
  """{modality: (prediction error, loss error)}, errors relative to their max |value|."""
  inputs, rows, valid = _io(meta, ref)
  masks = {m: jnp.asarray(ref[f"{scheme}/mask/{m}"]) for m in M.MODALITIES}
  preds = model(inputs, masks, session=rows)
  _, per = M.losses(preds, inputs, masks, valid_neurons=valid)
  out = {}
  for m in M.MODALITIES:
    theirs, loss = ref[f"{scheme}/pred/{m}"], float(ref[f"{scheme}/loss/{m}"])
    pred_err = float(np.abs(np.asarray(preds[m]) - theirs).max() / np.abs(theirs).max())
    loss_err = abs(float(per[m]) - loss) / abs(loss) if loss != 0 else abs(float(per[m]))
    out[m] = (pred_err, loss_err)
  return out


SCHEMES = ("encoding", "decoding", "self-spike", "self-behavior", "random_token", "mixed")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_neds_matches_their_code_in_every_scheme(reference, scheme):
  ckpt, meta, ref = reference
  model, unused = neds_interop.convert(ckpt, meta["eid_list"], meta["include_eids"], n_heads=N_HEADS)
  assert unused == []
  errors = scheme_errors(model, meta, ref, scheme)
  print(scheme, errors)
  for m, (pred_err, loss_err) in errors.items():
    assert pred_err < TOLERANCE and loss_err < TOLERANCE, (m, pred_err, loss_err)


def test_without_the_rotary_permutation_or_the_padding_fold_it_fails(reference):
  """Negative controls: interleaved rotary on their q/k layout, and their -1-padded
  neurons read as 0, both move the outputs far beyond the tolerance."""
  ckpt, meta, ref = reference
  plain, _ = neds_interop.convert(
    ckpt, meta["eid_list"], meta["include_eids"], n_heads=N_HEADS, rotary_permutation=False
  )
  assert max(e for e, _ in scheme_errors(plain, meta, ref, "random_token").values()) > 1e-3
  unfolded, _ = neds_interop.convert(ckpt, meta["eid_list"], meta["include_eids"], n_heads=N_HEADS, neuron_pad_value=0)
  assert scheme_errors(unfolded, meta, ref, "decoding")["wheel"][0] > 1e-3  # spikes visible when decoding


def test_import_errors_name_the_tensor(reference):
  ckpt, meta, _ = reference
  name = "encoder.1.attn.key.weight"
  missing = state_dict.TorchCheckpoint({k: v for k, v in ckpt.arrays.items() if k != name}, ckpt.meta, "ckpt.npz")
  with pytest.raises(ValueError, match=name):
    neds_interop.convert(missing, meta["eid_list"], meta["include_eids"], n_heads=N_HEADS)
  eid = next(iter(meta["eid_list"]))
  name = f"encoder_embeddings.wheel.embedder.mod_stitch_encoder.project_dict.{eid}.weight"
  wrong = state_dict.TorchCheckpoint({**ckpt.arrays, name: ckpt.arrays[name][:, :1]}, ckpt.meta, "ckpt.npz")
  with pytest.raises(ValueError, match=name):
    neds_interop.convert(wrong, meta["eid_list"], meta["include_eids"], n_heads=N_HEADS)
  with pytest.raises(ValueError, match="include_eids"):
    neds_interop.convert(ckpt, meta["eid_list"], meta["include_eids"][:3], n_heads=N_HEADS)


def test_imported_weights_round_trip_through_load(reference):
  """Imported, then merged into a fresh model of the same sessions by neds.load: the
  same outputs (every parameter, per-session ones included, is taken)."""
  ckpt, meta, ref = reference
  model, _ = neds_interop.convert(ckpt, meta["eid_list"], meta["include_eids"], n_heads=N_HEADS)
  hp = dataclasses.replace(model.hparams)
  fresh = neds.NEDS(list(meta["eid_list"].values()), hp, rngs=nnx.Rngs(7))
  merged = neds.load(nnx.state(fresh, nnx.Param), nnx.state(model, nnx.Param), where="imported NEDS")
  nnx.update(fresh, merged)
  inputs, rows, _ = _io(meta, ref)
  masks = {m: jnp.asarray(ref[f"mixed/mask/{m}"]) for m in M.MODALITIES}
  a, b = model(inputs, masks, session=rows), fresh(inputs, masks, session=rows)
  for m in M.MODALITIES:
    np.testing.assert_array_equal(a[m], b[m])


# ---- experiments.import_checkpoint --kind=neds -------------------------------------------
IMPORTED = (DATASET, STUDY_DATASETS[0])  # 114 and 134 neurons: their sessions' counts below


@pytest.fixture(scope="module")
def their_run(tmp_path_factory):
  """(folder, meta, reference arrays) of their model for sessions of our two data sets'
  neuron counts and trial length (100 bins), with its trainer checkpoint neds_trainer.pt
  and their eid table written to eids.txt."""
  python, source = _environment()
  out = tmp_path_factory.mktemp("neds_import")
  _their(python, "reference_neds.py", f"--neds_src={source}", f"--out={out}", "--neurons=114,134", "--bins=100")
  with open(out / "meta.json") as f:
    meta = json.load(f)
  (out / "eids.txt").write_text("\n".join(meta["include_eids"]) + "\n")
  (out / "eid_list.json").write_text(json.dumps(meta["eid_list"]))
  return out, meta, dict(np.load(out / "reference.npz"))


def _import(out, workdir, data_dir, **kwargs):
  from experiments import import_checkpoint  # pylint: disable=import-outside-toplevel

  config = neds_config.get_config("tiny")  # its training and evaluation settings; the model is the checkpoint's
  config.eval.split, config.eval.max_masks = "val", 4
  options = dict(datasets=list(IMPORTED), eids_file=str(out / "eids.txt"), n_heads=N_HEADS, config=config)
  options.update(kwargs)
  python, _ = _environment()
  return import_checkpoint.run(
    str(out / "neds_trainer.pt"), "neds", str(workdir), data_dir=data_dir, torch_python=python, **options
  )


def test_their_trainer_checkpoint_imports_predicts_as_their_code_and_evaluates(their_run, study_data_dir, tmp_path):
  out, meta, ref = their_run
  workdir = tmp_path / "imported"
  summary = _import(out, workdir, study_data_dir, session_eids=list(meta["eid_list"]))
  assert summary["unused"] == [] and summary["architecture"]["max_bins"] == 100
  trained = registry.load_trained(str(workdir))
  assert trained.names == list(IMPORTED) and trained.n_neurons == 134
  model = nnx.merge(trained.graphdef, trained.params)
  errors = {(s, m): e for s in SCHEMES for m, (e, _) in scheme_errors(model, meta, ref, s).items()}
  print("imported: largest prediction error", max(errors.values()))
  assert max(errors.values()) < TOLERANCE, errors
  run = subprocess.run(
    [sys.executable, "-m", "experiments.evaluate", f"--workdir={workdir}"],
    capture_output=True,
    text=True,
    timeout=600,
    env={**os.environ, "PYTHONPATH": ROOT},
    check=False,
  )
  assert run.returncode == 0, run.stderr[-3000:]
  with open(workdir / "metrics.json") as f:
    metrics = json.load(f)
  assert np.isfinite(metrics["co_smoothing_bps"]) and set(metrics["sessions"]) == set(IMPORTED)


def test_an_unknown_eid_or_a_wrong_neuron_count_is_named_and_writes_nothing(their_run, study_data_dir, tmp_path):
  out, meta, _ = their_run
  eids = list(meta["eid_list"])
  with pytest.raises(ValueError, match="--session_eids gives eid 'not-an-eid'"):
    _import(out, tmp_path / "w", study_data_dir, session_eids=[eids[0], "not-an-eid"])
  # Swapped: both fit their 134-neuron tables; their eid list tells the counts apart.
  with pytest.raises(ValueError, match=rf"'{DATASET}' \(eid {eids[1]}\): 114 neurons, their eid list has 134"):
    _import(out, tmp_path / "w", study_data_dir, session_eids=eids[::-1], eid_list_file=str(out / "eid_list.json"))
  assert not os.path.exists(tmp_path / "w")
