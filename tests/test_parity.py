"""Parity with the reference implementations in PyTorch (docs/parity.md).

The PyTorch side runs in its own Python 3.11 environment (parity/.venv, `make
parity-env`; or the interpreter in $MTM_PARITY_PYTHON): parity/make_reference.py builds
the MtM authors' NDT1 (a faithful minimal definition, parity/reference_ndt1.py) and
torch_brain's POYO with random weights, and writes their state dicts, inputs and
outputs. Here they are converted with mtm_jax.interop and run on the same inputs:
relative error (max |ours - theirs| / max |theirs|) below 1e-5 in float32. Without that
environment these tests are skipped, with the reason.
"""

import os
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mtm_jax.tasks import registry
from mtm_jax import masking
from mtm_jax.datasets.events import vocabulary
from mtm_jax.interop import ndt1 as ndt1_interop
from mtm_jax.interop import poyo as poyo_interop
from mtm_jax.interop import state_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-5


def _parity_python() -> str | None:
  python = os.environ.get("MTM_PARITY_PYTHON") or os.path.join(ROOT, "parity", ".venv", "bin", "python")
  return python if os.path.exists(python) else None


def reference_run(tmp_path_factory, script: str, name: str) -> str:
  """Runs parity/<script> --out=<a new folder> in the PyTorch parity environment (the test
  is skipped without one); returns the folder."""
  python = _parity_python()
  if python is None:
    pytest.skip("no PyTorch parity environment (parity/.venv or $MTM_PARITY_PYTHON): run `make parity-env`")
  out = tmp_path_factory.mktemp(name)
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  result = subprocess.run(
    [python, os.path.join(ROOT, "parity", script), f"--out={out}"],
    capture_output=True,
    text=True,
    timeout=600,
    env=env,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return str(out)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """Directory of the reference cases written by parity/make_reference.py."""
  return reference_run(tmp_path_factory, "make_reference.py", "parity")


def _case(reference, name):
  return state_dict.load(os.path.join(reference, f"{name}.npz")), dict(
    np.load(os.path.join(reference, f"{name}.io.npz"))
  )


def _rel(ours, theirs) -> float:
  return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def _ndt1_errors(ckpt, io, **config_overrides) -> dict:
  meta = ckpt.meta
  arch = ndt1_interop.architecture(ckpt)
  config = ndt1_interop.model_config(arch)
  config.model.update(config_overrides)
  neurons = meta["num_neurons"]
  model, unused = ndt1_interop.convert(ckpt, config, neurons, meta["session_rows"] if arch["use_session"] else None)
  assert unused == ([] if not arch["stitch_dim"] else ["decoder.0.bias", "decoder.0.weight"])
  forward = nnx.jit(lambda m, x, p, s, c: m(x, prompt=p, session=s, causal=c))  # one compilation
  errors = {}
  for s, n in enumerate(neurons):
    for mode in meta["modes"]:
      x = np.pad(io[f"input/{s}/{mode}"], ((0, 0), (0, 0), (0, max(neurons) - n)))  # zero-padded neurons
      prompt = masking.SCHEMES.index(mode) if mode in masking.SCHEMES else 0
      out = forward(model, jnp.asarray(x), jnp.int32(prompt), jnp.int32(s), jnp.bool_(mode == "causal"))
      errors[f"{s}/{mode}"] = _rel(np.asarray(out)[..., :n], io[f"output/{s}/{mode}"])
  return errors


@pytest.mark.parametrize("case", ["ndt1_mtm", "ndt1_temporal", "ndt1_stitch", "ndt1_deep", "ndt1_wide"])
def test_ndt1_matches_the_reference_in_every_masking_mode(reference, case):
  """Every size converts (ndt1_deep: 4 layers, no row of ndt1.PRESETS; ndt1_wide: the demo row)."""
  ckpt, io = _case(reference, case)
  errors = _ndt1_errors(ckpt, io)
  expected = {"ndt1_mtm": 4, "ndt1_temporal": 2, "ndt1_stitch": 12, "ndt1_deep": 4, "ndt1_wide": 2}[case]
  assert len(errors) == expected
  assert max(errors.values()) < TOLERANCE, errors


def test_ndt1_default_causal_mode_differs_from_the_reference(reference):
  """Our default keeps future bins out of the special tokens in causal mode; the
  reference's leak is the parity option (special_tokens_see_future)."""
  ckpt, io = _case(reference, "ndt1_mtm")
  errors = _ndt1_errors(ckpt, io, special_tokens_see_future=False)
  assert errors["0/causal"] > 1e-4
  assert max(v for k, v in errors.items() if k != "0/causal") < TOLERANCE


def _poyo_model(ckpt, **config_overrides):
  config = poyo_interop.model_config(poyo_interop.architecture(ckpt), "behaviour")
  config.model.update(config_overrides)
  records = poyo_interop.default_sessions(ckpt)
  model, unused = poyo_interop.convert(ckpt, config, records)
  assert unused == []
  return model, records


def _poyo_outputs(ckpt, io, **config_overrides):
  model, records = _poyo_model(ckpt, **config_overrides)
  # Their token indices -> our rows (ours group the units by session).
  ours = vocabulary.Vocabulary.from_records(records)
  unit_row = {u: i + 1 for i, u in enumerate(ours.unit_ids)}
  session_row = {s: i + 1 for i, s in enumerate(ours.session_ids)}
  unit_row["NA"] = session_row["NA"] = 0
  units = np.array([unit_row[w] for w in ckpt.meta["vocab"]["unit_emb.vocab"]])
  sessions = np.array([session_row[w] for w in ckpt.meta["vocab"]["session_emb.vocab"]])
  batch = {k[len("input/") :]: v for k, v in io.items() if k.startswith("input/")}
  batch["unit_index"] = units[batch["unit_index"]].astype(np.int32)
  batch["session_index"] = sessions[batch["session_index"]].astype(np.int32)
  for k in ("token_type", "output_task"):
    batch[k] = batch[k].astype(np.int32)
  out = np.asarray(nnx.jit(lambda m, b: m(b))(model, {k: jnp.asarray(v) for k, v in batch.items()})["behaviour"])
  mask = batch["output_mask"]
  assert not mask.all() and not batch["input_mask"].all()  # padding on both sides
  return out, mask


@pytest.mark.parametrize("case", ["poyo_tiny", "poyo_small"])
def test_poyo_matches_torch_brain_with_padding(reference, case):
  ckpt, io = _case(reference, case)
  out, mask = _poyo_outputs(ckpt, io)
  assert _rel(out[mask], io["output/behaviour"][mask]) < TOLERANCE
  assert np.all(out[~mask] == 0.0)


@pytest.mark.parametrize("case", ["poyo_tiny", "poyo_small"])
def test_poyo_matches_torch_brains_own_pipeline_with_float64_timestamps(reference, case):
  """torch_brain's POYO.tokenize + collate give float64 timestamps, and float64 rotary
  angles: torch_brain_batch computes the angles as it does (float32 angles of the same
  batch are off by ~1e-4 relative)."""
  ckpt, _ = _case(reference, case)
  io = dict(np.load(os.path.join(reference, f"{case}.tokenized.npz")))
  theirs = io.pop("output/behaviour")
  inputs = {k[len("input/") :]: v for k, v in io.items()}
  assert inputs["input_timestamps"].dtype == np.float64 and inputs["output_timestamps"].dtype == np.float64
  model, records = _poyo_model(ckpt)
  batch, angles = poyo_interop.torch_brain_batch(ckpt, records, inputs, model.frequencies())
  mask = batch["output_mask"]
  out = nnx.jit(lambda m, b, a: m(b, angles=a))(model, batch, angles)["behaviour"]
  assert _rel(np.asarray(out)[mask], theirs[mask]) < TOLERANCE
  latent_timestamps = inputs["latent_timestamps"].astype(np.float32)
  float32 = nnx.jit(lambda m, b, t: m(b, latent_timestamps=t))(model, batch, latent_timestamps)["behaviour"]
  assert _rel(np.asarray(float32)[mask], theirs[mask]) > 1e-5


def test_poyo_computed_rotary_frequencies_are_not_torch_brains(reference):
  """torch_brain's float32 frequencies differ from ours by a few ulps, enough to break
  parity: the converter takes them from the checkpoint."""
  ckpt, io = _case(reference, "poyo_tiny")
  out, mask = _poyo_outputs(ckpt, io, rotary_frequencies=())
  assert _rel(out[mask], io["output/behaviour"][mask]) > 1e-5


def _import(reference, tmp_path, case, kind, code_path=None, **kwargs):
  """Imports the trainer's file of `case` (.pt: the authors' pickled module, needing their
  code, reference/mtm_checkout/src) into tmp_path/case."""
  from experiments import import_checkpoint  # pylint: disable=import-outside-toplevel

  source = os.path.join(reference, f"{case}.{'pt' if kind == 'ndt1' else 'ckpt'}")
  workdir = str(tmp_path / case)
  code_path = os.path.join(reference, "mtm_checkout", "src") if code_path is None else code_path
  import_checkpoint.run(source, kind, workdir, torch_python=_parity_python(), code_path=code_path, **kwargs)
  return workdir


def test_trainer_checkpoints_import_like_their_state_dicts(reference, data_dir, tmp_path, monkeypatch):
  """The reference trainers' own files (.pt with a pickled NDT1; torch_brain's Lightning
  .ckpt) go through export in the PyTorch environment and import to the same weights,
  from a working directory that is not the authors' checkout (their code opens
  data/target_eids.txt relative to it when it is imported)."""
  monkeypatch.chdir(tmp_path)
  from mtm_jax.datasets import pipeline  # pylint: disable=import-outside-toplevel
  from tests.conftest import DATASET  # pylint: disable=import-outside-toplevel

  ckpt, _ = _case(reference, "poyo_tiny")
  workdir = _import(reference, tmp_path, "poyo_tiny", "poyo", task="behaviour")
  trained = registry.load_trained(workdir)
  config = poyo_interop.model_config(poyo_interop.architecture(ckpt), "behaviour")
  model, _ = poyo_interop.convert(ckpt, config, poyo_interop.default_sessions(ckpt))
  jax.tree.map(
    np.testing.assert_array_equal, nnx.to_pure_dict(trained.params), nnx.to_pure_dict(nnx.state(model, nnx.Param))
  )
  assert trained.config.model.window_length == 1.0 and trained.config.model.attn_dropout == 0.2

  # NDT1: the pickled module carries its number of heads; ours is a 13-neuron session.
  ckpt, _ = _case(reference, "ndt1_temporal")
  n = pipeline.session_info(DATASET, data_dir).n_neurons
  assert n != 13
  with pytest.raises(ValueError, match="single-session model of 13 neurons"):
    _import(reference, tmp_path, "ndt1_temporal", "ndt1", datasets=[DATASET], data_dir=data_dir)


def test_authors_pickle_needs_their_code_with_a_clear_error(reference, data_dir, tmp_path, monkeypatch):
  from tests.conftest import DATASET  # pylint: disable=import-outside-toplevel

  monkeypatch.chdir(tmp_path)
  kwargs = dict(datasets=[DATASET], data_dir=data_dir)
  with pytest.raises(RuntimeError, match="needs --code_path"):
    _import(reference, tmp_path, "ndt1_temporal", "ndt1", code_path="", **kwargs)
  with pytest.raises(RuntimeError, match="No module named 'models'"):
    _import(reference, tmp_path, "ndt1_temporal", "ndt1", code_path=str(tmp_path), **kwargs)
  # Their code, but in a checkout without its eid list: the import-time read fails.
  src = tmp_path / "checkout" / "src"
  shutil.copytree(os.path.join(reference, "mtm_checkout", "src"), src)
  with pytest.raises(RuntimeError, match="target_eids.txt"):
    _import(reference, tmp_path, "ndt1_temporal", "ndt1", code_path=str(src), **kwargs)


def test_authors_pickle_of_any_size_imports_and_evaluates_as_the_reference(reference, data_dir, tmp_path, monkeypatch):
  """The authors' .pt of a 4-layer NDT1 (heads from the pickled module), imported from
  another working directory onto our 114-neuron session, gives the reference's outputs
  through the evaluation's predictor."""
  from mtm_jax.evaluation import ndt1 as ndt1_eval  # pylint: disable=import-outside-toplevel
  from tests.conftest import DATASET  # pylint: disable=import-outside-toplevel

  monkeypatch.chdir(tmp_path)
  ckpt, io = _case(reference, "ndt1_deep")
  workdir = _import(
    reference,
    tmp_path,
    "ndt1_deep",
    "ndt1",
    datasets=[DATASET],
    data_dir=data_dir,
    session_rows=[str(r) for r in ckpt.meta["session_rows"]],
  )
  trained = registry.load_trained(workdir)
  assert trained.config.model.size == "64x4x4x128" and trained.n_neurons == ckpt.meta["num_neurons"][0]
  for mode in ("neuron", "inter-region", "intra-region"):
    x = io[f"input/0/{mode}"]
    rates = ndt1_eval.unmasked_log_rates(trained, x, prompt=mode, session=0)
    assert _rel(rates, io[f"output/0/{mode}"]) < TOLERANCE, mode
