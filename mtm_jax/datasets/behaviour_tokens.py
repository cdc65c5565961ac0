"""A binned trial's behaviour as NEDS's modality tokens (mtm_jax.modalities) read them.

Wheel speed and whisker motion energy ([K, T] traces) z-scored with a session's
training-split (mean, std) (trace_stats, kept in the checkpoint's session records);
choice (IBL +1 / -1) as class 1 / 0 and block (p(left) 0.2 / 0.5 / 0.8) as class 0 / 1 / 2,
as NEDS's lookups. A modality whose field a data set lacks is absent: its arrays are
zeros that the model never reads (not filled in), and it is never a target. A data set
whose traces are columns of one `behaviour` [K, T, D] field (bwb_binned: wheel_speed,
whisker_motion_energy, paw speeds, licking rate, named by its metadata's behaviour_name)
gives them by name (`named_traces`); it has no trial-level choice or block.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mtm_jax import modalities
from mtm_jax.datasets import pipeline, provenance

FIELDS = {"wheel": "wheel_speed", "whisker": "whisker_motion_energy", "choice": "choice", "block": "block"}
BLOCKS = (0.2, 0.5, 0.8)  # p(left) of a block -> its class index


def choice_classes(choice: np.ndarray, where: str) -> np.ndarray:
  """[K] int32 class of IBL choices (-1 -> 0, +1 -> 1, NEDS's lookup)."""
  choice = np.asarray(choice)
  if not np.isin(choice, (-1, 1)).all():
    raise ValueError(f"{where}: 'choice' must hold -1 or +1, got {sorted(set(np.unique(choice).tolist()))}")
  return (choice > 0).astype(np.int32)


def block_classes(block: np.ndarray, where: str) -> np.ndarray:
  """[K] int32 class of block probabilities (0.2, 0.5, 0.8 -> 0, 1, 2)."""
  block = np.asarray(block, np.float64)
  close = np.isclose(block[:, None], np.asarray(BLOCKS)[None], atol=1e-6)
  if not close.any(1).all():
    raise ValueError(f"{where}: 'block' must hold one of {BLOCKS}, got {sorted(set(np.unique(block).tolist()))}")
  return close.argmax(1).astype(np.int32)


def trace_stats(train: dict, mods) -> dict:
  """{modality: [mean, std]} of each trace modality in the training split `train` (std 1
  for a constant trace, so it stays finite)."""
  out = {}
  for m in modalities.DYNAMIC:
    if m in mods and FIELDS[m] in train:
      x = np.asarray(train[FIELDS[m]], np.float64)
      std = float(x.std())
      out[m] = [float(x.mean()), std if std > 0 else 1.0]
  return out


def present_modalities(split: dict, mods) -> list[str]:
  """The model's modalities whose fields `split` holds (spikes always)."""
  return [m for m in mods if m == modalities.SPIKE or FIELDS[m] in split]


def model_arrays(split: dict, record: dict, mods, where: str) -> dict[str, np.ndarray]:
  """One split in the model's units: spikes, trial_index and every behaviour modality of
  `mods` ([K, T] float32 z-scored traces, [K] int32 classes; zeros where the record says
  absent, which the model never reads)."""
  k, t, _ = split["spikes"].shape
  out = dict(spikes=split["spikes"], trial_index=split["trial_index"])
  for m in mods:
    if m == modalities.SPIKE:
      continue
    if m not in record["present"] or FIELDS[m] not in split:
      out[m] = np.zeros((k, t), np.float32) if m in modalities.DYNAMIC else np.zeros(k, np.int32)
    elif m in modalities.DYNAMIC:
      mean, std = record["stats"][m]
      out[m] = ((np.asarray(split[FIELDS[m]], np.float64) - mean) / std).astype(np.float32)
    else:
      out[m] = (choice_classes if m == "choice" else block_classes)(split[FIELDS[m]], where)
  return out


def behaviour_columns(dataset: str, data_dir: str) -> list[str]:
  """The names of the `behaviour` field's columns of a built data set (its metadata's
  comma-separated behaviour_name; [] when it has none)."""
  name = provenance.open_built(dataset, data_dir).info.metadata.get("behaviour_name", "")
  return [c.strip() for c in str(name).split(",")] if name else []


def named_traces(split: dict, columns) -> dict:
  """`split` with each trace modality's field (FIELDS) taken from the `behaviour` [K, T, D]
  column of that name (columns: behaviour_columns, one name per column), where the split
  lacks the field itself; otherwise `split` unchanged (unnamed columns stay unread)."""
  columns = list(columns)
  behaviour = split.get("behaviour")
  if behaviour is None or np.ndim(behaviour) != 3 or np.shape(behaviour)[-1] != len(columns):
    return split
  found = {FIELDS[m]: columns.index(FIELDS[m]) for m in modalities.DYNAMIC if FIELDS[m] in columns}
  return {**split, **{f: behaviour[..., i] for f, i in found.items() if f not in split}}


def named_session(session: pipeline.Session, data_dir: str) -> pipeline.Session:
  """`session` with each split's traces taken by name from its data set's `behaviour`
  columns (named_traces: bwb_binned's wheel speed and whisker motion energy)."""
  columns = behaviour_columns(session.name, data_dir)
  return dataclasses.replace(session, splits={k: named_traces(v, columns) for k, v in session.splits.items()})


def session_record(session, mods) -> dict:
  """What a NEDS checkpoint keeps of a session row (JSON): its name, id and regions, which of
  `mods` its train split has, and their statistics (trace_stats). session: a pipeline.Session."""
  train = session.splits["train"]
  return dict(
    name=session.name,
    session_id=session.info.session_id,
    region_names=list(session.info.region_names),
    present=present_modalities(train, mods),
    stats=trace_stats(train, mods),
  )
