"""Device mesh and batch shardings. Axes: "data" (batches split) and "model" (tensor
parallelism over attention heads and MLP width, size config.mesh.model; the parameter
rules are in sharding.py). With several processes (multi-host), each process feeds only
the rows of a global batch that its own devices hold (process_rows)."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

DATA, MODEL = "data", "model"


def make_mesh(data: int = -1, model: int = 1, devices=None) -> jax.sharding.Mesh:
  """A (data, model) mesh over the first data * model of `devices` (default: all);
  data=-1 takes all of them."""
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if model < 1 or n % model:
    raise ValueError(f"config.mesh.model: {model} does not divide the {n} devices")
  data = n // model if data == -1 else data
  if data < 1 or data * model > n:
    raise ValueError(f"config.mesh: data={data} x model={model} needs more than the {n} devices")
  devices = devices[: data * model]
  return jax.make_mesh((data, model), (DATA, MODEL), axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def from_config(config, fit: bool = False) -> jax.sharding.Mesh:
  """The mesh of config.mesh: data (-1 = the rest of the devices) x model (default 1).
  fit: if there are too few devices (a checkpoint of a bigger run, loaded for analysis),
  all devices on the data axis, and the model axis kept only if it divides them."""
  data, model = config.mesh.data, config.mesh.get("model", 1)
  n = jax.device_count()
  if fit and (data * model > n if data > 0 else n % model):
    data, model = -1, (model if model <= n and n % model == 0 else 1)
  return make_mesh(data, model)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
  """Leading (batch) axis split over "data"."""
  return NamedSharding(mesh, P(DATA))


def check_batch_size(batch_size: int, mesh) -> None:
  size = mesh.shape[DATA]
  if batch_size % size:
    raise ValueError(
      f"config.data.batch_size: {batch_size} is not divisible by the {size} devices of the mesh's data axis"
    )


def process_rows(global_batch: int, mesh) -> slice:
  """The rows of a global batch [global_batch, ...] that this process's devices hold
  under batch_sharding (all of them in a single process): the only rows it must load."""
  index_map = batch_sharding(mesh).addressable_devices_indices_map((global_batch,))
  bounds = sorted({(i[0].start or 0, global_batch if i[0].stop is None else i[0].stop) for i in index_map.values()})
  if any(a[1] != b[0] for a, b in zip(bounds, bounds[1:])):
    raise ValueError(
      f"mesh: process {jax.process_index()} holds rows {bounds} of the batch, not one contiguous block; "
      "order the devices so that each process's devices are neighbours on the data axis"
    )
  return slice(bounds[0][0], bounds[-1][1])


def shard_batch(batch: dict[str, np.ndarray], mesh, global_batch: int | None = None) -> dict[str, jax.Array]:
  """Host batch (this process's rows, see process_rows) -> global arrays split over
  "data". global_batch: the global row count (default: JAX infers it from the sharding)."""
  sharding = batch_sharding(mesh)

  def make(v):
    v = np.asarray(v)
    shape = None if global_batch is None else (global_batch,) + v.shape[1:]
    return jax.make_array_from_process_local_data(sharding, v, shape)

  return {k: make(v) for k, v in batch.items()}
