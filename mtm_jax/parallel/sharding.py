"""Parameter shardings: the tensor-parallel rules of both model families, in one place.

Megatron-style tensor parallelism over the mesh's "model" axis (size config.mesh.model):
in every attention, the query/key/value projections are split by columns (output
features = heads x head dim, so each device holds whole heads) and the output projection
by rows; in every MLP, the up projection is split by columns (hidden units) and the down
projection by rows. XLA then keeps each device's heads and hidden units local and adds
one all-reduce after each row-split projection. Everything else (embeddings, layer norms,
per-session tables, readouts) is replicated, and every array is replicated over "data".

The rules match the end of a leaf's path ('layers/0/attn/query/kernel'), so they place
the parameters and every parameter-shaped part of the optimiser state (Adam's and LAMB's
moments: '.../mu/layers/0/attn/query/kernel') alike. Kernels are [in, out]
(nnx.Linear). POYO's GEGLU feed-forward splits its up projection [D, 2F] into value and
gate halves after the matmul: with a column split, device i pairs its value columns with
the gate columns of device i + model/2, so XLA moves one [B, L, F/model] activation per
block; the result is the same.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from mtm_jax.parallel.mesh import MODEL, replicated

# (pattern matched at the end of a leaf's path, PartitionSpec of that leaf)
RULES = (
  (r"attn/(query|key|value)/kernel", P(None, MODEL)),  # [D, H*E]: heads split
  (r"attn/(query|key|value)/bias", P(MODEL)),  # [H*E]
  (r"attn/out/kernel", P(MODEL, None)),  # [H*E, D]: rows split, outputs all-reduced
  (r"(mlp|ffn)/up/kernel", P(None, MODEL)),  # [D, F]: hidden units split
  (r"(mlp|ffn)/up/bias", P(MODEL)),  # [F]
  (r"(mlp|ffn)/down/kernel", P(MODEL, None)),  # [F, D]: rows split, outputs all-reduced
)
_COMPILED = tuple((re.compile(rf"(^|/){pattern}$"), spec) for pattern, spec in RULES)


def key_name(key) -> str:
  """The name of one entry of a pytree path ('attn' of DictKey('attn'), '0' of an index)."""
  return str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key))))


def path_name(path) -> str:
  """'layers/0/attn/query/kernel' for a leaf's pytree path (a trailing Variable 'value'
  dropped)."""
  names = [key_name(k) for k in path]
  return "/".join(names[:-1] if names and names[-1] == "value" else names)


def spec_for(name: str, shape, model_size: int) -> P:
  """The PartitionSpec of the leaf called `name` (see path_name) of this shape. Raises
  ValueError when a rule splits a dimension that model_size does not divide."""
  for pattern, spec in _COMPILED:
    if pattern.search(name) and len(spec) == len(shape):
      for dim, axis in enumerate(spec):
        if axis == MODEL and shape[dim] % model_size:
          kind = "MLP width" if re.search(r"(mlp|ffn)/", name) else "attention width (heads x head dim)"
          raise ValueError(
            f"config.mesh.model: {model_size} does not divide dimension {dim} (size {shape[dim]}, "
            f"the {kind}) of parameter {name!r}; choose a model axis that divides it"
          )
      return spec
  return P()


def partition_specs(tree, model_size: int):
  """A tree like `tree` (params, optimiser state or a whole train state) of PartitionSpecs."""
  return jax.tree_util.tree_map_with_path(lambda path, x: spec_for(path_name(path), x.shape, model_size), tree)


def shardings(tree, mesh: jax.sharding.Mesh):
  """A tree like `tree` of NamedShardings on `mesh` by RULES (model axis: mesh "model")."""
  specs = partition_specs(tree, mesh.shape[MODEL])
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs, is_leaf=lambda x: isinstance(x, P))


def check_heads(model: nnx.Module, model_size: int) -> None:
  """Raises ValueError naming the attention whose heads the model axis does not divide
  (a split may not cut a head in two)."""
  for path, node in nnx.iter_graph(model):
    heads = getattr(node, "n_heads", None) if isinstance(node, nnx.Module) else None  # not a model's hparams
    if isinstance(heads, int) and heads % model_size:
      name = "/".join(str(p) for p in path) or "model"
      raise ValueError(
        f"config.mesh.model: {model_size} does not divide the {heads} attention heads of {name!r}; "
        "choose a model axis that divides every attention's heads"
      )


def place_state(state, mesh: jax.sharding.Mesh, model: nnx.Module | None = None):
  """`state` (params and optimiser state) laid out on `mesh` by RULES; checks `model`'s
  heads first when given."""
  if model is not None:
    check_heads(model, mesh.shape[MODEL])
  return jax.device_put(state, shardings(state, mesh))


CPU_BFLOAT16_OPTIONS = {"xla_cpu_experimental_onednn_custom_call": True}


def _cpu_accepts(option: str) -> bool:
  """Whether this jaxlib's XLA CPU compiler knows the debug option `option` (an unknown
  one fails every compilation with INVALID_ARGUMENT; experimental options come and go
  between releases). One tiny compilation per call."""
  try:
    jax.jit(lambda x: x + 1, backend="cpu", compiler_options={option: True}).lower(0.0).compile()
  except jax.errors.JaxRuntimeError:
    return False
  return True


def compiler_options(devices, dtype) -> dict | None:
  """XLA options for train steps computing in `dtype` on `devices` (a mesh's, or
  jax.devices()): CPU_BFLOAT16_OPTIONS for bfloat16 steps on CPU when this XLA knows
  them, else None (GPU/TPU need nothing).

  oneDNN's custom calls on the CPU, for bfloat16 steps only, per jit (never a global
  flag); what they gain on which jax is measured in docs/speed.md."""
  devices = list(getattr(devices, "flat", devices))
  if jnp.dtype(dtype) != jnp.bfloat16 or not devices or any(d.platform != "cpu" for d in devices):
    return None
  if not all(_cpu_accepts(name) for name in CPU_BFLOAT16_OPTIONS):
    return None
  return dict(CPU_BFLOAT16_OPTIONS)


def jit_train_step(train_step, state, mesh: jax.sharding.Mesh, dtype="float32"):
  """jax.jit of train_step(state, ...) -> (state, metrics), the state donated and kept
  in its layout (RULES; `state` gives the tree), metrics replicated; compiled with
  compiler_options(mesh, dtype) for the step's compute dtype."""
  return jax.jit(
    train_step,
    donate_argnums=0,
    out_shardings=(shardings(state, mesh), replicated(mesh)),
    compiler_options=compiler_options(mesh.devices, dtype),
  )
