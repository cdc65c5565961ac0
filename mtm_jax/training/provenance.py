"""Run provenance: what a run was trained with, recorded so that it is never resumed or
reused under another config or from another pretrained checkpoint.

Every run records (the "provenance" item of each checkpoint, and <workdir>/provenance.json,
written whole when the loop starts):
  config_hash   config_hash() of the run's resolved config (what <workdir>/config.json and
                the checkpoint's config item hold: the data sets and e.g. POYO's behaviour
                scale resolved by the task);
  request       the config the run was given (task-checked, paths absolute: trainer.
                resolved_config), before the task resolved its data, and request_hash, its
                config_hash(): what a resume or a study compares against;
  pretrained    for config.init.pretrained, the identity of the checkpoint it started from
                (pretrained_identity: path, step, that run's config_hash, fingerprint), else None.

config_hash(config): the SHA-256 (hex) of the canonical JSON of the config dict: keys sorted,
tuples as lists, floats by repr (Python's json), no whitespace. A checkpoint's config item
(JSON) hashes as the config it was saved from.

fingerprint(path, step): the SHA-256 over the files of <path>/checkpoints/<step> (every
item: parameters, optimiser state, config, sessions, progress), taking each file's path
relative to that folder, its size and its bytes, in sorted order. A copied or moved run
keeps it; any re-training (or rewritten file) changes it. It reads the whole checkpoint
once (well under a second for the models here; a fine-tune reads those parameters anyway).

Resume (trainer.resume) and study reuse (studies.runs.train_run) compare this run's
request and pretrained identity with the recorded ones and refuse any difference
(ProvenanceError, listing the differing fields), except in RESUMABLE: settings that do not
change the trained result. Fields the recorded request lacks (options added to the library
since; they keep defaults that leave training as it was, checkpoint.with_defaults) are not
compared. A checkpoint written before provenance was recorded (or imported by
experiments.import_checkpoint, step 0) has none: a resume checks only its family, model and
sessions (checkpoint.check_compatible), after a warning; a study refuses to reuse it.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import NamedTuple

import ml_collections
import numpy as np

from mtm_jax import files
from mtm_jax.training import config_checks

# Fields that may differ on resume: where the data sets are (their content is checked by the
# sessions' ids and neurons), how often the run logs, validates and checkpoints, how many
# checkpoints it keeps, and how many non-finite steps in a row stop it. None of them changes
# the parameters a finished run ends with (a resumed run continues bit for bit).
RESUMABLE = (
  "data.data_dir",
  "train.log_every",
  "train.eval_every",
  "train.checkpoint_every",
  "train.keep_checkpoints",
  "train.max_nonfinite_steps",
)
SHOWN = 10  # differing fields listed in an error; the rest are counted
FILE = "provenance.json"


class ProvenanceError(ValueError):
  """A run would be resumed or reused with another config or pretrained checkpoint."""


def _plain(value):
  if isinstance(value, ml_collections.ConfigDict):
    return value.to_dict()
  if isinstance(value, (np.generic, np.ndarray)):
    return value.tolist()
  raise TypeError(f"config value {value!r} ({type(value).__name__}) has no JSON form")


def canonical(config) -> str:
  """The canonical JSON of a config (ConfigDict or dict): keys sorted, tuples as lists, floats by repr."""
  data = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
  return json.dumps(data, sort_keys=True, separators=(",", ":"), default=_plain)


def config_hash(config) -> str:
  return hashlib.sha256(canonical(config).encode()).hexdigest()


def fingerprint(path: str, step: int) -> str:
  """The SHA-256 of the files of `path`'s checkpoint of `step` (see the module docstring)."""
  from mtm_jax.training import checkpoint  # pylint: disable=g-import-not-at-top

  root = os.path.join(checkpoint.checkpoint_dir(path), str(step))
  names = sorted(os.path.relpath(os.path.join(d, n), root) for d, _, ns in os.walk(root) for n in ns)
  digest = hashlib.sha256()
  for name in names:
    full = os.path.join(root, name)
    digest.update(f"{name}\0{os.path.getsize(full)}\0".encode())
    with open(full, "rb") as f:
      for chunk in iter(lambda: f.read(1 << 20), b""):
        digest.update(chunk)
  return digest.hexdigest()


def pretrained_identity(path: str, metadata) -> dict:
  """The identity of the checkpoint `metadata` (checkpoint.Metadata) read from run `path`."""
  return dict(
    path=path,
    step=metadata.step,
    config_hash=config_hash(metadata.config),
    fingerprint=fingerprint(path, metadata.step),
  )


def pretrained_of(config: ml_collections.ConfigDict):
  """(identity, checkpoint.Metadata) of config.init.pretrained's checkpoint (its config.init.step,
  or its newest readable one), or (None, None) without one."""
  from mtm_jax.training import checkpoint  # pylint: disable=g-import-not-at-top

  if not config.init.pretrained:
    return None, None
  metadata = checkpoint.read_metadata(config.init.pretrained, None if config.init.step < 0 else config.init.step)
  return pretrained_identity(config.init.pretrained, metadata), metadata


class Pretrained(NamedTuple):
  """The metadata of config.init.pretrained's checkpoint (its parameters are read only
  when a run starts from them): what the trainer hands a task (Task.input, Task.phases)."""

  path: str
  step: int | None
  config: ml_collections.ConfigDict
  records: list[dict]


def run_hash(workdir: str, step: int | None = None) -> str:
  """config_hash() of the config saved with `workdir`'s checkpoint of `step` (default: the newest)."""
  from mtm_jax.training import checkpoint  # pylint: disable=g-import-not-at-top

  return config_hash(checkpoint.load_metadata(workdir, step)[0])


def record(request: dict, config: ml_collections.ConfigDict, pretrained: dict | None) -> dict:
  """A run's provenance (module docstring). request: the given config as a JSON dict."""
  return dict(
    config_hash=config_hash(config), request_hash=config_hash(request), request=request, pretrained=pretrained
  )


def write(workdir: str, provenance: dict) -> None:
  """<workdir>/provenance.json, written whole (call on process 0 only)."""
  with files.atomic_write(os.path.join(workdir, FILE), encoding="utf-8") as f:
    json.dump(provenance, f, indent=2, sort_keys=True)
    f.write("\n")


def _flat(data, prefix: str = "") -> dict:
  out = {}
  for k, v in data.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


_ABSENT = object()


def differences(recorded: dict, request: dict) -> list[tuple[str, object, object]]:
  """(dotted field, recorded value, requested value or _ABSENT) of every field outside
  RESUMABLE that differs; fields the recorded config lacks are not compared (module docstring)."""
  old, new = _flat(json.loads(canonical(recorded))), _flat(json.loads(canonical(request)))
  for flat in (old, new):  # a run recorded with an older family id is the same family
    if "family" in flat:
      flat["family"] = config_checks.family_of(flat)
  return [(k, old[k], new.get(k, _ABSENT)) for k in sorted(old) if k not in RESUMABLE and old[k] != new.get(k, _ABSENT)]


def _show(value) -> str:
  """A value in an error: "(absent)", hashes shortened to 12 characters, else JSON (at most 80 characters)."""
  if value is _ABSENT:
    return "(absent)"
  if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
    return value[:12]
  text = json.dumps(value)
  return text if len(text) <= 80 else text[:77] + "..."


def listing(lines: list[str]) -> str:
  """At most SHOWN lines, then "and N more"."""
  shown = [f"  {line}" for line in lines[:SHOWN]]
  if len(lines) > SHOWN:
    shown.append(f"  and {len(lines) - SHOWN} more")
  return "\n".join(shown)


def check(recorded: dict, request: dict, pretrained: dict | None, where: str, advice: str) -> None:
  """Raises ProvenanceError when `request` (a JSON config dict) differs from the recorded
  provenance's outside RESUMABLE, or config.init.pretrained's checkpoint identity
  `pretrained` from the recorded one: one message listing the differences, then `advice`."""
  lines = [f"config.{k}: {_show(a)} -> {_show(b)}" for k, a, b in differences(recorded["request"], request)]
  before = recorded.get("pretrained")
  if before != pretrained:
    fields = ("path", "step", "config_hash", "fingerprint")
    before, now = before or {}, pretrained or {}
    changed = [f"{f} {_show(before.get(f))} -> {_show(now.get(f))}" for f in fields if before.get(f) != now.get(f)]
    lines.append(f"config.init.pretrained's checkpoint changed (re-trained or replaced?): {', '.join(changed)}")
  if lines:
    raise ProvenanceError(
      f"{where}: holds a run that does not match this one:\n{listing(lines)}\n{advice} "
      f"(fields that may change: {', '.join(f'config.{f}' for f in RESUMABLE)})"
    )
