"""One process of test_multihost: `python -m tests.multihost_worker <program> <flags>` runs
experiments.<program> (pretrain or evaluate) exactly as it runs. pretrain also records
the parameters this process holds when the run saves its last checkpoint
(<workdir>/params_process<i>.npz, each array assembled from this process's shards)."""

import importlib
import os
import sys

from absl import app, flags
import jax
import numpy as np

from mtm_jax.parallel import sharding
from mtm_jax.training import checkpoint


def _local_copy(x: jax.Array) -> np.ndarray:
  """The whole of `x` from this process's shards (fails if they do not cover it)."""
  out, covered = np.zeros(x.shape, x.dtype), np.zeros(x.shape, bool)
  for shard in x.addressable_shards:
    out[shard.index], covered[shard.index] = np.asarray(shard.data), True
  assert covered.all(), "this process does not hold every entry of a parameter"
  return out


def _recording_save(save):
  def wrapped(mngr, step, state, config, sessions, **kwargs):
    save(mngr, step, state, config, sessions, **kwargs)
    if step == config.train.steps:
      params = {sharding.path_name(p): _local_copy(x) for p, x in jax.tree_util.tree_flatten_with_path(state.params)[0]}
      np.savez(os.path.join(flags.FLAGS.workdir, f"params_process{jax.process_index()}.npz"), **params)

  return wrapped


if __name__ == "__main__":
  program = importlib.import_module(f"experiments.{sys.argv.pop(1)}")
  checkpoint.save = _recording_save(checkpoint.save)
  jax.config.config_with_absl()
  app.run(program.main)
