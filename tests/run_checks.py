"""Checks the training tests of several families share: parameters as flat arrays, and a
run interrupted after its first checkpoint resuming to the uninterrupted parameters."""

import os
import shutil

import jax
import numpy as np
from flax import nnx

from mtm_jax.tasks import registry
from mtm_jax.training import trainer


def flat(params) -> dict[str, np.ndarray]:
  """{"a/b/c": array} of a parameter tree (a pure dict or an nnx.State)."""
  pure = params if isinstance(params, dict) else nnx.to_pure_dict(params)
  return {
    "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
    for path, v in jax.tree_util.tree_flatten_with_path(jax.device_get(pure))[0]
  }


def assert_resumes_exactly(family: str, config, workdir: str, sessions, steps: int, tmp_path) -> None:
  """A copy of the finished run in `workdir` without its last checkpoint (step `steps`),
  trained again, ends with the same parameters bit for bit."""
  resumed = str(tmp_path / "resumed")
  shutil.copytree(workdir, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", str(steps)))  # interrupted before the last step
  trainer.train(registry.get(family), config, resumed, sessions)
  a, b = flat(registry.load_trained(workdir).params), flat(registry.load_trained(resumed).params)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
