"""Config overrides on the command line (`--config.train.steps=60`, ml_collections
config_flags) that name no field: one line naming the override and the closest field.

ml_collections raises an AttributeError or KeyError from deep inside absl's flag parsing
(a 57-line traceback ending in `Did you mean "steps"`); entry.parse_flags asks
`unknown_field` which override it was and prints its line instead.
"""

from __future__ import annotations

import difflib
import re

import ml_collections
from absl import flags


def _config_values(argv: list[str], name: str) -> list[str]:
  """The values given to --<name> in argv (`--name=value` or `--name value`)."""
  values = []
  for i, arg in enumerate(argv):
    match = re.fullmatch(rf"--?{re.escape(name)}(=(.*))?", arg)
    if match and match.group(1):
      values.append(match.group(2))
    elif match and i + 1 < len(argv):
      values.append(argv[i + 1])
  return values


def _overrides(argv: list[str], name: str) -> list[str]:
  """The field paths argv overrides in config flag --<name> (`train.steps`)."""
  paths = []
  for arg in argv:
    match = re.match(rf"--?(no)?{re.escape(name)}\.([^=]+)", arg)
    if match:
      paths.append(match.group(2))
  return paths


def missing_field(config, name: str, path: str) -> str | None:
  """The one-line error for override `path` of config flag `name` when a part of it names
  no field of `config`, else None."""
  node, parts = config, [p for p in re.split(r"[.\[\]]", path) if p]
  for i, part in enumerate(parts):
    where = ".".join([name, *parts[:i]])
    if isinstance(node, ml_collections.ConfigDict):
      if part in node:
        node = node[part]
        continue
      keys = sorted(node.keys())
      close = difflib.get_close_matches(part, keys, n=1)
      hint = f"did you mean {where}.{close[0]}?" if close else f"its fields: {', '.join(keys)}"
      return f"error: --{name}.{path}: no such field in {where}; {hint}"
    if isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
      node = node[int(part)]
      continue
    return f"error: --{name}.{path}: {where} is a value ({type(node).__name__}), not a section with fields"
  return None


def unknown_field(argv: list[str], flag_values: flags.FlagValues) -> str | None:
  """The one-line error for the first config override in argv (flag files expanded) that
  names no field of its config, else None (the config itself then did not load, or the
  error was another one)."""
  argv = flag_values.read_flags_from_files(argv, force_gnu=False)
  for name, flag in flag_values._flags().items():  # pylint: disable=protected-access
    if flag.flag_type() != "config object" or not _overrides(argv, name):
      continue
    values = _config_values(argv, name)
    try:
      config = flag.parser.parse(values[-1]) if values else flag.value
    except Exception:  # pylint: disable=broad-except  # the config file itself failed: not ours to explain
      return None
    for path in _overrides(argv, name):
      message = missing_field(config, name, path)
      if message is not None:
        return message
  return None
