"""Imports a PyTorch checkpoint of a reference implementation as an mtm_jax workdir.

  # the MtM authors' NDT1-stitch (their trainer's model_best.pt), on our built sessions
  python -m experiments.import_checkpoint --kind=ndt1 --source=model_best.pt \
      --code_path=<their checkout>/src --datasets=ibl_binned/<eid>,... --eids=<their target_eids.txt> \
      --workdir=runs/mtm_imported
  # torch_brain's POYO (a Lightning .ckpt); sessions from its vocabularies
  python -m experiments.import_checkpoint --kind=poyo --source=poyo_mp.ckpt --workdir=runs/poyo_imported
  # NEDS (their trainer's model_best.pt or a state dict), on our built sessions (eid = session_id)
  python -m experiments.import_checkpoint --kind=neds --source=model_best.pt --n_heads=8 \
      --datasets=ibl_binned/<eid>,... --eids=<their data/train_eids.txt>,<their data/test_eids.txt> \
      --workdir=runs/neds_imported

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
NEDS: the architecture and modalities are read from the state dict, --n_heads is needed;
--datasets are our sessions, each the checkpoint's eid of its session_id (or of its
--session_eids entry); their session-embedding table's eids from --eids (their eid files,
comma-separated, in order) or each session's row from --session_rows; --eid_list (their
meta_data["eid_list"] as JSON) checks the neuron counts exactly (mtm_jax/tasks/neds_import.py).
See docs/parity.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import tempfile

from absl import app, flags, logging
import ml_collections
from ml_collections import config_flags

from mtm_jax import files
from mtm_jax.interop import state_dict
from mtm_jax.tasks import registry
from mtm_jax.training import checkpoint, config_checks, entry, workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TORCH_PYTHON = os.path.join("parity", ".venv", "bin", "python")

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Optional base config (training/evaluation settings); its model is replaced by the checkpoint's."
)
_SOURCE = flags.DEFINE_string(
  "source", None, ".npz (parity/export_torch.py), .pt/.ckpt, or encoder.bin+decoder.bin dir."
)
FAMILIES = {"ndt1": "ndt1", "poyo": "poyo", "neds": "neds"}  # --kind: the authors' model -> our config.family
_KIND = flags.DEFINE_enum("kind", None, sorted(FAMILIES), "Model family of the checkpoint.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory to write the mtm_jax checkpoint to.")
_DATASETS = flags.DEFINE_list("datasets", [], "Our sessions (TFDS names), in model-row order.")
_DATA_DIR = flags.DEFINE_string("data_dir", "data/tfds", "TFDS data_dir of --datasets.")
_SESSION_ROWS = flags.DEFINE_list(
  "session_rows", [], "NDT1, NEDS: each session's row in the authors' session(-embedding) table."
)
_EIDS = flags.DEFINE_string(
  "eids",
  None,
  "NDT1: file of the authors' eids, one per line (their session table order); NEDS: their eid files, "
  "comma-separated (data/train_eids.txt,data/test_eids.txt).",
)
_SESSION_EIDS = flags.DEFINE_list(
  "session_eids", [], "NEDS: each --datasets session's eid in the checkpoint (default: its session_id)."
)
_EID_LIST = flags.DEFINE_string(
  "eid_list", None, "NEDS: JSON file {eid: neuron count} of their run (meta_data['eid_list']), to check the counts."
)
_N_HEADS = flags.DEFINE_integer(
  "n_heads",
  None,
  "NDT1, NEDS: attention heads, if the checkpoint does not tell (a state dict does not; the authors' pickled module does).",
)
flags.DEFINE_alias("heads", "n_heads")
_TASK = flags.DEFINE_string("task", "hand_velocity", "POYO: name of the readout task.")
_SCALE = flags.DEFINE_list("scale", [], "POYO: behaviour divisor per output dimension (default ones).")
_CODE_PATH = flags.DEFINE_string(
  "code_path", "", "Folder with the authors' code, to unpickle whole-module checkpoints."
)
_TORCH_PYTHON = flags.DEFINE_string("torch_python", DEFAULT_TORCH_PYTHON, "Python of the PyTorch environment.")
flags.mark_flags_as_required(["source", "kind", "workdir"])


def export_to_npz(source: str, out: str, torch_python: str = DEFAULT_TORCH_PYTHON, code_path: str = "") -> str:
  """Runs parity/export_torch.py in the PyTorch environment: `source` -> `out` (.npz)."""
  python = torch_python if os.path.isabs(torch_python) else os.path.join(ROOT, torch_python)
  if not os.path.exists(python):
    raise FileNotFoundError(
      f"--torch_python: {python} does not exist; create the PyTorch environment with "
      "`make parity-env`, or export the checkpoint to .npz with parity/export_torch.py"
    )
  cmd = [python, os.path.join(ROOT, "parity", "export_torch.py"), f"--source={source}", f"--out={out}"]
  if code_path:
    cmd.append(f"--code_path={code_path}")
  result = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if result.returncode != 0:
    raise RuntimeError(f"exporting {source} failed:\n{result.stderr[-3000:]}")
  return out


def run(
  source: str,
  kind: str,
  workdir: str,
  *,
  datasets=(),
  data_dir: str = "data/tfds",
  session_rows=(),
  eids_file: str | None = None,
  session_eids=(),
  eid_list_file: str | None = None,
  n_heads: int | None = None,
  task: str = "hand_velocity",
  scale=(),
  torch_python: str = DEFAULT_TORCH_PYTHON,
  code_path: str = "",
  config: ml_collections.ConfigDict | None = None,
) -> dict:
  """The program without flags: converts `source` and writes the workdir; returns the summary.
  `config`: base config (its family must be `kind`'s); its model is the checkpoint's."""
  if kind not in FAMILIES:
    raise ValueError(f"--kind: expected one of {sorted(FAMILIES)}, got {kind!r}")
  family = registry.get(FAMILIES[kind])
  if config is not None and config_checks.family_of(config) != family.family:
    raise ValueError(f"--config: a {config.get('family')!r} config cannot hold a {kind} checkpoint")
  if not os.path.exists(source):
    raise FileNotFoundError(f"--source: {source} does not exist")
  workdir = os.path.abspath(os.path.expanduser(workdir))
  with tempfile.TemporaryDirectory() as tmp:
    npz = (
      source
      if source.endswith(".npz")
      else export_to_npz(source, os.path.join(tmp, "export.npz"), torch_python, code_path)
    )
    ckpt = dataclasses.replace(state_dict.load(npz), path=source)  # errors name the source
  with workdir_lib.claimed(workdir):  # a run or another import there: files.InUseError
    if checkpoint.latest_step(workdir) is not None:
      raise FileExistsError(f"{workdir}: already holds checkpoints; import into a new workdir")
    options = dict(session_rows=list(session_rows), eids_file=eids_file, n_heads=n_heads, task=task, scale=list(scale))
    options.update(session_eids=list(session_eids), eid_list_file=eid_list_file)
    summary = family.import_reference(ckpt, workdir, list(datasets), data_dir, options, config)
    summary["source"] = os.path.abspath(source)
    with files.atomic_write(os.path.join(workdir, "import.json"), encoding="utf-8") as f:
      json.dump(summary, f, indent=1)
  if summary["unused"]:
    logging.warning("tensors of %s not used: %s", source, summary["unused"])
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  summary = run(
    _SOURCE.value,
    _KIND.value,
    _WORKDIR.value,
    datasets=_DATASETS.value,
    data_dir=_DATA_DIR.value,
    session_rows=_SESSION_ROWS.value,
    eids_file=_EIDS.value,
    session_eids=_SESSION_EIDS.value,
    eid_list_file=_EID_LIST.value,
    n_heads=_N_HEADS.value,
    task=_TASK.value,
    scale=_SCALE.value,
    torch_python=_TORCH_PYTHON.value,
    code_path=_CODE_PATH.value,
    config=_CONFIG.value,
  )
  print(
    f"imported {summary['kind']} ({summary['architecture']['size']}) into {_WORKDIR.value}; "
    f"unused tensors: {summary['unused'] or 'none'}"
  )


if __name__ == "__main__":
  entry.run(main)
