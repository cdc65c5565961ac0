"""Checks of a whole training config (the configs themselves are data: mtm_jax/configs/).

Each raises ValueError naming the config field. The model fields are checked by the
models' hyper-parameters (`ndt1.Hparams`, `poyo.Hparams`), made here from config.model."""

from __future__ import annotations

import ml_collections

from mtm_jax import masking
from mtm_jax.datasets import schema
from mtm_jax.models import ndt1 as ndt1_model, poyo as poyo_model, poyo_mtm as poyo_mtm_model
from mtm_jax.training import precision

# Ways to adapt a pretrained model (config.finetune.mode): only the new session's rows
# (POYO's unit identification; NDT1's new stitchers and session row), or everything.
FINETUNE_MODES = ("unit_id", "full")


def decoding(c: ml_collections.ConfigDict) -> None:
  """config.eval's behaviour decoders: their prompt, folds and head steps."""
  if c.eval.decoding_prompt not in masking.SCHEMES or c.eval.decoding_prompt == "causal":
    raise ValueError(
      f"config.eval.decoding_prompt: {c.eval.decoding_prompt!r}; expected one of "
      f"{[s for s in masking.SCHEMES if s != 'causal']}"
    )
  if c.eval.decoding_folds < 2:
    raise ValueError(f"config.eval.decoding_folds: must be >= 2, got {c.eval.decoding_folds}")
  if c.eval.get("head_steps", 0) < 0:
    raise ValueError(f"config.eval.head_steps: must be >= 0 (0: no fine-tuned heads), got {c.eval.head_steps}")


def ndt1(c: ml_collections.ConfigDict) -> None:
  """An NDT1 + MtM config (mtm_jax/configs/ndt1.py)."""
  precision.compute_dtype(c.model.dtype, "config.model.dtype")
  masks(c)
  if c.masking.mode == masking.TEMPORAL and c.model.use_prompt:
    raise ValueError("config.model.use_prompt: temporal masking has no prompt token; set it to False")
  decoding(c)
  if c.data.batch_size < 1 or c.train.steps < 1:
    raise ValueError("config.data.batch_size and config.train.steps must be positive")
  train(c)
  if "finetune" in c:  # configs saved before NDT1 had fine-tuning modes
    finetune(c)
  ndt1_model.Hparams.from_config(c.model)
  names = data_kind(c, BINNED, "NDT1")
  if len(names) > 1 and c.model.stitch_dim <= 0:
    raise ValueError(
      f"config.model.stitch_dim: {len(names)} sessions need per-session stitching layers "
      "(stitch_dim > 0, e.g. the ',stitch' option)"
    )


def poyo(c: ml_collections.ConfigDict) -> None:
  """A POYO config (mtm_jax/configs/poyo.py)."""
  precision.compute_dtype(c.model.dtype, "config.model.dtype")
  poyo_model.Hparams.from_config(c.model)
  m, d = c.model, c.data
  if d.window_length != m.window_length:
    raise ValueError(
      f"config.data.window_length ({d.window_length}) must equal config.model.window_length ({m.window_length})"
    )
  buckets(d.token_buckets, d.get("max_tokens", 0))
  if not 0 < d.unit_dropout_min <= d.unit_dropout_mode <= d.unit_dropout_max:
    raise ValueError(
      "config.data.unit_dropout_min/mode/max: expected 0 < min <= mode <= max, got "
      f"{d.unit_dropout_min}, {d.unit_dropout_mode}, {d.unit_dropout_max}"
    )
  if not 0.0 <= c.optimizer.constant_fraction <= 1.0:
    raise ValueError(f"config.optimizer.constant_fraction: must be in [0, 1], got {c.optimizer.constant_fraction}")
  if c.optimizer.name != "lamb":
    raise ValueError(f"config.optimizer.name: expected 'lamb', got {c.optimizer.name!r}")
  if d.batch_size < 1 or c.train.steps < 1 or d.max_queries < 1:
    raise ValueError("config.data.batch_size, config.data.max_queries and config.train.steps must be positive")
  train(c)
  if c.eval.window_step <= 0 or c.eval.window_step > d.window_length:
    raise ValueError(f"config.eval.window_step: must be in (0, window_length], got {c.eval.window_step}")
  finetune(c)
  if c.data.scale and len(c.data.scale) != sum(int(v) for v in dict(m.tasks).values()):
    raise ValueError(
      f"config.data.scale: expected one entry per output dimension of config.model.tasks, got {len(c.data.scale)}"
    )
  data_kind(c, EVENTS, "POYO")


def poyo_mtm(c: ml_collections.ConfigDict) -> None:
  """A spike-token MtM config (mtm_jax/configs/poyo_mtm.py)."""
  precision.compute_dtype(c.model.dtype, "config.model.dtype")
  poyo_mtm_model.Hparams.from_config(c.model)
  m, d = c.model, c.data
  if d.context != m.context:
    raise ValueError(f"config.data.context ({d.context}) must equal config.model.context ({m.context})")
  masks(c)
  buckets(d.token_buckets, d.get("max_tokens", 0))
  n_bins = round(d.context / d.bin_size) if d.bin_size > 0 else 0
  if n_bins < 1 or abs(n_bins * d.bin_size - d.context) > 1e-9:
    raise ValueError(f"config.data.bin_size: {d.bin_size} s must divide config.data.context ({d.context} s)")
  if d.batch_size < 1 or d.max_queries < 1:
    raise ValueError("config.data.batch_size and config.data.max_queries must be positive")
  train(c)
  widths = tuple(c.eval.bin_sizes)
  for w in widths:
    f = round(d.bin_size / w) if w > 0 else 0
    if f < 1 or abs(f * w - d.bin_size) > 1e-9:
      raise ValueError(f"config.eval.bin_sizes: {w} s does not divide config.data.bin_size ({d.bin_size} s)")
  if d.bin_size not in widths:
    raise ValueError(
      f"config.eval.bin_sizes: must hold the training bin config.data.bin_size ({d.bin_size}), got {widths}"
    )
  if c.eval.batch_size < 1 or c.eval.max_rows < 1:
    raise ValueError("config.eval.batch_size and config.eval.max_rows must be positive")
  names = ("co_smoothing", "forward_prediction", "inter_region", "intra_region")  # evaluation.run.METRICS
  unknown = [t for t in c.eval.get("fine_tasks", ()) if t not in names]
  if unknown:
    raise ValueError(f"config.eval.fine_tasks: unknown {unknown}; expected some of {list(names)}")
  decoding(c)
  finetune(c)
  data_kind(c, EVENTS, "spike-token MtM")


def finetune(c: ml_collections.ConfigDict) -> None:
  """config.finetune of a family that adapts by unit identification."""
  if c.finetune.mode not in FINETUNE_MODES:
    raise ValueError(f"config.finetune.mode: expected one of {FINETUNE_MODES}, got {c.finetune.mode!r}")
  if c.finetune.warmup_steps < 0:
    raise ValueError(f"config.finetune.warmup_steps: must be >= 0, got {c.finetune.warmup_steps}")


def masks(c: ml_collections.ConfigDict) -> None:
  """config.masking of a family with MtM's masking."""
  if c.masking.mode not in masking.MODES:
    raise ValueError(f"config.masking.mode: unknown {c.masking.mode!r}; expected one of {masking.MODES}")
  for field in ("ratio", "causal_ratio"):
    if not 0.0 < c.masking[field] < 1.0:
      raise ValueError(f"config.masking.{field}: must be in (0, 1), got {c.masking[field]}")


def buckets(token_buckets, max_tokens: int = 0) -> None:
  """config.data.token_buckets and its cap config.data.max_tokens (0: none)."""
  if not token_buckets or any(b < 1 or b % 8 for b in token_buckets) or list(token_buckets) != sorted(token_buckets):
    raise ValueError(f"config.data.token_buckets: expected increasing positive multiples of 8, got {token_buckets}")
  if max_tokens < 0:
    raise ValueError(f"config.data.max_tokens: expected 0 (no cap) or a positive token count, got {max_tokens}")


def train(c: ml_collections.ConfigDict) -> None:
  """The config.train fields every model family has."""
  for field in ("steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints", "max_nonfinite_steps"):
    value = c.train.get(field)
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"config.train.{field}: expected a positive integer, got {value!r}")


# The data set builders (data_builders/) by what they hold, and the families that read each.
BINNED, EVENTS = "ibl_binned", "spike_events"
READERS = {BINNED: "NDT1 (configs/ndt1.py)", EVENTS: "POYO and spike-token MtM (configs/poyo.py, poyo_mtm.py)"}


def data_kind(c: ml_collections.ConfigDict, builder: str, family: str) -> list[str]:
  """dataset_names(c), each checked to be of `builder` (binned counts or spike events) when
  it names a known builder: a family reads one kind."""
  names = dataset_names(c)
  for name in names:
    other = name.split("/")[0]
    if other in READERS and other != builder:
      raise ValueError(
        f"config.data.datasets: {name!r} is a data set of {other}, read by {READERS[other]}; "
        f"{family} reads {builder} data sets ({builder}/<session>)"
      )
  return names


def dataset_names(c: ml_collections.ConfigDict) -> list[str]:
  """The sessions a config trains on: data.datasets, cut to data.n_sessions if > 0 (a
  field of NDT1 configs only)."""
  names = schema.parse_datasets(c.data.datasets)
  n = c.data.get("n_sessions", 0)
  if n < 0 or n > len(names):
    raise ValueError(f"config.data.n_sessions: {n} is not in 0..{len(names)} (the number of data.datasets)")
  return names[:n] if n else names
