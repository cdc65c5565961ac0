"""experiments.pretrain exactly as it runs, on a disk that is full from the checkpoint
of step FULL_FROM_STEP on: every file written into that checkpoint (or a later one)
fails with ENOSPC, as on a full file system (for test_faults; no root needed).

  python -m tests.full_disk_worker FULL_FROM_STEP <experiments.pretrain flags>
"""

import errno
import os
import re
import runpy
import sys

from etils import epath

_STEP_DIR = re.compile(r"/(\d+)\.orbax-checkpoint-tmp")


def _full_from(step: int, open_file):
  """`open_file` (a path's open method) that fails with ENOSPC when writing into the
  checkpoint of a step >= `step`."""

  def wrapped(self, mode="r", *args, **kwargs):
    match = _STEP_DIR.search(os.fspath(self))
    if match and int(match.group(1)) >= step and any(c in mode for c in "wax+"):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(self))
    return open_file(self, mode, *args, **kwargs)

  return wrapped


if __name__ == "__main__":
  full_from = int(sys.argv.pop(1))
  path_type = type(epath.Path("/"))
  path_type.open = _full_from(full_from, path_type.open)
  sys.argv[0] = "experiments.pretrain"
  runpy.run_module("experiments.pretrain", run_name="__main__", alter_sys=True)
