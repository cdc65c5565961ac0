"""NDT1 with MtM masking on binned spike counts (the MtM paper's model family).

Sessions are TFDS `ibl_binned` data sets ([trials, bins, neurons] counts); every batch
holds trials of one session, which selects its row of the per-session layers
(ndt1.SESSION_PARAMS) and of the region table. The loss is the masked Poisson NLL
summed over the targets of the batch's masking scheme; a step changes only the batch's
session row of the per-session layers (training.rows.only_row). A checkpoint records,
per session row, its TFDS name, session id and the region of each neuron.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from mtm_jax import masking
from mtm_jax.datasets import pipeline, schema
from mtm_jax.evaluation import decoding, ndt1 as ndt1_eval, report
from mtm_jax.interop import ndt1 as ndt1_interop
from mtm_jax.models import ndt1
from mtm_jax.parallel import mesh as mesh_lib, sharding
from mtm_jax.tasks import base
from mtm_jax.training import checkpoint, config_checks, optimizer, precision, rows, step as step_lib


def masked_poisson_nll(log_rates, spikes, targets):
  """Poisson NLL on log-rates, exp(y_hat) - y * y_hat, summed over target entries.

  log_rates, spikes [B, T, N]; targets [B, T, N] bool. Returns (sum, number of targets).
  """
  nll = jnp.exp(log_rates) - spikes * log_rates
  return jnp.sum(jnp.where(targets, nll, 0.0)), jnp.sum(targets)


def batch_session(batch) -> jax.Array:
  """[] int32 session row of a batch (all its trials come from one session)."""
  return batch["session"][0] if "session" in batch else jnp.zeros((), jnp.int32)


def masked_nll(
  graphdef, params, batch, regions, key, *, mode: str, mask_config: masking.MaskConfig, train: bool, dtype="float32"
):
  """Summed masked Poisson NLL of one batch (the reference backpropagates the sum).

  batch["spikes"] [B, T, N] (zero-padded to the model's N), batch["session"] [B] int32
  (optional, default row 0), batch["valid"] [B] bool (optional: rows that only pad a
  partial batch are False and carry no targets); regions [S, N] int32 region id of each
  session's neurons (-1 = padding). The key draws the scheme (for "mtm"), the mask and,
  when `train`, dropout. dtype: compute dtype of the forward pass (params and the loss
  stay float32; see training.precision). Returns (sum, dict(n_targets, scheme)).
  """
  k_scheme, k_mask, k_dropout = jax.random.split(key, 3)
  spikes = batch["spikes"].astype(jnp.float32)
  session = batch_session(batch)
  scheme = masking.sample_scheme(k_scheme, mode)
  masked = masking.apply_scheme(k_mask, spikes, regions[session], scheme, mask_config)
  model = nnx.merge(graphdef, precision.compute_params(params, dtype))
  prompt = jnp.minimum(masked.scheme, len(masking.SCHEMES) - 1)  # unused for temporal
  log_rates = model(
    masked.inputs, prompt=prompt, session=session, causal=masked.causal, key=k_dropout if train else None
  ).astype(jnp.float32)
  targets = masked.targets & batch["valid"][:, None, None] if "valid" in batch else masked.targets
  total, count = masked_poisson_nll(log_rates, spikes, targets)
  return total, dict(n_targets=count, scheme=scheme)


def loss(graphdef, mode: str, mask_config: masking.MaskConfig, dtype="float32") -> step_lib.Loss:
  """The training loss (step_lib.Loss; consts = the region table [S, N]): the summed NLL
  is differentiated, the logged loss is its mean over the targets."""

  def fn(params, batch, regions, key):
    total, aux = masked_nll(
      graphdef, params, batch, regions, key, mode=mode, mask_config=mask_config, train=True, dtype=dtype
    )
    return total, dict(loss=total / jnp.maximum(aux["n_targets"], 1), nll_sum=total, **aux)

  return fn


def session_row_mask(params, batch):
  """Only the batch's session row of the per-session layers changes (and the shared
  weights), in the parameters and the optimiser state, as PyTorch's optimisers skip
  parameters without gradients: other sessions' stitchers keep their values and moments
  instead of drifting on momentum and weight decay."""
  return rows.only_row(params, ndt1.SESSION_PARAMS, batch_session(batch))


def new_rows_mask(params, batch):
  """Only the batch's session row of the per-session layers changes; the shared weights
  are frozen (fine-tuning mode "unit_id", and the warm-up of "full")."""
  return rows.only_row(params, ndt1.SESSION_PARAMS, batch_session(batch), rest=False)


def make_train_step(graphdef, tx, mode: str, mask_config: masking.MaskConfig, *, dtype="float32"):
  """(state, batch, regions [S, N], key) -> (state, metrics): step_lib.make_train_step
  of the NDT1 loss with the session-row mask."""
  return step_lib.make_train_step(loss(graphdef, mode, mask_config, dtype), tx, row_mask=session_row_mask)


def session_records(names, infos) -> list[dict]:
  """What a checkpoint keeps of each session row (JSON)."""
  return [dict(name=n, session_id=i.session_id, region_names=list(i.region_names)) for n, i in zip(names, infos)]


def graft_shared(params, pretrained_params, where: str = "pretrained model"):
  """`ndt1.load`: the shared parameters from `pretrained_params`, the per-session layers fresh."""
  return ndt1.load(params, pretrained_params, where=where)


def mask_config(config) -> masking.MaskConfig:
  m = config.masking
  return masking.MaskConfig(ratio=m.ratio, causal_ratio=m.causal_ratio, causal_suffix=m.get("causal_suffix", False))


def padded_batches(n: int, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
  """Batches of trial indices 0..n-1 in order: (indices [batch_size] int, valid
  [batch_size] bool). The last one is filled up with trials of its own (their rows
  invalid), so every trial counts once and every batch has the compiled shape."""
  out = []
  for start in range(0, n, batch_size):
    indices = np.arange(start, min(start + batch_size, n))
    out.append((np.resize(indices, batch_size), np.arange(batch_size) < len(indices)))
  return out


def reference_session_rows(arch: dict, infos, rows: list[str], eids_file: str | None) -> list[int] | None:
  if not arch["use_session"]:
    return None
  if rows:
    return [int(r) for r in rows]
  if eids_file:
    with open(eids_file, encoding="utf-8") as f:
      eids = [line.strip() for line in f if line.strip()]
    missing = [i.session_id for i in infos if i.session_id not in eids]
    if missing:
      raise ValueError(f"--eids: {eids_file} does not list the sessions {missing}")
    return [eids.index(i.session_id) for i in infos]
  raise ValueError(
    f"the checkpoint has a session table of {arch['n_session_rows']} rows: give each session's row "
    "with --session_rows or --eids"
  )


class NDT1Task(base.Task):
  family, name = "ndt1", "NDT1"

  # ---- Configs -----------------------------------------------------------------------------
  def check(self, config):
    check_config(config)

  def select_sessions(self, config, sessions: str) -> None:
    if sessions.strip().isdigit():
      config.data.n_sessions = int(sessions)
    else:
      config.data.datasets, config.data.n_sessions = sessions, 0

  def finetune_config(self, config, pretrained, mode=None):
    """The architecture (config.model) is the pretrained one, and training starts from
    its shared weights with fresh per-session layers for config.data.datasets. mode (None:
    config.finetune.mode) "full": every parameter trains, after finetune.warmup_steps of
    the new per-session layers alone; "unit_id": only the new per-session layers train
    (the stitchers and session row of the new sessions: NDT1's unit identification)."""
    config, mode = self.finetune_mode(config, mode)
    if not pretrained:
      return config
    pre = self.pretrained_config(pretrained)
    if pre.model.stitch_dim <= 0:
      raise ValueError(
        f"{pretrained}: the pretrained model has no per-session stitching layers "
        "(config.model.stitch_dim = 0), so its input layer fits only its own session"
      )
    config.model = checkpoint.with_defaults(pre.model, config.model)
    config.init.pretrained = os.path.abspath(os.path.expanduser(pretrained))
    config.finetune.mode = mode
    if config.masking.mode == masking.TEMPORAL:
      config.model.use_prompt = False
    return config

  # ---- Training ---------------------------------------------------------------------------
  def input(self, config, mesh, pretrained, sessions=None):
    if sessions is not None:
      raise ValueError("NDT1 trains on built ibl_binned data sets (config.data.datasets), not in-memory sessions")
    names = config_checks.dataset_names(config)
    config.data.datasets, config.data.n_sessions = ",".join(names), 0  # resolved, as saved
    loaded = pipeline.load_sessions(names, config.data.data_dir)
    infos = [s.info for s in loaded]
    n_neurons = max(i.n_neurons for i in infos)
    batches = pipeline.multi_session_batches(
      [s.splits["train"] for s in loaded],
      config.data.batch_size,
      config.data.shuffle_seed,
      n_neurons,
      rows=mesh_lib.process_rows(config.data.batch_size, mesh),
    )
    regions = jax.device_put(jnp.asarray(pipeline.region_table(infos, n_neurons)), mesh_lib.replicated(mesh))
    for s in loaded:
      logging.info(
        "session %s (%s): %d neurons in %s, %d train / %d val trials",
        s.name,
        s.info.session_id,
        s.info.n_neurons,
        s.info.regions,
        len(s.splits["train"]["spikes"]),
        len(s.splits["val"]["spikes"]),
      )
    return base.Input(session_records(names, infos), batches, regions, dict(sessions=loaded, n_neurons=n_neurons))

  def create(self, config, records, mesh, params=None):
    infos = [schema.SessionInfo(session_id=r["session_id"], region_names=tuple(r["region_names"])) for r in records]
    model = ndt1.from_config(config, [i.n_neurons for i in infos], rngs=nnx.Rngs(config.seed))
    graphdef, fresh = nnx.split(model, nnx.Param)
    tx = make_optimizer(config)
    state = sharding.place_state(step_lib.init_state(fresh if params is None else params, tx), mesh, model)
    return graphdef, tx, state

  def merge_pretrained(self, config, graphdef, tx, state, pretrained, records, mesh):
    params = graft_shared(state.params, pretrained.params, where=f"pretrained model {config.init.pretrained}")
    logging.info(
      "shared weights from %s (step %d, sessions %s); fresh %s for %s",
      config.init.pretrained,
      pretrained.step,
      pretrained.names,
      ", ".join(ndt1.SESSION_PARAMS),
      [r["name"] for r in records],
    )
    return graphdef, tx, sharding.place_state(step_lib.init_state(params, tx), mesh)

  def describe(self, config, graphdef, state):
    return (
      f"NDT1 {config.model.size} on {len(config.data.datasets.split(','))} session(s): "
      f"{sum(x.size for x in jax.tree.leaves(state.params))} parameters"
    )

  def loss(self, config, graphdef):
    return loss(graphdef, config.masking.mode, mask_config(config), config.model.get("dtype", "float32"))

  def phases(self, config, inputs, pretrained):
    """From a pretrained model, "unit_id" trains only the new per-session layers; "full"
    trains them alone for finetune.warmup_steps, then everything. Each step changes only
    its batch's session row of the per-session layers."""
    ft = config.get("finetune")
    warmup = 0 if pretrained is None or ft is None else config.train.steps if ft.mode == "unit_id" else ft.warmup_steps
    if not warmup:
      return [base.Phase(base.FOREVER, session_row_mask)]
    then = ", then everything" if warmup < config.train.steps else ""
    logging.info("new stitchers and session row only for %d steps%s", warmup, then)
    return [base.Phase(warmup, new_rows_mask), base.Phase(base.FOREVER, session_row_mask)]

  def learning_rate(self, config):
    return optimizer.learning_rate_schedule(config)

  def validator(self, config, graphdef, inputs, mesh):
    val_nll = jax.jit(
      functools.partial(masked_nll, graphdef, mode=config.masking.mode, mask_config=mask_config(config), train=False)
    )
    loaded, n_neurons = inputs.data["sessions"], inputs.data["n_neurons"]
    mine = mesh_lib.process_rows(config.data.batch_size, mesh)  # the rows of each batch this process builds

    def validate(params) -> dict:
      """{val_loss: masked NLL per target entry over every validation trial of every
      session} ({} without validation trials)."""
      sums = []  # (nll sum, target count) per batch, on device; fetched once at the end
      for row, s in enumerate(loaded):
        val = s.splits["val"]
        for indices, valid in padded_batches(len(val["spikes"]), config.data.batch_size):
          batch = dict(pipeline.Batches(val, row, n_neurons, rows=mine)(indices), valid=valid[mine])
          out, c = val_nll(
            params,
            mesh_lib.shard_batch(batch, mesh, config.data.batch_size),
            inputs.consts,
            jax.random.fold_in(jax.random.key(config.seed + 1), len(sums)),
          )
          sums.append((out, c["n_targets"]))
      total, count = 0.0, 0
      for out, n in jax.device_get(sums):
        total, count = total + float(out), count + int(n)
      return dict(val_loss=total / count) if count else {}

    return validate

  def summarise(self, window):
    n_targets = max(np.sum([m["n_targets"] for m in window]), 1)
    return dict(
      loss=np.sum([m["nll_sum"] for m in window]) / n_targets, grad_norm=np.mean([m["grad_norm"] for m in window])
    )

  def import_reference(self, ckpt, workdir, datasets, data_dir, options, base_config):
    """options: session_rows (each session's row in the authors' table), eids_file (their
    eids in table order), n_heads (when the checkpoint does not tell)."""
    if not datasets:
      raise ValueError("--datasets: an NDT1 import needs our sessions (built ibl_binned data sets), in row order")
    arch = ndt1_interop.architecture(ckpt, options.get("n_heads"))
    config = ndt1_interop.model_config(arch, base_config)
    config.data.datasets, config.data.data_dir = ",".join(datasets), os.path.abspath(data_dir)
    check_config(config)
    infos = [pipeline.session_info(n, config.data.data_dir) for n in datasets]
    rows = reference_session_rows(arch, infos, list(options.get("session_rows", ())), options.get("eids_file"))
    model, unused = ndt1_interop.convert(ckpt, config, [i.n_neurons for i in infos], rows)
    self.save_initial(
      workdir, config, session_records(datasets, infos), nnx.state(model, nnx.Param), make_optimizer(config)
    )
    return dict(kind="ndt1", architecture=arch, session_rows=rows, unused=unused)

  # ---- Evaluation -------------------------------------------------------------------------
  def evaluate(self, trained, split, sessions=None, decode=True):
    return ndt1_eval.evaluate_sessions(trained, split, sessions, decode=decode)

  def arrays_file(self):
    return "per_neuron_bps.npz"

  def report(self, results, label=None, others=None):
    columns = {label or results["masking_mode"]: results, **(others or {})}
    oracle = report.oracle_column(results)
    if oracle:
      columns["oracle"] = oracle
    heads = [m for m in report.HEAD_METRICS if m in results or m in results.get("skipped", {})]
    table = report.table(columns, report.METRICS + decoding.BEHAVIOUR_METRICS + tuple(heads))
    hint = report.bps_hint(results)
    return report.heading(results) + "\n" + table + (f"\n\n{hint}" if hint else "")

  def plot_file(self):
    return "rasters.png"

  def plot(self, models, path, **options):
    return "rasters of " + ndt1_eval.raster_plot(models, path, **options)


def check_config(c: ml_collections.ConfigDict) -> None:
  """An NDT1 + MtM config (mtm_jax/configs/ndt1.py)."""
  precision.compute_dtype(c.model.dtype, "config.model.dtype")
  config_checks.masks(c)
  if c.masking.mode == masking.TEMPORAL and c.model.use_prompt:
    raise ValueError("config.model.use_prompt: temporal masking has no prompt token; set it to False")
  config_checks.decoding(c)
  if c.data.batch_size < 1 or c.train.steps < 1:
    raise ValueError("config.data.batch_size and config.train.steps must be positive")
  config_checks.train(c)
  if "finetune" in c:  # configs saved before NDT1 had fine-tuning modes
    config_checks.finetune(c)
  ndt1.Hparams.from_config(c.model)
  names = config_checks.data_kind(c, config_checks.BINNED, "NDT1")
  if len(names) > 1 and c.model.stitch_dim <= 0:
    raise ValueError(
      f"config.model.stitch_dim: {len(names)} sessions need per-session stitching layers "
      "(stitch_dim > 0, e.g. the ',stitch' option)"
    )


def make_optimizer(config: ml_collections.ConfigDict):
  """AdamW with the one-cycle schedule (training.optimizer.make_optimizer), counting Adam's
  steps per row of the per-session layers (ndt1.SESSION_PARAMS), whose rows the batch's
  session-row mask changes separately."""
  return optimizer.make_optimizer(config, ndt1.SESSION_PARAMS)
