"""TFDS builder `bwb_binned`: a BWB session file as binned 1 s windows, for NDT1 (mtm_jax.datasets.pipeline).

One config per (build, split set, session), `bwb_<all|sel>_<pretrain|ts1|ts2>_<eid>`
(mtm_jax.bwb.datasets), made on demand by `bwb_config`; no config is registered. The file is
read like `spike_events/<the same name>` (mtm_jax.bwb.events.event_session: the split set's
intervals tiled with 1 s windows, which are the trials and the splits) and each window is
binned at 20 ms: 50 bins. Everything else is nwb_binned's, whose builder this one extends:
the features (`spikes` [50, U] int32, `behaviour` [50, D] at the bin centres, `regions`
(Cosmos), `session_id` (the eid), `trial_index` (the window's position among the session's
windows), `trial_start` (s)) and the metadata pipeline.session_info reads (session_id,
region_names, n_bins = 50, bin_size, window), plus source_info (what was dropped), the BWB
build, split set and dataset version, and the file read (mtm_jax.datasets.provenance).
"""

from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from data_builders.nwb_binned import nwb_binned
from mtm_jax.bwb import datasets as bwb_datasets
from mtm_jax.bwb import events as bwb_events
from mtm_jax.bwb import sessions as bwb_sessions

WINDOW = 1.0  # s: BWB's scored window, 50 bins of 20 ms


@dataclasses.dataclass(kw_only=True)
class BwbBinnedConfig(tfds.core.BuilderConfig):
  """A BWB session file of manual_dir: its build (all_units, selected_units), split set (pretrain, ts1, ts2), eid."""

  build: str = ""
  splits: str = ""
  eid: str = ""


def bwb_config(name: str) -> BwbBinnedConfig | None:
  """The config of BWB data set name `bwb_<all|sel>_<split set>_<eid>`; None if not one."""
  parsed = bwb_datasets.parse(name)
  if parsed is None:
    return None
  build, splits, eid = parsed
  return BwbBinnedConfig(
    name=name,
    build=build,
    splits=splits,
    eid=eid,
    description=f"BWB session {eid} ({build}), split set {splits}, 1 s windows binned at 20 ms.",
  )


class Builder(nwb_binned.Builder):
  """Binned 1 s windows of one BWB session file per config."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: BWB session files, split sets in 1 s windows binned at 20 ms."}
  BUILDER_CONFIGS = []
  HOMEPAGE = "https://github.com/int-brain-lab"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  manual_dir (`--manual_dir=...`) is a BWB root holding <build>/ibl_brain_wide_bench_2026/<eval|pretrain>/<eid>.h5
  (`python -m data_builders.build --list_bwb --manual_dir=...` lists the sessions and their data set names).
  """

  def _read(self, manual_dir: str):
    config = self.builder_config
    path = bwb_datasets.find_file(manual_dir, config.build, config.eid).path
    session = bwb_events.event_session(bwb_sessions.read_session(path), config.splits, WINDOW)
    extra = dict(
      session_id=session.session_id,
      source="bwb",
      bwb_build=config.build,
      bwb_splits=config.splits,
      dataset_version=session.source_info["dataset_version"],
    )
    return session, WINDOW, extra, None
