"""The checks of training config fields that several model families share (the configs
themselves are data: mtm_jax/configs/).

Each raises ValueError naming the config field. A family's whole check is its task's
(`Task.check`: e.g. tasks.ndt1.check_config), which calls these and makes its model's
hyper-parameters (`Hparams.from_config(config.model)`, which check the model fields)."""

from __future__ import annotations

import ml_collections

from mtm_jax import masking
from mtm_jax.datasets import schema

# config.family ids of older checkpoints -> today's: NDT1's was "mtm" (and configs saved
# before config.family existed have none: NDT1 too).
LEGACY_FAMILIES = {"mtm": "ndt1"}


def family_of(config) -> str:
  """config.family of a config (ConfigDict or dict, e.g. one a checkpoint saved), with the
  ids of older checkpoints read as today's (LEGACY_FAMILIES; none at all: "ndt1")."""
  family = config.get("family", None) or "ndt1"
  return LEGACY_FAMILIES.get(family, family)


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
