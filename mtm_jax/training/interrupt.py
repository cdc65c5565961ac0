"""Ctrl-C in a program: one line, `interrupted`, and status 130 (128 + SIGINT), from its
first import on.

`entry.run` handles Ctrl-C in `main` (and the training loop saves its step first:
stopping.Interrupted). Before that, Python imports the program (JAX, TFDS, Orbax: seconds),
and a KeyboardInterrupt there would print Python's traceback. The programs' packages
(experiments, data_builders, benchmarks) call `guard_program_of(__name__)` first thing in
their __init__, which `python -m <package>.<name>` runs before the program's own imports:
an uncaught KeyboardInterrupt then prints `interrupted` and exits with 130 (the traceback
behind --verbosity=1 or -v 1, as entry's). entry.run hands Ctrl-C back to its own
handling (`release`). Standard library only, so that it is cheap to import.
"""

from __future__ import annotations

import os
import sys

from mtm_jax.training import host_memory

EXIT_CODE = 130  # 128 + SIGINT
_previous = None  # the excepthook guard_program_of replaced


def stop() -> None:
  """Ctrl-C outside the training loop: `interrupted` on stderr and status 130."""
  sys.stdout.flush()
  print("interrupted", file=sys.stderr, flush=True)
  sys.exit(EXIT_CODE)


def verbose(argv) -> bool:
  """Whether the command line asks for absl's verbosity above 0 (--verbosity=1, -v 1, ...)."""
  for i, arg in enumerate(argv):
    name, eq, value = arg.lstrip("-").partition("=")
    if arg.startswith("-") and name in ("v", "verbosity"):
      value = value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
      return value.lstrip("-").isdigit() and int(value) > 0
  return False


def _hook(kind, value, traceback) -> None:
  """sys.excepthook while a program is imported: `interrupted` and 130 for Ctrl-C."""
  if issubclass(kind, KeyboardInterrupt) and not verbose(sys.argv[1:]):
    sys.stdout.flush()
    print("interrupted", file=sys.stderr, flush=True)
    os._exit(EXIT_CODE)  # pylint: disable=protected-access  (an excepthook cannot sys.exit)
  _previous(kind, value, traceback)


def guard_program_of(package: str) -> None:
  """When this interpreter was started to run a module of `package` (`python -m
  <package>.<name>`), Ctrl-C until entry.run is `interrupted` and status 130."""
  global _previous
  if host_memory.started_as_module(getattr(sys, "orig_argv", ()), package) and sys.excepthook is not _hook:
    _previous, sys.excepthook = sys.excepthook, _hook


def release() -> None:
  """Undoes guard_program_of (entry.run: `main` has its own handling of Ctrl-C)."""
  if sys.excepthook is _hook:
    sys.excepthook = _previous
