"""Exports a PyTorch checkpoint to a torch-free .npz that mtm_jax.interop reads.

Runs in the parity environment (Python 3.11 + torch; `make parity-env`):

  parity/.venv/bin/python parity/export_torch.py --source=model_best.pt --out=model.npz \
      [--code_path=<checkout of the MtM authors' repository>/src]

Sources understood:
- a torch_brain / Lightning checkpoint (.ckpt): {"state_dict": {"model.<name>": ...},
  "hyper_parameters": {"model": {...}}}; the hyper-parameters are kept;
- the MtM authors' trainer checkpoint (model_<name>.pt): {"model": <NDT1 module>, "epoch"};
  unpickling the module needs their code importable: --code_path=<their src folder>. Their
  `models/ndt1.py` opens `data/target_eids.txt` by a relative path when it is imported, so
  the unpickling runs with the working directory set to their checkout root (see
  `checkout_root`), from wherever this script is started;
- NEDS's trainer checkpoint (model_<name>.pt): {"epoch", "model": <state dict>, "optimizer",
  "lr_sched"}; the model's state dict is kept;
- a directory holding their encoder.bin and decoder.bin (state dicts);
- a bare state dict or an nn.Module.

The .npz holds one float array per tensor of the state dict, under its PyTorch name, and
`__meta__`: JSON with "source", "hparams" (if any), "vocab" ({state-dict name: words in
index order} for torch_brain's InfiniteVocabEmbedding), "attributes" (n_heads of the
NDT1 attention, read from a pickled module) and "skipped" (entries that are not tensors).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import sys

import numpy as np
import torch


def _jsonable(obj):
  if isinstance(obj, dict):
    return {str(k): _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if isinstance(obj, (str, int, float, bool)) or obj is None:
    return obj
  return str(obj)


def module_attributes(module: torch.nn.Module) -> dict:
  """Architecture facts a state dict does not hold (NDT1: attention heads)."""
  out = {}
  for name, sub in module.named_modules():
    if name.endswith("layers.0.attn") and hasattr(sub, "n_heads"):
      out["n_heads"] = int(sub.n_heads)
  return out


def checkout_root(code_path: str) -> str:
  """The working directory the authors' code expects: the parent of a `src` code_path, else
  the first of code_path and its parents that holds data/target_eids.txt, else code_path."""
  path = pathlib.Path(code_path).resolve()
  if path.name == "src":
    return str(path.parent)
  return str(next((f for f in (path, *path.parents) if (f / "data" / "target_eids.txt").is_file()), path))


def _unpickle(source: str, code_path: str):
  """torch.load of `source`, importing pickled classes from `code_path` (if given) with the
  working directory at its checkout root; the previous working directory is restored."""
  source = os.path.abspath(source)
  if not code_path:
    try:
      return torch.load(source, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as e:
      raise ModuleNotFoundError(
        f"{source}: unpickling needs the module {e.name!r}, which is not importable; a "
        "whole-module checkpoint of the MtM authors needs --code_path=<their checkout>/src"
      ) from e
  code_path = os.path.abspath(code_path)
  if not os.path.isdir(code_path):
    raise FileNotFoundError(f"--code_path: {code_path} is not a directory (expected <their checkout>/src)")
  root = checkout_root(code_path)
  if code_path not in sys.path:
    sys.path.insert(0, code_path)
  try:
    with contextlib.chdir(root):
      return torch.load(source, map_location="cpu", weights_only=False)
  except (ImportError, OSError) as e:
    raise ImportError(
      f"--code_path: unpickling {source} imports the authors' code from {code_path} with the working "
      f"directory {root}, and that failed: {type(e).__name__}: {e}. Give --code_path=<their "
      "checkout>/src of a checkout that holds data/target_eids.txt, with their dependencies "
      "installed in this environment"
    ) from e


def save_state_dict(state_dict, path: str, meta: dict | None = None) -> dict:
  """Writes `state_dict` (name -> tensor; vocabularies as ordered dicts) to `path` (.npz)."""
  meta = dict(meta or {})
  arrays, vocab, skipped = {}, {}, []
  for name, value in state_dict.items():
    if isinstance(value, torch.Tensor):
      arrays[name] = value.detach().cpu().numpy()
    elif isinstance(value, dict) and name.endswith("vocab"):
      words = sorted(value.items(), key=lambda kv: kv[1])
      if [i for _, i in words] != list(range(len(words))):
        raise ValueError(f"{name}: vocabulary indices are not 0..{len(words) - 1}")
      vocab[name] = [str(w) for w, _ in words]
    else:
      skipped.append(name)
  meta.update(vocab=vocab, skipped=skipped)
  if "__meta__" in arrays:
    raise ValueError("the state dict has an entry named __meta__")
  np.savez(path, __meta__=np.array(json.dumps(_jsonable(meta))), **arrays)
  return meta


def load_source(source: str, code_path: str = ""):
  """(state dict, meta) of a checkpoint file or directory (see the module docstring);
  code_path: the folder of the authors' code for whole-module pickles."""
  meta = {"source": os.path.basename(os.path.normpath(source))}
  if os.path.isdir(source):
    state = {}
    for part in ("encoder", "decoder"):
      path = os.path.join(source, f"{part}.bin")
      if not os.path.exists(path):
        raise FileNotFoundError(
          f"{source}: a checkpoint directory must hold encoder.bin and decoder.bin; {part}.bin is missing"
        )
      state.update({f"{part}.{k}": v for k, v in torch.load(path, map_location="cpu").items()})
    return state, meta
  obj = _unpickle(source, code_path)
  if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], torch.nn.Module):
    obj = obj["model"]
  if isinstance(obj, torch.nn.Module):
    meta["attributes"] = module_attributes(obj)
    return obj.state_dict(), meta
  if isinstance(obj, dict) and isinstance(
    obj.get("model"), dict
  ):  # NEDS's trainer: {"epoch", "model", "optimizer", ...}
    meta["epoch"] = obj.get("epoch")
    return obj["model"], meta
  if isinstance(obj, dict) and "state_dict" in obj:
    hparams = dict(obj.get("hyper_parameters", {}).get("model", {}) or {})
    hparams.pop("_target_", None)
    meta["hparams"] = hparams
    prefix = "model."
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in obj["state_dict"].items()}, meta
  if isinstance(obj, dict) and obj and all(isinstance(v, (torch.Tensor, dict)) for v in obj.values()):
    return obj, meta
  raise ValueError(
    f"{source}: not a checkpoint this tool understands (got {type(obj).__name__}); "
    "expected a Lightning .ckpt, the MtM or NEDS trainer's .pt, encoder.bin + decoder.bin, or a state dict"
  )


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--source", required=True, help=".pt/.ckpt file, or a directory with encoder.bin, decoder.bin")
  parser.add_argument("--out", required=True, help="the .npz to write")
  parser.add_argument("--code_path", default="", help="the authors' src folder, to unpickle whole modules")
  args = parser.parse_args(argv)
  try:
    if not os.path.exists(args.source):
      raise FileNotFoundError(f"--source: {args.source} does not exist")
    state, meta = load_source(args.source, args.code_path)
    meta = save_state_dict(state, args.out, meta)
  except (ImportError, OSError, ValueError) as e:
    sys.exit(f"export_torch: {e}")  # one line on stderr, exit status 1
  print(
    f"wrote {args.out}: {len(state) - len(meta['skipped']) - len(meta['vocab'])} tensors, "
    f"vocabularies {sorted(meta['vocab'])}, skipped {meta['skipped']}"
  )


if __name__ == "__main__":
  main()
