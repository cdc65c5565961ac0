"""The Task interface of a model family, the model restored from a workdir (Trained),
and what a task hands the trainer for one run (Input, Phase).

training.trainer.train(task, config, workdir) runs every family in one order; a family
supplies only what differs (see Task). A checkpoint records the config (with
config.family) and one JSON record per session row, so `Task.load(workdir)` needs the
path alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np
from flax import nnx

from mtm_jax.datasets import schema
from mtm_jax.datasets.events import vocabulary as vocabulary_lib
from mtm_jax.parallel import mesh as mesh_lib
from mtm_jax.training import checkpoint, config_checks, step as step_lib
from mtm_jax.training.provenance import Pretrained  # also tasks.base.Pretrained, as the tasks name it

FOREVER = 2**62  # the `until` of a phase that lasts to the end of the run


@dataclasses.dataclass
class Trained:
  """A model restored from a workdir: its config, one record per session row, the
  parameters on `mesh` (laid out by parallel.sharding.RULES) and the step."""

  config: ml_collections.ConfigDict
  records: list[dict]  # the checkpoint's session records (task.records)
  graphdef: nnx.GraphDef
  params: nnx.State
  step: int
  mesh: jax.sharding.Mesh
  workdir: str = ""

  @property
  def names(self) -> list[str]:
    """The TFDS name of each session row."""
    return [r["name"] for r in self.records]

  def row(self, name: str) -> int:
    if name not in self.names:
      raise ValueError(f"session {name!r} is not one of the model's sessions {self.names}")
    return self.names.index(name)

  # NDT1 (records with region_names) ------------------------------------------------------
  @property
  def sessions(self) -> list[schema.SessionInfo]:
    return [schema.SessionInfo(session_id=r["session_id"], region_names=tuple(r["region_names"])) for r in self.records]

  @property
  def info(self) -> schema.SessionInfo:
    """The first session (the only one of a single-session model)."""
    return self.sessions[0]

  @property
  def n_neurons(self) -> int:
    """The model's input width: the largest session's neuron count."""
    return max(i.n_neurons for i in self.sessions)

  # POYO (records with unit_ids) ----------------------------------------------------------
  @property
  def vocab(self) -> vocabulary_lib.Vocabulary:
    return vocabulary_lib.Vocabulary.from_records(self.records)

  @property
  def scale(self) -> np.ndarray:
    """[D] float32 behaviour divisor the model was trained with."""
    return np.asarray(self.config.data.scale, np.float32)


@dataclasses.dataclass
class Phase:
  """Steps [previous phase's until, until) update with `row_mask` (training.rows; None:
  every parameter trains)."""

  until: int
  row_mask: Callable[[Any, dict], Any] | None


@dataclasses.dataclass
class Input:
  """What a task reads for one run: the session records its checkpoints keep, the
  training batches (batch i of step i: this process's rows), the arrays every step reads
  (`consts`, on the mesh, or None), and task data its other methods use (`data`)."""

  records: list[dict]
  batches: Any  # a grain MapDataset
  consts: Any
  data: Any


class Task:
  """A model family. Subclasses set `family` (config.family) and `name`, and implement
  the methods that raise NotImplementedError."""

  family: str = ""
  name: str = ""
  # config.model fields added after checkpoints were written, whose config default changes
  # the model: {field: the value a saved config without it had} (checkpoint.with_defaults).
  legacy_model: dict | None = None

  # ---- Configs -----------------------------------------------------------------------------
  def check(self, config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the config field of an inconsistent setting."""
    raise NotImplementedError

  def select_sessions(self, config: ml_collections.ConfigDict, sessions: str) -> None:
    """Applies a program's --datasets (comma-separated TFDS names; a count where the
    family allows it) to `config`."""
    if sessions.strip().isdigit():
      raise ValueError(f"--datasets: {self.name} configs take session names, not a count")
    config.data.datasets = sessions

  def finetune_config(
    self, config: ml_collections.ConfigDict, pretrained: str | None, mode: str | None = None
  ) -> ml_collections.ConfigDict:
    """`config` set up to adapt the model in workdir `pretrained` (its checkpoint alone is
    read) to config.data.datasets; pretrained None or "" leaves it as it is (training
    from scratch). mode: what fine-tuning trains (None: the family's default)."""
    raise NotImplementedError

  def finetune_mode(self, config: ml_collections.ConfigDict, mode: str | None) -> tuple:
    """(a copy of `config`, the fine-tuning mode: `mode`, else config.finetune.mode), with
    --mode checked against the modes every family takes."""
    mode = config.finetune.mode if mode is None else mode
    if mode not in config_checks.FINETUNE_MODES:
      raise ValueError(f"--mode: expected one of {config_checks.FINETUNE_MODES} for {self.name}, got {mode!r}")
    return ml_collections.ConfigDict(config.to_dict()), mode

  def pretrained_config(self, pretrained: str) -> ml_collections.ConfigDict:
    """The config of the pretrained run in `pretrained`, checked to be of this family."""
    pre, _ = checkpoint.load_metadata(pretrained)
    if config_checks.family_of(pre) != self.family:
      raise ValueError(f"{pretrained}: holds a {config_checks.family_of(pre)!r} model, not {self.name}")
    return pre

  # ---- Training ---------------------------------------------------------------------------
  def check_mesh(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
    mesh_lib.check_batch_size(config.data.batch_size, mesh)

  def input(
    self,
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    pretrained: Pretrained | None,
    sessions: Sequence | None = None,
  ) -> Input:
    """Reads the sessions (config.data.datasets, or the given in-memory `sessions`) and
    sets config.data.datasets (and what the run resolves, e.g. a behaviour scale) to what
    is saved. pretrained: config.init.pretrained's checkpoint metadata (or None)."""
    raise NotImplementedError

  def create(self, config: ml_collections.ConfigDict, records: list[dict], mesh: jax.sharding.Mesh, params=None):
    """(graphdef, optax transformation, fresh TrainState laid out on `mesh`); `params`
    (a pure dict or State) replaces the fresh initialisation."""
    raise NotImplementedError

  def merge_pretrained(self, config, graphdef, tx, state, pretrained: Trained, records: list[dict], mesh):
    """(graphdef, tx, state): a fresh state whose parameters take the pretrained model's
    weights, its new parts (layers or rows of new sessions) left fresh."""
    raise NotImplementedError

  def loss(self, config: ml_collections.ConfigDict, graphdef):
    """loss(params, batch, consts, key) -> (differentiated loss, metrics) (training.step.Loss)."""
    raise NotImplementedError

  def phases(self, config: ml_collections.ConfigDict, inputs: Input, pretrained: Pretrained | None) -> list[Phase]:
    return [Phase(FOREVER, None)]

  def validator(self, config: ml_collections.ConfigDict, graphdef, inputs: Input, mesh) -> Callable[[Any], dict]:
    """validate(params) -> {score name: value} on the validation split ({} without one)."""
    raise NotImplementedError

  def learning_rate(self, config: ml_collections.ConfigDict):
    """The optax schedule of the learning rate (logged)."""
    raise NotImplementedError

  def summarise(self, window: list[dict]) -> dict:
    """Logged scalars (with "loss") of the finite steps' metrics of one log window."""
    raise NotImplementedError

  def describe(self, config: ml_collections.ConfigDict, graphdef, state) -> str:
    """One log line: the model and its parameter count."""
    return f"{self.name} {config.model.size}: {sum(x.size for x in jax.tree.leaves(state.params))} parameters"

  # ---- Loading ----------------------------------------------------------------------------
  def load(self, workdir: str, step: int | None = None, mesh: jax.sharding.Mesh | None = None) -> Trained:
    """The model trained in `workdir` (its checkpoint alone: no data set is read)."""
    config, records = checkpoint.load_metadata(workdir, step)
    mesh = mesh_lib.from_config(config, fit=True) if mesh is None else mesh
    graphdef, _, state = self.create(config, records, mesh)
    mngr = checkpoint.manager(workdir, create=False)
    restored = checkpoint.restore(mngr, state, step, params_only=True)
    mngr.close()
    return Trained(config, records, graphdef, restored.state.params, restored.step, mesh, workdir)

  def import_reference(
    self, ckpt, workdir: str, datasets: list[str], data_dir: str, options: dict, base: ml_collections.ConfigDict | None
  ) -> dict:
    """Writes the authors' checkpoint `ckpt` (interop.state_dict.TorchCheckpoint) as the
    step-0 checkpoint of `workdir` for our sessions `datasets` (experiments.import_checkpoint;
    options: that program's family-specific flags); returns a summary for import.json."""
    raise NotImplementedError(f"{self.name}: no reference checkpoints to import")

  def save_initial(self, workdir: str, config: ml_collections.ConfigDict, records: list[dict], params, tx) -> None:
    """`params` as the step-0 checkpoint of a run in `workdir` (a training from there
    draws with the run key of config.seed)."""
    state = step_lib.init_state(params, tx)
    mngr = checkpoint.manager(workdir)
    key = jax.random.key(config.seed, impl=config.train.get("prng_impl", None))
    checkpoint.save(mngr, 0, state, config, records, key=key, data_state=None)
    mngr.wait_until_finished()
    mngr.close()

  # ---- Evaluation -------------------------------------------------------------------------
  def evaluate(self, trained: Trained, split: str, sessions=None, decode: bool = True) -> tuple[dict, dict]:
    """(results for metrics.json, {name: array} for an .npz beside it, or {})."""
    raise NotImplementedError

  def report(self, results: dict, label: str | None = None, others: dict | None = None) -> str:
    """The printed summary of `evaluate`'s results (the column `label`, default its masking
    mode) beside the saved results of other models, others {label: metrics.json}."""
    raise NotImplementedError

  def plot_file(self) -> str | None:
    """The figure `plot` writes into the workdir (None: the family has none)."""
    return None

  def plot(self, models: dict[str, Trained], path: str, **options) -> str:
    """Draws `plot_file`'s figure of models {label: Trained} (the first is the one scored)
    to `path`; returns what it shows, for the program's line."""
    raise ValueError(f"--plots: {self.name} models have no figure (NDT1 and POYO models do)")

  def arrays_file(self) -> str | None:
    """The .npz file `evaluate`'s arrays are written to (None: it returns none)."""
    return None
