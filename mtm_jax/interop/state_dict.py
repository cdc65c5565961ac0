"""PyTorch state dicts as numpy arrays, and the name tables that map them to mtm_jax params.

A state dict reaches mtm_jax as an .npz written by `parity/export_torch.py` (in the
PyTorch environment): one array per tensor under its PyTorch name, plus `__meta__`, a
JSON string (source, hyper-parameters, vocabularies, module attributes). No PyTorch is
needed here.

A conversion is a list of `Entry`s: one PyTorch tensor <-> one or more of our parameters
(several = equal chunks along the tensor's first axis, e.g. a fused key/value
projection). Linear weights are [out, in] in PyTorch and kernels [in, out] here
(`transpose=True`). The same table converts both ways (`from_torch`, `to_torch`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence

import numpy as np

META_KEY = "__meta__"
Path = tuple  # a path into a pure parameter dict, e.g. ("layers", 0, "attn", "query", "kernel")


@dataclasses.dataclass(frozen=True)
class TorchCheckpoint:
  """An exported PyTorch state dict: arrays by PyTorch name, and the export's metadata."""

  arrays: dict[str, np.ndarray]
  meta: dict
  path: str = ""

  def __contains__(self, name: str) -> bool:
    return name in self.arrays

  def get(self, name: str) -> np.ndarray:
    if name not in self.arrays:
      raise KeyError(f"{self.path or 'state dict'}: has no tensor {name!r}")
    return self.arrays[name]

  def names(self, prefix: str = "") -> list[str]:
    return sorted(n for n in self.arrays if n.startswith(prefix))


def load(path: str) -> TorchCheckpoint:
  """Reads an .npz written by parity/export_torch.py (or `save`)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file (expected an .npz of a PyTorch state dict)")
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {k: np.asarray(data[k]) for k in data.files}
  except (ValueError, OSError) as e:
    raise ValueError(
      f"{path}: not a readable .npz of a PyTorch state dict ({e}); export .pt/.ckpt files "
      "with parity/export_torch.py first"
    ) from e
  meta = json.loads(str(arrays.pop(META_KEY))) if META_KEY in arrays else {}
  return TorchCheckpoint(arrays, meta, path)


def save(checkpoint: TorchCheckpoint, path: str) -> None:
  """Writes arrays + metadata in the layout `load` reads."""
  np.savez(path, **{META_KEY: np.array(json.dumps(checkpoint.meta))}, **checkpoint.arrays)


@dataclasses.dataclass(frozen=True)
class Entry:
  torch: str  # PyTorch state-dict name
  ours: tuple[Path, ...]  # our parameter path(s); several = chunks along the first torch axis
  transpose: bool = False  # Linear weight [out, in] <-> kernel [in, out]


def linear(torch_prefix: str, ours: Path, bias: bool = True) -> list[Entry]:
  """nn.Linear `torch_prefix` <-> nnx.Linear at `ours`."""
  entries = [Entry(f"{torch_prefix}.weight", (ours + ("kernel",),), transpose=True)]
  if bias:
    entries.append(Entry(f"{torch_prefix}.bias", (ours + ("bias",),)))
  return entries


def fused_linear(torch_prefix: str, ours: Sequence[Path]) -> list[Entry]:
  """A bias-free nn.Linear whose output is the concatenation of several of ours (to_kv, to_qkv)."""
  return [Entry(f"{torch_prefix}.weight", tuple(p + ("kernel",) for p in ours), transpose=True)]


def layer_norm(torch_prefix: str, ours: Path) -> list[Entry]:
  return [Entry(f"{torch_prefix}.weight", (ours + ("scale",),)), Entry(f"{torch_prefix}.bias", (ours + ("bias",),))]


def embedding(torch_name: str, ours: Path) -> list[Entry]:
  return [Entry(f"{torch_name}.weight", (ours + ("embedding",),))]


def get_path(tree: Mapping, path: Path):
  for k in path:
    tree = tree[k]
  return tree


def set_path(tree: dict, path: Path, value) -> None:
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


def _shape(x) -> tuple:
  return tuple(np.shape(x))


def from_torch(checkpoint: TorchCheckpoint, entries: Sequence[Entry], target: Mapping) -> dict:
  """Our pure parameter dict for `entries`, shapes checked against `target` (a pure dict of
  arrays or ShapeDtypeStructs of the model being filled). Returns only the entries' paths."""
  out: dict = {}
  for e in entries:
    tensor = checkpoint.get(e.torch)
    chunks = np.split(tensor, len(e.ours), axis=0) if tensor.shape[0] % len(e.ours) == 0 else None
    if chunks is None:
      raise ValueError(f"{checkpoint.path}: {e.torch} has shape {tensor.shape}, not {len(e.ours)} equal chunks")
    for path, chunk in zip(e.ours, chunks):
      value = chunk.T if e.transpose else chunk
      want = _shape(get_path(target, path))
      if value.shape != want:
        raise ValueError(
          f"{checkpoint.path}: {e.torch} gives {'/'.join(map(str, path))} shape {value.shape}, "
          f"the model needs {want}; the checkpoint's architecture differs from the config"
        )
      set_path(out, path, np.asarray(value, np.float32))
  return out


def to_torch(params: Mapping, entries: Sequence[Entry]) -> dict[str, np.ndarray]:
  """PyTorch state-dict arrays for `entries` from our pure parameter dict."""
  out = {}
  for e in entries:
    parts = [np.asarray(get_path(params, p)) for p in e.ours]
    out[e.torch] = np.ascontiguousarray(np.concatenate([p.T if e.transpose else p for p in parts], axis=0))
  return out


def unused(checkpoint: TorchCheckpoint, used: set[str]) -> list[str]:
  """Names of the checkpoint's tensors a conversion did not read."""
  return sorted(set(checkpoint.arrays) - set(used))


def fill(build, convert):
  """(model with converted parameters, unused tensor names).

  build() -> an nnx model (built abstractly, no weights are initialised); convert(target)
  -> (pure parameter dict, unused names), with `target` the model's pure parameter dict of
  ShapeDtypeStructs."""
  from flax import nnx  # pylint: disable=import-outside-toplevel

  model = nnx.eval_shape(build)
  state = nnx.state(model, nnx.Param)
  params, unused_names = convert(nnx.to_pure_dict(state))
  nnx.replace_by_pure_dict(state, params)
  nnx.update(model, state)
  return model, unused_names
