"""Our data sets of BWB session files: their config names, and the session files of a BWB root.

A BWB root (a build's `--manual_dir`) holds the files as BWB's bucket lays them out:
`<root>/<build>/ibl_brain_wide_bench_2026/<eval|pretrain>/<eid>.h5`, build `all_units` or
`selected_units`. One data set is one file read with one split set (mtm_jax.bwb.events):
`pretrain` (pretrain_train / pretrain_val), `ts1` or `ts2` (eval files). Its config name is
`bwb_<all|sel>_<split set>_<eid>`, e.g. `bwb_sel_ts2_0a1b2c3d-0000-4000-8000-000000000001`;
the eid keeps its dashes (TFDS config names allow letters, digits, `_`, `-`, `.` and `+`, and the
IBL configs are named by their eids likewise). Every builder of BWB data sets
(spike_events, bwb_binned) uses these names.

The default data sets of a session (`default_configs`): a pretrain session as `pretrain` from
the selected_units build; an eval session as `ts1` from the all_units build and `ts2` from the
selected_units build (the builds BWB's suites use).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re

BRAINSET = "ibl_brain_wide_bench_2026"
BUILDS = {"all": "all_units", "sel": "selected_units"}  # short name in config names -> build folder
SPLIT_SETS = ("pretrain", "ts1", "ts2")
KINDS = ("eval", "pretrain")  # folders of a build
PREFIX = "bwb_"
_EID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_NAME = re.compile(rf"^{PREFIX}(?P<short>all|sel)_(?P<splits>pretrain|ts1|ts2)_(?P<eid>{_EID})$")


@dataclasses.dataclass(frozen=True)
class SessionFile:
  """One BWB session file of a root: its eid, build (all_units, selected_units), kind (eval,
  pretrain) and path."""

  eid: str
  build: str
  kind: str
  path: str


def config_name(build: str, splits: str, eid: str) -> str:
  """`bwb_<all|sel>_<splits>_<eid>`; build all_units or selected_units (or its short name all,
  sel), splits pretrain, ts1 or ts2, eid a session UUID. ValueError for anything else."""
  short = {v: k for k, v in BUILDS.items()}.get(build, build)
  if short not in BUILDS:
    raise ValueError(f"BWB build {build!r}: expected one of {list(BUILDS.values())}")
  if splits not in SPLIT_SETS:
    raise ValueError(f"BWB split set {splits!r}: expected one of {list(SPLIT_SETS)}")
  if not re.fullmatch(_EID, eid or ""):
    raise ValueError(f"BWB session id {eid!r}: expected an eid (a UUID)")
  return f"{PREFIX}{short}_{splits}_{eid}"


def parse(name: str) -> tuple[str, str, str] | None:
  """(build, split set, eid) of config name `name`, build spelled all_units / selected_units;
  None when it is not a BWB config name."""
  match = _NAME.match(name or "")
  if match is None:
    return None
  return BUILDS[match["short"]], match["splits"], match["eid"]


def list_sessions(root: str) -> list[SessionFile]:
  """Every session file under BWB root `root`, sorted by (kind, eid, build). ValueError when
  root is not a directory."""
  if not root or not os.path.isdir(root):
    raise ValueError(
      f"BWB root {root!r} is not a directory; pass --manual_dir=<folder holding <build>/{BRAINSET}/<eval|pretrain>>"
    )
  out = []
  for build in BUILDS.values():
    for kind in KINDS:
      folder = os.path.join(glob.escape(root), build, BRAINSET, kind)
      for path in glob.glob(os.path.join(folder, "*.h5")):
        eid = os.path.splitext(os.path.basename(path))[0]
        if re.fullmatch(_EID, eid):
          out.append(SessionFile(eid, build, kind, path))
  return sorted(out, key=lambda s: (s.kind, s.eid, s.build))


def find_file(root: str, build: str, eid: str) -> SessionFile:
  """The file of session `eid` in build `build` under `root` (eval or pretrain folder);
  ValueError naming where it was looked for."""
  hits = [s for s in list_sessions(root) if s.eid == eid and s.build == build]
  if not hits:
    builds = sorted({s.build for s in list_sessions(root) if s.eid == eid})
    where = os.path.join(root, build, BRAINSET, "<eval|pretrain>", f"{eid}.h5")
    raise ValueError(f"no BWB session file {where}" + (f"; the session is in the builds {builds}" if builds else ""))
  if len(hits) > 1:
    raise ValueError(f"BWB session {eid} is in both folders of build {build}: {[h.path for h in hits]}")
  return hits[0]


def default_configs(session: SessionFile) -> list[str]:
  """The config names a session file is built as by default (module docstring); [] when its
  build has none (an eval session's ts1 comes from all_units, its ts2 from selected_units)."""
  if session.kind == "pretrain":
    wanted = [("selected_units", "pretrain")]
  else:
    wanted = [("all_units", "ts1"), ("selected_units", "ts2")]
  return [config_name(b, s, session.eid) for b, s in wanted if b == session.build]


def dataset_configs(root: str, eids) -> list[str]:
  """The default config names (default_configs) of sessions `eids` (["all"]: every session of
  root), in order of eid; ValueError for an eid with no file or no default data set."""
  files = list_sessions(root)
  if list(eids) == ["all"]:
    eids = sorted({s.eid for s in files})
    if not eids:
      raise ValueError(f"--bwb_sessions=all: no session file under {root}/<build>/{BRAINSET}/<eval|pretrain>/")
  out = []
  for eid in eids:
    names = [n for s in files if s.eid == eid for n in default_configs(s)]
    if not names:
      have = [f"{s.build}/{s.kind}" for s in files if s.eid == eid]
      raise ValueError(
        f"--bwb_sessions: no data set for session {eid!r} under {root}"
        + (f" (it is only in {have}; pretrain sessions need selected_units)" if have else " (no file)")
      )
    out += sorted(names)
  return out
