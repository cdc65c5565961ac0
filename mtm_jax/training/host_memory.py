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

glibc reads its tunables only when a process starts, hence the re-run. It applies to
host memory only: it changes nothing on a GPU or TPU but the host's own allocations.
`MTM_JAX_HUGE_PAGES=0` in the environment turns it off.
"""

from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "MTM_JAX_HUGE_PAGES"  # "0": never re-run
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
MIN_GLIBC = (2, 35)  # the first glibc with the hugetlb tunable


def thp_mode(path: str = THP_MODE_FILE) -> str | None:
  """The kernel's transparent-huge-page mode ("always", "madvise" or "never"): the
  bracketed word of `path`; None when the file is missing or unreadable (not Linux)."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else None


def glibc_version() -> tuple[int, int] | None:
  """(major, minor) of the C library when it is glibc, else None (musl, macOS)."""
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    major, minor = version.split(".")[:2]
    return (int(major), int(minor)) if name == "glibc" else None
  except (AttributeError, ValueError, OSError):
    return None


def huge_page_environment(environ: dict, mode: str | None, glibc: tuple[int, int] | None) -> dict | None:
  """The environment to re-run the process with, or None when a re-run would change
  nothing: opted out, the tunable already set (so a re-run happens at most once), not
  glibc >= 2.35, or a THP mode other than "madvise" ("always" needs no advice, "never"
  takes none)."""
  if environ.get(OPT_OUT, "1") == "0" or mode != "madvise" or glibc is None or glibc < MIN_GLIBC:
    return None
  tunables = environ.get("GLIBC_TUNABLES", "")
  if any(item.split("=")[0] == TUNABLE for item in tunables.split(":") if item):
    return None
  return {**environ, "GLIBC_TUNABLES": f"{tunables}:{TUNABLE}=1" if tunables else f"{TUNABLE}=1"}


def use_huge_pages(mode_file: str = THP_MODE_FILE) -> None:
  """Re-runs this program (same interpreter, options and arguments: sys.orig_argv) with
  huge pages for large allocations, when `huge_page_environment` asks for it; returns
  otherwise. Call it first in `if __name__ == "__main__"`, before anything is written
  or any JAX backend starts: the process image is replaced (same pid). `mode_file`: the
  kernel's THP mode file (tests point it elsewhere)."""
  env = huge_page_environment(dict(os.environ), thp_mode(mode_file), glibc_version())
  if env is None or not sys.executable or not getattr(sys, "orig_argv", None):
    return  # nothing to change, or no interpreter path to re-run (an embedded Python)
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, env)
