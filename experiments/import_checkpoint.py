"""Imports a PyTorch checkpoint of a reference implementation as an mtm_jax workdir.

  # the MtM authors' NDT1-stitch (their trainer's model_best.pt), on our built sessions
  python -m experiments.import_checkpoint --kind=ndt1 --source=model_best.pt \
      --code_path=<their checkout>/src --datasets=ibl_binned/<eid>,... --eids=<their target_eids.txt> \
      --workdir=runs/mtm_imported
  # torch_brain's POYO (a Lightning .ckpt); sessions from its vocabularies
  python -m experiments.import_checkpoint --kind=poyo --source=poyo_mp.ckpt --workdir=runs/poyo_imported

Writes <workdir>/checkpoints/0 (Orbax: state, config, sessions), which experiments.evaluate,
experiments.finetune (--pretrained) and experiments.pretrain (resuming) load unchanged, and
<workdir>/import.json (what was converted, unused tensors).

--source is an .npz written by parity/export_torch.py, or a .pt/.ckpt file (or a directory
with encoder.bin and decoder.bin) that is first exported with that script in the PyTorch
environment (--torch_python, default parity/.venv/bin/python; `make parity-env`).

NDT1: the architecture is read from the state dict (any size), the number of heads from the
pickled module or --n_heads. --datasets names our built sessions (ibl_binned) in model-row
order; their neuron counts select the checkpoint's per-session layers. With a session token, each session's
row in the authors' session table comes from --session_rows, or from --eids (their eid
list; a session's eid is its session_id). POYO: sessions are the checkpoint's (units by
their "<session>/" prefix), or --datasets (built spike_events sets whose unit ids are in
the checkpoint's vocabulary); --task names the readout, --scale the behaviour divisor.
See docs/parity.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import tempfile

from absl import app, flags, logging
import jax
import ml_collections
from ml_collections import config_flags

from mtm_jax.tasks import ndt1 as ndt1_task
from mtm_jax.datasets import pipeline
from mtm_jax.datasets.events import tfds as tfds_lib
from mtm_jax.datasets.events import vocabulary
from mtm_jax.interop import ndt1 as ndt1_interop
from mtm_jax.interop import poyo as poyo_interop
from mtm_jax.interop import state_dict
from mtm_jax.training import checkpoint, config_checks, entry, optimizer, step as step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TORCH_PYTHON = os.path.join("parity", ".venv", "bin", "python")

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Optional base config (training/evaluation settings); its model is replaced by the checkpoint's.")
_SOURCE = flags.DEFINE_string("source", None, ".npz (parity/export_torch.py), .pt/.ckpt, or encoder.bin+decoder.bin dir.")
_KIND = flags.DEFINE_enum("kind", None, ["ndt1", "poyo"], "Model family of the checkpoint.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory to write the mtm_jax checkpoint to.")
_DATASETS = flags.DEFINE_list("datasets", [], "Our sessions (TFDS names), in model-row order.")
_DATA_DIR = flags.DEFINE_string("data_dir", "data/tfds", "TFDS data_dir of --datasets.")
_SESSION_ROWS = flags.DEFINE_list("session_rows", [], "NDT1: each session's row in the authors' session table.")
_EIDS = flags.DEFINE_string("eids", None, "NDT1: file of the authors' eids, one per line (their session table order).")
_N_HEADS = flags.DEFINE_integer("n_heads", None, "NDT1: attention heads, if the checkpoint does not tell "
                                "(a state dict does not; the authors' pickled module does).")
flags.DEFINE_alias("heads", "n_heads")
_TASK = flags.DEFINE_string("task", "hand_velocity", "POYO: name of the readout task.")
_SCALE = flags.DEFINE_list("scale", [], "POYO: behaviour divisor per output dimension (default ones).")
_CODE_PATH = flags.DEFINE_string("code_path", "", "Folder with the authors' code, to unpickle whole-module checkpoints.")
_TORCH_PYTHON = flags.DEFINE_string("torch_python", DEFAULT_TORCH_PYTHON, "Python of the PyTorch environment.")
flags.mark_flags_as_required(["source", "kind", "workdir"])


def export_to_npz(source: str, out: str, torch_python: str = DEFAULT_TORCH_PYTHON, code_path: str = "") -> str:
  """Runs parity/export_torch.py in the PyTorch environment: `source` -> `out` (.npz)."""
  python = torch_python if os.path.isabs(torch_python) else os.path.join(ROOT, torch_python)
  if not os.path.exists(python):
    raise FileNotFoundError(f"--torch_python: {python} does not exist; create the PyTorch environment with "
                            "`make parity-env`, or export the checkpoint to .npz with parity/export_torch.py")
  cmd = [python, os.path.join(ROOT, "parity", "export_torch.py"), f"--source={source}", f"--out={out}"]
  if code_path:
    cmd.append(f"--code_path={code_path}")
  result = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if result.returncode != 0:
    raise RuntimeError(f"exporting {source} failed:\n{result.stderr[-3000:]}")
  return out


def _session_rows(arch: dict, infos, rows: list[str], eids_file: str | None) -> list[int] | None:
  if not arch["use_session"]:
    return None
  if rows:
    return [int(r) for r in rows]
  if eids_file:
    with open(eids_file, encoding="utf-8") as f:
      eids = [line.strip() for line in f if line.strip()]
    missing = [i.session_id for i in infos if i.session_id not in eids]
    if missing:
      raise ValueError(f"--eids: {eids_file} does not list the sessions {missing}")
    return [eids.index(i.session_id) for i in infos]
  raise ValueError(f"the checkpoint has a session table of {arch['n_session_rows']} rows: give each session's row "
                   "with --session_rows or --eids")


def import_ndt1(ckpt: state_dict.TorchCheckpoint, workdir: str, datasets: list[str], data_dir: str, *,
                session_rows: list[str] = (), eids_file: str | None = None, n_heads: int | None = None,
                base: ml_collections.ConfigDict | None = None) -> dict:
  """Writes the NDT1 checkpoint `ckpt` for our sessions `datasets` to `workdir`; returns a summary."""
  if not datasets:
    raise ValueError("--datasets: an NDT1 import needs our sessions (built ibl_binned data sets), in row order")
  arch = ndt1_interop.architecture(ckpt, n_heads)
  config = ndt1_interop.model_config(arch, base)
  config.data.datasets, config.data.data_dir = ",".join(datasets), os.path.abspath(data_dir)
  config_checks.ndt1(config)
  infos = [pipeline.session_info(n, config.data.data_dir) for n in datasets]
  rows = _session_rows(arch, infos, list(session_rows), eids_file)
  model, unused = ndt1_interop.convert(ckpt, config, [i.n_neurons for i in infos], rows)
  records = ndt1_task.session_records(datasets, infos)
  _save(workdir, model, optimizer.make_optimizer(config), config, records)
  return dict(kind="ndt1", architecture=arch, session_rows=rows, unused=unused)


def import_poyo(ckpt: state_dict.TorchCheckpoint, workdir: str, datasets: list[str], data_dir: str, *,
                task: str, scale: list[str] = (), base: ml_collections.ConfigDict | None = None) -> dict:
  """Writes the POYO checkpoint `ckpt` (sessions: its own, or `datasets`) to `workdir`."""
  arch = poyo_interop.architecture(ckpt)
  config = poyo_interop.model_config(arch, task, [float(s) for s in scale] if scale else None, base)
  if datasets:
    config.data.datasets, config.data.data_dir = ",".join(datasets), os.path.abspath(data_dir)
    sessions = [tfds_lib.load_event_session(n, config.data.data_dir, ("train",)) for n in datasets]
    records = vocabulary.build_vocabulary(sessions).records(datasets)
  else:
    records = poyo_interop.default_sessions(ckpt)
    config.data.datasets = ",".join(r["name"] for r in records)
  model, unused = poyo_interop.convert(ckpt, config, records)
  from flax import nnx  # pylint: disable=import-outside-toplevel
  _save(workdir, model, optimizer.make_poyo_optimizer(config, nnx.state(model, nnx.Param)), config, records)
  return dict(kind="poyo", architecture=arch, sessions=[r["session_id"] for r in records], unused=unused)


def _save(workdir: str, model, tx, config, records) -> None:
  from flax import nnx  # pylint: disable=import-outside-toplevel

  if checkpoint.latest_step(workdir) is not None:
    raise FileExistsError(f"{workdir}: already holds checkpoints; import into a new workdir")
  state = step_lib.init_state(nnx.state(model, nnx.Param), tx)
  mngr = checkpoint.manager(workdir)
  key = jax.random.key(config.seed, impl=config.train.get("prng_impl", None))  # the run key a training from here uses
  checkpoint.save(mngr, 0, state, config, records, key=key, data_state=None)
  mngr.wait_until_finished()
  mngr.close()


def run(source: str, kind: str, workdir: str, *, datasets=(), data_dir: str = "data/tfds", session_rows=(),
        eids_file: str | None = None, n_heads: int | None = None, task: str = "hand_velocity", scale=(),
        torch_python: str = DEFAULT_TORCH_PYTHON, code_path: str = "",
        config: ml_collections.ConfigDict | None = None) -> dict:
  """The program without flags: converts `source` and writes the workdir; returns the summary.
  `config`: base config (its family must be `kind`'s); its model is the checkpoint's."""
  if config is not None and (config.get("family") == "poyo") != (kind == "poyo"):
    raise ValueError(f"--config: a {config.get('family')!r} config cannot hold a {kind} checkpoint")
  if not os.path.exists(source):
    raise FileNotFoundError(f"--source: {source} does not exist")
  workdir = os.path.abspath(os.path.expanduser(workdir))
  with tempfile.TemporaryDirectory() as tmp:
    npz = source if source.endswith(".npz") else export_to_npz(source, os.path.join(tmp, "export.npz"),
                                                                 torch_python, code_path)
    ckpt = dataclasses.replace(state_dict.load(npz), path=source)  # errors name the source
  if kind == "ndt1":
    summary = import_ndt1(ckpt, workdir, list(datasets), data_dir, session_rows=list(session_rows),
                          eids_file=eids_file, n_heads=n_heads, base=config)
  elif kind == "poyo":
    summary = import_poyo(ckpt, workdir, list(datasets), data_dir, task=task, scale=list(scale), base=config)
  else:
    raise ValueError(f"--kind: expected ndt1 or poyo, got {kind!r}")
  summary["source"] = os.path.abspath(source)
  with open(os.path.join(workdir, "import.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1)
  if summary["unused"]:
    logging.warning("tensors of %s not used: %s", source, summary["unused"])
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  summary = run(_SOURCE.value, _KIND.value, _WORKDIR.value, datasets=_DATASETS.value, data_dir=_DATA_DIR.value,
                session_rows=_SESSION_ROWS.value, eids_file=_EIDS.value, n_heads=_N_HEADS.value, task=_TASK.value,
                scale=_SCALE.value, torch_python=_TORCH_PYTHON.value, code_path=_CODE_PATH.value, config=_CONFIG.value)
  print(f"imported {summary['kind']} ({summary['architecture']['size']}) into {_WORKDIR.value}; "
        f"unused tensors: {summary['unused'] or 'none'}")


if __name__ == "__main__":
  entry.run(main)
