"""What a built data set was read from, and whether those files are still the same.

Builders of data sets with external files (NWB, IBL) store a record in the data set's
metadata under `source_files` (written by TFDS together with the data, so a data set
never exists without its record):

  root     absolute folder the files were read from (the build's manual_dir)
  pattern  the glob under root that chose the files (NWB configs), or None
  files    [{path (relative to root), size (bytes), mtime_ns, sha256 (files up to
           HASH_LIMIT bytes; None above)}]
  options  what the build chose that the files do not fix (a user's NWB file: the
           behaviour series, the binned window), or absent; check_options compares a
           build's request with it

A file is unchanged when its size and hash (or, for large files, its size and
modification time) are the same. Synthetic data sets have no record: nothing to check.
"""

from __future__ import annotations

import glob
import hashlib
import os
import warnings

HASH_LIMIT = 8 << 20  # bytes: files up to 8 MiB are hashed, larger ones compared by size and mtime
RECORD_KEY = "source_files"


class SourceChangedError(ValueError):
  """A built data set's source files changed after it was built."""


class SourceUnavailableWarning(UserWarning):
  """A built data set's source folder is not reachable here: its files were not checked."""


def _sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def file_identity(root: str, rel: str) -> dict:
  """{path, size, mtime_ns, sha256} of file `rel` under `root` (sha256 None above HASH_LIMIT)."""
  full = os.path.join(root, rel)
  stat = os.stat(full)
  return dict(
    path=rel,
    size=int(stat.st_size),
    mtime_ns=int(stat.st_mtime_ns),
    sha256=_sha256(full) if stat.st_size <= HASH_LIMIT else None,
  )


def _matches(root: str, pattern: str) -> list[str]:
  return sorted(os.path.relpath(f, root) for f in glob.glob(os.path.join(root, pattern), recursive=True))


def record(root: str, paths, pattern: str | None = None, options: dict | None = None) -> dict:
  """The record of the files `paths` (absolute, or relative to root) read under `root`,
  and the build's `options` (see the module docstring)."""
  root = os.path.abspath(os.path.expanduser(str(root)))
  rels = sorted({os.path.relpath(os.path.abspath(os.path.join(root, p)), root) for p in paths})
  out = dict(root=root, pattern=pattern, files=[file_identity(root, rel) for rel in rels])
  return out if options is None else dict(out, options=dict(options))


def check_options(dataset: str, data_dir: str, source: dict | None, requested: dict, flags: dict) -> None:
  """Raises SourceChangedError when a build asks for options (`requested`, None values: no
  request) other than those `dataset` was built with; flags: {option: the flag that sets it}."""
  built = (source or {}).get("options") or {}
  other = [
    f"{flags.get(k, k)}={v} (built with {'none' if built[k] is None else built[k]})"
    for k, v in requested.items()
    if v is not None and k in built and built[k] != v
  ]
  if other:
    raise SourceChangedError(
      f"data set {dataset!r} in {data_dir} was built with other options than asked for: {'; '.join(other)}; "
      f"{rebuild_hint(dataset, data_dir, (source or {}).get('root'))} with those flags, or leave them out to use it"
    )


def _file_change(root: str, entry: dict) -> str | None:
  full = os.path.join(root, entry["path"])
  if not os.path.isfile(full):
    return f"{full}: removed"
  now = os.stat(full)
  if now.st_size != entry["size"]:
    return f"{full}: size {entry['size']} -> {now.st_size} bytes"
  if entry.get("sha256") is not None:
    return None if _sha256(full) == entry["sha256"] else f"{full}: content changed (sha256)"
  return None if now.st_mtime_ns == entry["mtime_ns"] else f"{full}: modified (same size, other mtime)"


def changes(source: dict | None, root: str | None = None) -> list[str] | None:
  """What changed in the files of record `source` (one line each; [] when nothing did or
  there is no record), read under `root` (default: the recorded root). None when that
  folder does not exist here (e.g. the data set was copied to another machine)."""
  if not source:
    return []
  root = os.path.abspath(os.path.expanduser(str(root or source["root"])))
  if not os.path.isdir(root):
    return None
  out = [c for c in (_file_change(root, e) for e in source["files"]) if c is not None]
  if source.get("pattern"):
    recorded, now = [e["path"] for e in source["files"]], _matches(root, source["pattern"])
    if now != recorded:
      out.append(
        f"{root}: the files matching {source['pattern']!r} are now {now}, the data set was built from {recorded}"
      )
  return out


def rebuild_hint(dataset: str, data_dir: str, root: str) -> str:
  return (
    f"rebuild it with `python -m data_builders.build --rebuild={dataset} --data_dir={data_dir} "
    f"--manual_dir={root}` (only that data set is rebuilt)"
  )


def check(dataset: str, data_dir: str, source: dict | None, root: str | None = None) -> None:
  """Raises SourceChangedError naming the changed files of `dataset`; warns (once per data
  set, Python's warning registry) when its source folder is not reachable."""
  changed = changes(source, root)
  where = root or (source or {}).get("root")
  if changed is None:
    warnings.warn(
      f"data set {dataset!r}: its source folder {where} is not here; its files were not checked",
      SourceUnavailableWarning,
      stacklevel=3,
    )
  elif changed:
    built_from = (source or {}).get("root")
    moved = ""
    if root is not None and built_from and os.path.abspath(os.path.expanduser(root)) != built_from:
      moved = f" (it was built from {built_from}; the files are now read from {root}, e.g. another --manual_dir)"
    raise SourceChangedError(
      f"data set {dataset!r} in {data_dir}: its source changed since it was built{moved}: "
      f"{'; '.join(changed)}; {rebuild_hint(dataset, data_dir, where)}"
    )


def aside_dir(data_dir: str) -> str:
  """Where a rebuild keeps the previous version of data set folder `data_dir`
  (<config>/<version>) until the new one is complete: <config>/replaced.<version>."""
  config_dir, version = os.path.split(data_dir)
  return os.path.join(config_dir, f"replaced.{version}")


def is_built(builder) -> bool:
  """Whether TFDS `builder`'s data set is prepared (TFDS's own test warns about a
  version folder without dataset_info.json when the folder does not even exist)."""
  return os.path.isdir(builder.data_dir) and builder.is_prepared()


def open_built(dataset: str, data_dir: str):
  """The TFDS builder of built data set `dataset` (NAME/CONFIG) under data_dir, its source
  files checked (check). FileNotFoundError when it is not built."""
  import tensorflow_datasets as tfds  # imported here: event sessions and windows need no TFDS

  data_dir = os.path.abspath(os.path.expanduser(data_dir))
  hint = f"build it with `python -m data_builders.build --dataset={dataset} --data_dir={data_dir}`"
  aside = sorted(glob.glob(os.path.join(data_dir, *dataset.split("/", 1), "replaced.*")))
  if aside:
    hint = (
      f"a rebuild of it was interrupted, and its previous version is in {aside[0]}: the next "
      f"`python -m data_builders.build --dataset={dataset} --data_dir={data_dir}` puts it back"
    )
  try:
    builder = tfds.builder(dataset, data_dir=data_dir)
  except Exception as e:  # tfds raises several types for unknown names and configs
    # TFDS's message goes on with its whole catalogue of data sets: its first line only.
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise FileNotFoundError(f"data set {dataset!r} not found under {data_dir}: {hint} ({reason})") from None
  if not is_built(builder):
    raise FileNotFoundError(f"data set {dataset!r} is not prepared under {data_dir}: {hint}")
  check(dataset, data_dir, builder.info.metadata.get(RECORD_KEY))
  return builder
