"""Device mesh and shardings. Axes: "data" (batch) and "model" (reserved for tensor
parallelism; size 1 unless configured). Parameters are replicated; batches are split
over "data"."""

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
  return jax.make_mesh((data, model), (DATA, MODEL), axis_types=(AxisType.Auto, AxisType.Auto),
                       devices=devices)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
  """Leading (batch) axis split over "data"."""
  return NamedSharding(mesh, P(DATA))


def check_batch_size(batch_size: int, mesh) -> None:
  size = mesh.shape[DATA]
  if batch_size % size:
    raise ValueError(f"config.data.batch_size: {batch_size} is not divisible by the {size} devices "
                     f"of the mesh's data axis")


def shard_batch(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """Host batch (this process's rows) -> global arrays split over "data"."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def shard_global_batch(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """A global host batch (every process holds all of it) -> global arrays split over
  "data": each process contributes its contiguous share of the rows."""
  n, index = jax.process_count(), jax.process_index()
  size = len(next(iter(batch.values()))) // n
  return shard_batch({k: v[index * size : (index + 1) * size] for k, v in batch.items()}, mesh)
