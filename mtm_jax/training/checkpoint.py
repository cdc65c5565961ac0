"""Orbax checkpoints of {train state, config, sessions}: save, resume and restore for
analysis. The config and the sessions (name, id and neuron regions of each session row)
travel with every checkpoint, so a model is loaded by its path alone."""

from __future__ import annotations

import os

import jax
import ml_collections
import orbax.checkpoint as ocp


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(os.path.expanduser(workdir)), "checkpoints")


def manager(workdir: str, keep: int = 3, create: bool = True) -> ocp.CheckpointManager:
  """CheckpointManager in <workdir>/checkpoints (absolute), keeping the newest `keep`."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create, enable_async_checkpointing=True)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=("state", "config", "sessions"))


def save(mngr: ocp.CheckpointManager, step: int, state, config: ml_collections.ConfigDict,
         sessions: list[dict]) -> None:
  """sessions: one JSON-able dict per session row (see loop.session_records)."""
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          config=ocp.args.JsonSave(config.to_dict()),
                                          sessions=ocp.args.JsonSave(sessions)), force=True)


def abstract(tree):
  """ShapeDtypeStructs with the (concrete) shardings of `tree`, as a restore target."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def restore(mngr: ocp.CheckpointManager, target, step: int | None = None):
  """The state saved at `step` (default: latest), laid out like `target`."""
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {mngr.directory}")
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract(target))))
  return restored["state"]


def latest_step(workdir: str) -> int | None:
  """The newest finished checkpoint's step in `workdir` (None if there is none)."""
  if not os.path.isdir(checkpoint_dir(workdir)):
    return None
  mngr = manager(workdir, create=False)
  step = mngr.latest_step()
  mngr.close()
  return step


def load_metadata(workdir: str, step: int | None = None) -> tuple[ml_collections.ConfigDict, list[dict]]:
  """The config a run in `workdir` was trained with, and its session records."""
  path = checkpoint_dir(workdir)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{workdir}: no checkpoints directory ({path}); was a model trained there?")
  mngr = manager(workdir, create=False)
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"{path}: holds no finished checkpoint")
  if step not in mngr.all_steps():
    raise FileNotFoundError(f"{path}: no checkpoint at step {step}; it has {sorted(mngr.all_steps())}")
  restored = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore(),
                                                        sessions=ocp.args.JsonRestore()))
  mngr.close()
  return ml_collections.ConfigDict(restored["config"]), list(restored["sessions"])
