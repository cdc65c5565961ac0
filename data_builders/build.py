"""Builds TFDS data sets of this project (array_record, no TensorFlow).

  python -m data_builders.build --dataset=ibl_binned/synthetic_000 --data_dir=data/tfds
  python -m data_builders.build --dataset=ibl_binned/synthetic_000,ibl_binned/synthetic_001 ...
  python -m data_builders.build --dataset=spike_events/reaching_000 --data_dir=data/tfds
  python -m data_builders.build --dataset=spike_events/nlb_mc_maze --manual_dir=data/raw/000128

IBL sessions from a local ONE cache (docs/real_data.md):
  python -m data_builders.build --list_ibl --manual_dir=<ONE cache root>
  python -m data_builders.build --dataset=ibl_binned/<eid>,spike_events/<eid> --manual_dir=<ONE cache root>
  python -m data_builders.build --ibl_sessions=all --ibl_options=beryl --manual_dir=<ONE cache root>

A user's own NWB files (any number, in any sub-folders of --manual_dir; docs/event_data.md):
  python -m data_builders.build --list_nwb --manual_dir=<folder of NWB files>
  python -m data_builders.build --nwb_files=all --manual_dir=<folder of NWB files> [--nwb_behaviour=velocity]
      [--nwb_behaviour_dims=x,y]
  (spike_events/nwb_<stem> for POYO, nwb_binned/nwb_<stem> for NDT1, per file)

BrainWideBench session files (a BWB root: <build>/ibl_brain_wide_bench_2026/<eval|pretrain>/<eid>.h5; docs/bwb.md):
  python -m data_builders.build --list_bwb --manual_dir=<BWB root>
  python -m data_builders.build --bwb_sessions=all --manual_dir=<BWB root> [--bwb_builders=spike_events,bwb_binned]
  (pretrain sessions as bwb_sel_pretrain_<eid>, eval sessions as bwb_all_ts1_<eid> and bwb_sel_ts2_<eid>)

A data set whose source files (NWB file, IBL session files) changed after it was built is
refused (here and when it is read); build it again with --rebuild=NAME/CONFIG.
"""

import sys

from absl import app, flags

from data_builders import prepare
from mtm_jax.training import entry

_DATASET = flags.DEFINE_list("dataset", [], "Data sets to build, NAME/CONFIG, comma-separated.")
_DATA_DIR = flags.DEFINE_string("data_dir", "data/tfds", "TFDS data directory.")
_MANUAL_DIR = flags.DEFINE_string(
  "manual_dir",
  None,
  "Folder of NWB files for spike_events NWB configs, or the ONE "
  "cache root for IBL configs (default <data_dir>/downloads/manual).",
)
_LIST_IBL = flags.DEFINE_bool(
  "list_ibl", False, "List the IBL sessions (eid, folder, probes) of the ONE cache in --manual_dir and exit."
)
_IBL_SESSIONS = flags.DEFINE_list("ibl_sessions", [], "IBL sessions of --manual_dir to build: eids, or 'all'.")
_IBL_BUILDERS = flags.DEFINE_list(
  "ibl_builders", ["ibl_binned", "spike_events"], "Data sets made of each of --ibl_sessions."
)
_IBL_OPTIONS = flags.DEFINE_list(
  "ibl_options",
  [],
  "Preprocessing options of --ibl_sessions, part of their config "
  "names: beryl or cosmos (region level), rate<Hz> (minimum firing rate), good "
  "(label == 1 units only).",
)
_LIST_NWB = flags.DEFINE_bool(
  "list_nwb", False, "List the NWB files under --manual_dir with their data set names (nwb_<stem>) and exit."
)
_NWB_FILES = flags.DEFINE_list(
  "nwb_files", [], "NWB files of --manual_dir to build: data set names (nwb_<stem>), file stems, or 'all'."
)
_NWB_BUILDERS = flags.DEFINE_list(
  "nwb_builders", ["spike_events", "nwb_binned"], "Data sets made of each of --nwb_files."
)
_NWB_BEHAVIOUR = flags.DEFINE_string(
  "nwb_behaviour",
  None,
  "The behaviour TimeSeries of processing/behavior to read from NWB files (nwb_<stem> data sets; "
  "<container>/<series> inside a Position or BehavioralTimeSeries); default: the only one there.",
)
_NWB_BEHAVIOUR_DIMS = flags.DEFINE_list(
  "nwb_behaviour_dims",
  None,
  "Names of the behaviour series' columns in NWB files (nwb_<stem> data sets), e.g. x,y: as many as the series "
  "has; default: a comments or description that is exactly such a list, else dim0, dim1, ...",
)
_NWB_WINDOW = flags.DEFINE_float(
  "nwb_window",
  None,
  "Trials of nwb_<stem> data sets cut to this many seconds from their start (a multiple of 0.02, at most 2), "
  "shorter ones left out; default: nwb_binned the median trial length, spike_events whole trials.",
)
_LIST_BWB = flags.DEFINE_bool(
  "list_bwb", False, "List the BWB session files under --manual_dir (a BWB root) with their data set names and exit."
)
_BWB_SESSIONS = flags.DEFINE_list(
  "bwb_sessions",
  [],
  "BWB sessions of --manual_dir to build: eids, or 'all' (pretrain sessions: pretrain split set of the "
  "selected_units build; eval sessions: ts1 of all_units and ts2 of selected_units).",
)
_BWB_BUILDERS = flags.DEFINE_list(
  "bwb_builders", ["spike_events", "bwb_binned"], "Data sets made of each of --bwb_sessions."
)
_REBUILD = flags.DEFINE_list(
  "rebuild",
  [],
  "Data sets to build again even if built, e.g. after their source files "
  "changed (NAME/CONFIG, comma-separated; built with the others of --dataset). Other data "
  "sets are not touched; the previous version is kept until the new one is complete.",
)
_KEEP_GOING = flags.DEFINE_bool(
  "keep_going", True, "When a data set fails, build the others, then report every failure and exit with status 1."
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if (_LIST_IBL.value or _IBL_SESSIONS.value) and not _MANUAL_DIR.value:
    raise app.UsageError("--list_ibl and --ibl_sessions need --manual_dir=<ONE cache root>")
  if (_LIST_NWB.value or _NWB_FILES.value) and not _MANUAL_DIR.value:
    raise app.UsageError("--list_nwb and --nwb_files need --manual_dir=<folder of NWB files>")
  if (_LIST_BWB.value or _BWB_SESSIONS.value) and not _MANUAL_DIR.value:
    raise app.UsageError("--list_bwb and --bwb_sessions need --manual_dir=<BWB root>")
  if _LIST_BWB.value:
    from mtm_jax.bwb import datasets as bwb_datasets  # pylint: disable=g-import-not-at-top

    for s in bwb_datasets.list_sessions(_MANUAL_DIR.value):
      names = ",".join(bwb_datasets.default_configs(s)) or "(none by default)"
      print(f"{s.eid}  {s.kind:8s}  {s.build:14s}  {names}  {s.path}")
    return
  if _LIST_NWB.value:
    from mtm_jax.datasets import nwb_sets  # pylint: disable=g-import-not-at-top

    for name, path in nwb_sets.list_files(_MANUAL_DIR.value).items():
      print(f"{name}  {path}")
    return
  if _LIST_IBL.value:
    from mtm_jax.datasets.ibl import cache  # pylint: disable=g-import-not-at-top

    for s in cache.list_sessions(_MANUAL_DIR.value):
      print(f"{s['eid']}  {s['path']}  {','.join(s['probes']) or '(no probe)'}")
    return
  datasets = list(_DATASET.value)
  if _IBL_SESSIONS.value:
    datasets += prepare.ibl_dataset_names(
      _MANUAL_DIR.value, _IBL_SESSIONS.value, _IBL_BUILDERS.value, _IBL_OPTIONS.value
    )
  if _NWB_FILES.value:
    datasets += prepare.nwb_dataset_names(_MANUAL_DIR.value, _NWB_FILES.value, _NWB_BUILDERS.value)
  if _BWB_SESSIONS.value:
    datasets += prepare.bwb_dataset_names(_MANUAL_DIR.value, _BWB_SESSIONS.value, _BWB_BUILDERS.value)
  datasets += [r for r in _REBUILD.value if r not in datasets]
  if not datasets:
    raise app.UsageError(
      "--dataset (or --ibl_sessions, --nwb_files, --bwb_sessions) is required, e.g. --dataset=ibl_binned/synthetic_000"
    )
  try:
    paths = prepare.build(
      datasets,
      _DATA_DIR.value,
      _MANUAL_DIR.value,
      keep_going=_KEEP_GOING.value,
      rebuild=_REBUILD.value,
      nwb_options=dict(
        behaviour=_NWB_BEHAVIOUR.value,
        dims=",".join(_NWB_BEHAVIOUR_DIMS.value) if _NWB_BEHAVIOUR_DIMS.value else None,
        window=_NWB_WINDOW.value,
      ),
    )
  except prepare.BuildError as e:
    print(e, file=sys.stderr)
    sys.exit(1)
  for path in paths:
    print(path)


if __name__ == "__main__":
  entry.run(main)
