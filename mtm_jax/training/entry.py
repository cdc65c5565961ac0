"""What every program's `if __name__ == "__main__"` does (experiments/*, data_builders.build):

  entry.run(main)

re-runs with huge pages on the CPU (host_memory.use_huge_pages; a program started with
`python -m` has re-run already, when its package was imported) and logs it, reads JAX's flags from absl, sets
up quiet logging, and runs `main` with absl's app.run.

Quiet by default (--verbosity=0): the programs' own lines (one per log step, one per
checkpoint, a few at the start) and every library's warnings and errors, one line each.
--verbosity=1 (-v 1) brings back the libraries' INFO (Orbax, TFDS, grain, JAX,
TensorBoard), their tracebacks and TFDS's progress bars; -v 2 and above is absl's DEBUG.
A checkpoint that cannot be written (saver.SaveFailed) ends the program with its
one line and status 1; any other exception (bad input: a missing data set, an unknown
split) with `error: <type>: <message>` and status 1, its traceback behind --verbosity=1.

Flags: a config override naming no field (`--config.train.step=20`) is one line,
`error: --config.train.step: no such field in config.train; did you mean
config.train.steps?`, and status 1 (as absl's own flag errors). Ctrl-C: the training loop
saves its step and exits with 130 (stopping.Interrupted); anywhere else the program
prints `interrupted` and exits with 130 (its traceback behind --verbosity=1), also while
Python imports the program, before `main` (interrupt.guard_program_of).
"""

from __future__ import annotations

import logging as std_logging
import os
import sys
import warnings

from absl import app, flags, logging
import jax

from mtm_jax.training import host_memory, interrupt, overrides, saver

OWN_PACKAGES = ("mtm_jax", "experiments", "data_builders", "benchmarks")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def is_own(pathname: str, root: str = ROOT) -> bool:
  """Whether a log record's source file belongs to this project's packages under `root`."""
  relative = os.path.relpath(os.path.abspath(pathname), root)
  return relative.split(os.sep)[0] in OWN_PACKAGES


TFDS_ON_DEMAND = "Using custom data configuration"  # TFDS: a builder config not in BUILDER_CONFIGS


class QuietLibraries(std_logging.Filter):
  """Passes this project's records, and the libraries' warnings and errors without their
  tracebacks (one line each); drops the libraries' INFO and DEBUG, and TFDS's warning that a
  builder config was made on demand (every NWB, IBL and BWB data set's is: they are named, not
  registered)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if is_own(record.pathname):
      return True
    if record.levelno < std_logging.WARNING:
      return False
    if str(record.msg).startswith(TFDS_ON_DEMAND):
      return False
    record.exc_info, record.exc_text, record.stack_info = None, None, None
    return True


def quiet_unraisable():
  """A sys.unraisablehook that logs exceptions nobody can catch (raised in a library's
  abandoned background callbacks, e.g. Orbax's after a failed save) as one warning line
  per kind, without traceback."""
  shown = set()

  def hook(unraisable) -> None:
    kind = f"{type(unraisable.exc_value).__name__}: {_first_line(unraisable.exc_value)}"
    if kind not in shown:
      shown.add(kind)
      logging.warning("ignored in a background callback: %s (repeats are not shown; --verbosity=1 shows each)", kind)

  return hook


def _first_line(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  return lines[0][:300] if lines else ""


def quiet_warnings():
  """A warnings.showwarning that logs each distinct Python warning once, as one line,
  `<Category>: <message>` (Python's own prints the file, line and source of the warn call,
  and shows a message again whenever a library changes the warning filters)."""
  shown = set()

  def show(message, category, filename, lineno, file=None, line=None) -> None:
    del filename, lineno, file, line
    if (category, str(message)) not in shown:
      shown.add((category, str(message)))
      logging.warning("%s: %s", category.__name__, message)

  return show


def set_up_logging(verbosity: int) -> None:
  """Quiet logging for `verbosity` (absl's --verbosity): <= 0 quiet (see the module
  docstring; Python warnings one line each), 1 every INFO, >= 2 absl's levels (DEBUG and
  vlog)."""
  handler = logging.get_absl_handler()
  if verbosity <= 0:
    handler.addFilter(QuietLibraries())
    sys.unraisablehook = quiet_unraisable()
    warnings.showwarning = quiet_warnings()
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    tfds.disable_progress_bar()
  elif verbosity == 1:
    logging.set_verbosity(logging.INFO)  # absl's 1 is DEBUG; here it is the libraries' INFO


def _main(main, argv):
  verbosity = flags.FLAGS.verbosity  # set_up_logging may change the flag (absl's INFO is 0)
  set_up_logging(verbosity)
  if host_memory.reran():
    logging.info(
      "re-ran with %s=1: huge pages for XLA's host buffers (%s=0 turns it off)",
      host_memory.TUNABLE,
      host_memory.OPT_OUT,
    )
  try:
    return main(argv)
  except KeyboardInterrupt:
    if verbosity > 0:
      raise
    _stop_interrupted()
  except saver.SaveFailed as error:
    # The run's writers and checkpoint manager are closed; Orbax's abandoned background
    # writes would only add tracebacks at interpreter shutdown, so it is skipped.
    logging.flush()
    print(error.code, file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)  # pylint: disable=protected-access
  except app.UsageError:
    raise  # absl prints the usage
  except Exception as error:  # pylint: disable=broad-except
    if verbosity > 0:
      raise
    # Bad input: our errors name the file or field, so their message is what a user needs.
    logging.flush()
    print(error_lines(error), file=sys.stderr, flush=True)
    sys.exit(1)


def error_lines(error: BaseException) -> str:
  """What a program prints for an exception it stops on, without --verbosity: the
  exception's type and message, and how to see the traceback."""
  return f"error: {type(error).__name__}: {str(error).strip()}\n(--verbosity=1 shows the traceback)"


def define_print_config() -> flags.FlagHolder:
  """--print_config, for a program with --config and --workdir (which it then does not
  require): print the resolved config and exit."""
  holder = flags.DEFINE_bool(
    "print_config", False, "Print the resolved config (every field, as the run's <workdir>/config.json) and exit."
  )
  flags.register_multi_flags_validator(
    ["workdir", "print_config"],
    lambda values: values["workdir"] is not None or values["print_config"],
    message="--workdir: required (the directory for checkpoints and logs), unless --print_config",
  )
  return holder


def _stop_interrupted() -> None:
  """Ctrl-C outside the training loop: one line and status 130 (128 + SIGINT)."""
  logging.flush()
  interrupt.stop()


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """absl's flag parsing (app.parse_flags_with_usage), with a config override that names
  no field as one line (overrides.unknown_field) and status 1, and Ctrl-C as `interrupted`."""
  try:
    return flag_values(argv)
  except KeyboardInterrupt:  # while a config file is imported
    _stop_interrupted()
  except (flags.Error, AttributeError, KeyError, IndexError) as error:
    message = overrides.unknown_field(argv, flag_values)
    if message is None and isinstance(error, flags.Error):
      message = f"FATAL Flags parsing error: {error}\nPass --helpshort or --helpfull to see help on flags."
    if message is None:
      raise
    print(message, file=sys.stderr, flush=True)
    sys.exit(1)


def run(main) -> None:
  """The program's start: huge pages, JAX's absl flags, quiet logging, app.run(main)."""
  host_memory.use_huge_pages()
  jax.config.config_with_absl()
  interrupt.release()  # Ctrl-C while the program was imported: interrupt.guard_program_of; from here, _main's
  app.run(lambda argv: _main(main, argv), flags_parser=parse_flags)
