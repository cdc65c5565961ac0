"""Prints, as JSON, the absl flags each program given on the command line defines, without
running it: `python -m tests.program_flags experiments.pretrain data_builders.build ...`
(from the repository root)
-> {program: {"flags": [names], "bool": [names], "config": [names], "alias": {alias: flag}}}.

Each program is imported in turn (one process: the imports are shared); after reading
FLAGS, the flags this project's modules (PACKAGES) added are removed and the modules that
defined them forgotten, so the next program registers its own (pretrain and evaluate both
define --workdir) and shared ones (experiments.multihost) again. A program's list holds
every flag registered at that point: its own, its imports', absl's."""

import importlib
import json
import sys

from absl import app, flags, logging  # noqa: F401  absl's own flags, registered once before any program

PACKAGES = ("experiments", "data_builders", "benchmarks", "mtm_jax")  # this project's: their flags are forgotten


def parsed(args: list[str]) -> dict:
  """{name: [value, present]} of every flag after parsing the command line `args` (values
  as JSON allows: lists, strings, numbers; others as their str)."""
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["program", *args])
  out = {}
  for name in flags.FLAGS:
    value = flags.FLAGS[name].value
    out[name] = [value if isinstance(value, (list, str, int, float, bool, type(None))) else str(value)]
    out[name].append(bool(flags.FLAGS[name].present))
  flags.FLAGS.unparse_flags()
  return out


def program_flags(module: str, parse: tuple[list[str], ...] = ()) -> dict:
  """{"flags", "bool", "config", "alias": {alias: flag}} of `module`, and "parsed": `parsed`
  of each command line of `parse`."""
  before_flags, before_modules = set(flags.FLAGS), set(sys.modules)
  importlib.import_module(module)
  names = sorted(flags.FLAGS)
  out = dict(
    flags=names,
    bool=[n for n in names if flags.FLAGS[n].boolean],
    config=[n for n in names if type(flags.FLAGS[n].parser).__name__ == "ConfigFileFlagParser"],
    alias={n: flags.FLAGS[n].help.removeprefix("Alias for --").rstrip(".") for n in names if is_alias(n)},
    parsed=[parsed(args) for args in parse],
  )
  by_module = flags.FLAGS.flags_by_module_dict()
  defining = {m for m in by_module if m.split(".")[0] in PACKAGES} & (set(sys.modules) - before_modules)
  ours = {f.name for m, defined in by_module.items() if m.split(".")[0] in PACKAGES for f in defined}
  added = ours - before_flags  # also those a program defined through a shared module (entry's --print_config)
  for name in added:
    delattr(flags.FLAGS, name)
  for name in defining:
    del sys.modules[name]
    parent, _, child = name.rpartition(".")
    if parent in sys.modules and hasattr(sys.modules[parent], child):
      delattr(sys.modules[parent], child)  # else `from parent import child` finds the old module
  return out


def is_alias(name: str) -> bool:
  return type(flags.FLAGS[name]).__name__ == "_FlagAlias"  # flags.DEFINE_alias


if __name__ == "__main__":
  print(json.dumps({m: program_flags(m) for m in sys.argv[1:]}))
