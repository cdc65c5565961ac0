"""Huge pages for XLA's host buffers: the programs re-run themselves once with glibc's
`glibc.malloc.hugetlb=1` tunable.

XLA CPU allocates each execution's temporary buffer afresh (POYO small's train step at
batch 128: 6 GB) and frees it afterwards. glibc serves an allocation that large with a
new mmap, so every step page-faults all of it back in, 4 KiB at a time: 1.5 million
faults and 3.8 s of kernel time per step, against 9.6 s of compute on two cores. With
the tunable glibc advises the kernel to back such mappings with transparent huge pages
(on kernels whose THP mode is "madvise", the common default): 512 times fewer faults.
POYO small, batch 128: 7.2 -> 5.1 s per step, peak memory unchanged; NDT1, whose
buffers are small, is unchanged. Keeping the freed memory in glibc's heap instead
(M_MMAP_MAX = 0) also removes the faults, but the next step's buffer is allocated
while the last one is still being freed, and the heap grew by a whole buffer every few
steps (7 -> 18 GB in ten steps).

glibc reads its tunables only when a process starts, hence the re-run. It is for the
CPU backend alone: with an accelerator (a GPU or TPU device file, or JAX_PLATFORMS naming
another platform first) nothing is re-run. `MTM_JAX_HUGE_PAGES=0` in the environment
turns it off.

A program started as `python -m experiments.<name>` (likewise data_builders, benchmarks)
re-runs when its package is imported, before the program's own heavy imports (JAX, TFDS,
Orbax: about 4 s), which would otherwise run twice; `entry.run` re-runs the others.
"""

from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "MTM_JAX_HUGE_PAGES"  # "0": never re-run
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
MIN_GLIBC = (2, 35)  # the first glibc with the hugetlb tunable
RERUN_MARK = "MTM_JAX_HUGE_PAGES_RERUN"  # the pid of the process that re-ran itself
# Device files of accelerators JAX would use (NVIDIA, AMD ROCm, Cloud TPU).
ACCELERATOR_FILES = ("/dev/nvidiactl", "/dev/kfd", "/dev/accel0")
_OPTIONS_WITH_VALUE = ("-X", "-W", "--check-hash-based-pycs")  # the interpreter's options that take one


def thp_mode(path: str = THP_MODE_FILE) -> str | None:
  """The kernel's transparent-huge-page mode ("always", "madvise" or "never"): the
  bracketed word of `path`; None when the file is missing or unreadable (not Linux)."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1 : end] if 0 <= start < end else None


def glibc_version() -> tuple[int, int] | None:
  """(major, minor) of the C library when it is glibc, else None (musl, macOS)."""
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    major, minor = version.split(".")[:2]
    return (int(major), int(minor)) if name == "glibc" else None
  except (AttributeError, ValueError, OSError):
    return None


def runs_on_cpu(environ: dict, exists=os.path.exists) -> bool:
  """Whether JAX will run on the CPU, judged before it is imported: JAX_PLATFORMS' first
  platform when it is set, else whether no accelerator device file exists."""
  platforms = environ.get("JAX_PLATFORMS", "").strip()
  if platforms:
    return platforms.split(",")[0].strip().lower() == "cpu"
  return not any(exists(path) for path in ACCELERATOR_FILES)


def huge_page_environment(
  environ: dict, mode: str | None, glibc: tuple[int, int] | None, on_cpu: bool = True
) -> dict | None:
  """The environment to re-run the process with, or None when a re-run would change
  nothing: opted out, an accelerator (not `on_cpu`), the tunable already set (so a re-run
  happens at most once), not glibc >= 2.35, or a THP mode other than "madvise" ("always"
  needs no advice, "never" takes none)."""
  if environ.get(OPT_OUT, "1") == "0" or not on_cpu or mode != "madvise" or glibc is None or glibc < MIN_GLIBC:
    return None
  tunables = environ.get("GLIBC_TUNABLES", "")
  if any(item.split("=")[0] == TUNABLE for item in tunables.split(":") if item):
    return None
  return {
    **environ,
    "GLIBC_TUNABLES": f"{tunables}:{TUNABLE}=1" if tunables else f"{TUNABLE}=1",
    RERUN_MARK: str(os.getpid()),
  }


def use_huge_pages(mode_file: str = THP_MODE_FILE) -> None:
  """Re-runs this program (same interpreter, options and arguments: sys.orig_argv) with
  huge pages for large allocations, when `huge_page_environment` asks for it; returns
  otherwise. Call it first in `if __name__ == "__main__"`, before anything is written
  or any JAX backend starts: the process image is replaced (same pid). `mode_file`: the
  kernel's THP mode file (tests point it elsewhere)."""
  env = huge_page_environment(dict(os.environ), thp_mode(mode_file), glibc_version(), runs_on_cpu(os.environ))
  if env is None or not sys.executable or not getattr(sys, "orig_argv", None):
    return  # nothing to change, or no interpreter path to re-run (an embedded Python)
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, env)


def reran() -> bool:
  """Whether this process is the re-run of itself (the pid survives execve; its children,
  which inherit the environment, have other pids)."""
  return os.environ.get(RERUN_MARK) == str(os.getpid())


def started_as_module(orig_argv, package: str) -> bool:
  """Whether the interpreter's command line `orig_argv` runs a module of `package`
  (`python [options] -m <package>.<module> ...`)."""
  args = list(orig_argv[1:])
  i = 0
  while i < len(args) and args[i].startswith("-") and args[i] != "-":
    arg = args[i]
    if arg == "-m":
      return i + 1 < len(args) and args[i + 1].startswith(package + ".")
    if arg.startswith("-m"):
      return arg[2:].startswith(package + ".")
    if arg == "-c" or arg.startswith("-c"):
      return False
    i += 2 if arg in _OPTIONS_WITH_VALUE else 1
  return False


def rerun_program_of(package: str) -> None:
  """use_huge_pages() when this interpreter was started to run a module of `package`:
  called from the programs' packages' __init__, it re-runs before the program's imports."""
  if started_as_module(getattr(sys, "orig_argv", ()), package):
    use_huge_pages()
