"""TFDS builder `nwb_binned`: a user's NWB file as binned trials, for NDT1 (mtm_jax.datasets.pipeline).

One config per NWB file under manual_dir, `nwb_<stem>` (mtm_jax.datasets.nwb_sets), made on
demand by `nwb_config`; no config is registered. The file is read like `spike_events/nwb_<stem>`
(mtm_jax.datasets.nwb: units, trials and their split, the behaviour series) and its trials
are binned at 20 ms in a fixed window aligned at their starts (nwb_sets.binned_trials;
shorter trials left out and counted in `source_info.dropped_short_trials`). Splits
train/val/test are the event data set's. Each example holds `spikes` [n_bins, U] int32,
`trial_index` (row of the file's kept trials), `trial_start` (s), `behaviour` [n_bins, D]
at the bin centres, `regions`, `session_id`. Metadata: what pipeline.session_info reads
(session_id, region_names), n_bins, bin_size, window, behaviour name, source_info and the
files read with the options chosen (mtm_jax.datasets.provenance). The IBL fields of
`ibl_binned` (choice, wheel speed, ...) are absent, so NDT1's evaluation skips their decoders.
Other sources extend the builder by overriding `_read` (data_builders/bwb_binned: BWB session files).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from mtm_jax.datasets import nwb_sets
from mtm_jax.datasets import provenance
from mtm_jax.datasets import schema


@dataclasses.dataclass(kw_only=True)
class NwbBinnedConfig(tfds.core.BuilderConfig):
  """An NWB file of manual_dir: which behaviour series ("": the only one), the window (None: the median trial)."""

  behaviour: str = ""
  dims: str = ""  # comma-separated names of the behaviour's columns ("": from the file, else none)
  window: float | None = None
  split_seed: int = 0


def nwb_config(
  name: str, behaviour: str | None = None, window: float | None = None, dims: str | None = None
) -> NwbBinnedConfig | None:
  """The config of the user's NWB file named `nwb_<stem>`; None if not one."""
  if not name.startswith(nwb_sets.PREFIX):
    return None
  return NwbBinnedConfig(
    name=name,
    behaviour=behaviour or "",
    dims=dims or "",
    window=window,
    description=f"The NWB file of data set name {name} under manual_dir, binned at 20 ms.",
  )


class Builder(tfds.core.GeneratorBasedBuilder):
  """Binned trials of one NWB file per config."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: a user's NWB files, trials binned at 20 ms from their starts."}
  BUILDER_CONFIGS = []
  HOMEPAGE = "https://www.nwb.org"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  manual_dir (`--manual_dir=...`) holds the NWB files, in any sub-folders; config nwb_<stem> is
  the file of that name (`python -m data_builders.build --list_nwb --manual_dir=...` lists them).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          "spikes": tfds.features.Tensor(shape=(None, None), dtype=np.int32, encoding="zlib"),
          "behaviour": tfds.features.Tensor(shape=(None, None), dtype=np.float32, encoding="zlib"),
          "regions": tfds.features.Tensor(shape=(None,), dtype=np.object_),
          "session_id": tfds.features.Text(),
          "trial_index": tfds.features.Scalar(dtype=np.int32),
          "trial_start": tfds.features.Tensor(shape=(), dtype=np.float64, encoding="bytes"),
        }
      ),
      metadata=tfds.core.MetadataDict(),
      homepage=self.HOMEPAGE,
    )

  def _read(self, manual_dir: str):
    """(the session to bin, its window in s (None: the median trial), the metadata only this source
    has (it may override session_id), the options of its provenance record). Subclasses read other sources."""
    from mtm_jax.datasets import nwb  # pynwb is imported only here

    config = self.builder_config
    path = nwb_sets.find_file(manual_dir, config.name)
    dims = config.dims.split(",") if config.dims else None
    session = nwb.read_nwb(path, behaviour=config.behaviour or None, split_seed=config.split_seed, behaviour_dims=dims)
    return session, config.window, dict(split_seed=config.split_seed, source="nwb"), nwb_sets.options

  def _split_generators(self, dl_manager):
    config, manual_dir = self.builder_config, str(dl_manager.manual_dir)
    where = f"{self.name}/{config.name}"
    session, window, extra, options = self._read(manual_dir)
    trials = nwb_sets.binned_trials(session, window, where)
    session, window = trials["session"], trials["session"].source_info["window"]
    record = provenance.record(manual_dir, session.source_files, None, options(session, window) if options else None)
    self.info.metadata.update(
      session_id=config.name,
      region_names=[str(r) for r in trials["regions"]],
      unit_ids=[str(u) for u in session.unit_ids],
      n_neurons=int(trials["spikes"].shape[2]),
      n_trials=int(trials["spikes"].shape[0]),
      n_bins=int(trials["n_bins"]),
      bin_size=schema.BIN_SIZE,
      window=window,
      behaviour_name=str(session.behaviour_name),
      source_info=dict(session.source_info),
      **{provenance.RECORD_KEY: record},
    )
    self.info.metadata.update(extra)
    splits = {s: np.flatnonzero(trials["trial_split"] == s) for s in schema.SPLIT_FRACTIONS}
    return {s: self._generate_examples(trials, idx, self.info.metadata["session_id"]) for s, idx in splits.items()}

  def _generate_examples(self, trials, rows, session_id):
    for k in rows:
      yield (
        int(k),
        {
          "spikes": trials["spikes"][k],
          "behaviour": trials["behaviour"][k],
          "regions": trials["regions"],
          "session_id": session_id,
          "trial_index": int(trials["trial_index"][k]),
          "trial_start": float(trials["trial_start"][k]),
        },
      )
