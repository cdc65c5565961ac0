"""TFDS builder `spike_events`: one example per split interval (trial) of spike events.

One builder config per session. Splits train/val/test hold the session's split intervals:
trials drawn 70/10/20 with a fixed seed, unless an NWB file's trials table carries its own
`split` column (BWB configs: the file's split domains in 1 s windows). Each example holds one interval [interval_start, interval_end): its spike
times (float64 seconds, sorted) and unit indices, and its behaviour timestamps, values and
weights. Spikes and behaviour outside every split interval are not stored. Session-level
facts (unit ids and regions, behaviour name and dimension, trial and split intervals, the
training split's behaviour std; for NWB, IBL and BWB sources the files read,
mtm_jax.datasets.provenance) are in `info.metadata`. Written as array_record and read
with `builder.as_data_source()` (no TensorFlow needed); mtm_jax.datasets.events.
load_event_session turns a built data set back into an event session.

Configs:
  reaching_NNN   session NNN of the synthetic reaching task (mtm_jax.datasets.reaching);
  synthetic_NNN  session NNN of the synthetic brain as spike times (mtm_jax.datasets.synthetic_events):
                 the session, trials and split of ibl_binned/synthetic_NNN, whose counts its
                 spikes bin back to; each example also holds its trial's true rates [100, U]
                 and trial variables, restored into the session's extras by load_event_session;
  animalAA_sS    session S of animal AA of the synthetic species (mtm_jax.datasets.animals) as spike
                 times with a refractory period: the session of ibl_binned/animalAA_sS, as above;
  nwb            the one NWB file directly in manual_dir (Neural Latents Benchmark layout);
  nwb_<stem>     the NWB file of that name anywhere under manual_dir (mtm_jax.datasets.nwb_sets),
                 its behaviour series named by the build or the only one in the file; made on
                 demand by `nwb_config`;
  nlb_<name>     the NLB training file of that data set, anywhere under manual_dir
                 (hand or finger velocity subsampled from 1 kHz to 100 Hz);
  <eid>[_beryl|_cosmos][_rate<Hz>][_good]
                 IBL session <eid> of the ONE cache in manual_dir (mtm_jax.datasets.ibl): trials
                 are the stimulus-aligned windows, behaviour is wheel speed and whisker motion
                 energy at 20 ms steps; made on demand by `ibl_config` (docs/real_data.md);
  bwb_<all|sel>_<pretrain|ts1|ts2>_<eid>
                 BWB session file <eid> of that build under manual_dir (mtm_jax.bwb.datasets), its
                 split set tiled with 1 s windows as trials (mtm_jax.bwb.events); made on demand by
                 `bwb_config` (docs/bwb.md).
"""

from __future__ import annotations

import dataclasses
import glob
import os

import numpy as np
import tensorflow_datasets as tfds

from mtm_jax.bwb import datasets as bwb_datasets
from mtm_jax.bwb import events as bwb_events
from mtm_jax.bwb import sessions as bwb_sessions
from mtm_jax.datasets.events import session as session_lib
from mtm_jax.datasets import animals
from mtm_jax.datasets import nwb_sets
from mtm_jax.datasets import provenance
from mtm_jax.datasets import reaching
from mtm_jax.datasets import synthetic
from mtm_jax.datasets import synthetic_events
from mtm_jax.datasets.ibl import configs
from mtm_jax.datasets.ibl import convert
from mtm_jax.datasets.ibl import preprocess

N_REACHING_SESSIONS = 40  # the POYO study pretrains on 001-032 and holds out 000, see docs/event_data.md


@dataclasses.dataclass(kw_only=True)
class SpikeEventsConfig(tfds.core.BuilderConfig):
  """A session: where its events come from."""

  source: str = "reaching"  # "reaching", "synthetic", "nwb", "ibl" or "bwb"
  split_seed: int = 0
  # reaching: the session of the reaching brain and its size ranges
  session_index: int = 0
  brain_seed: int = 0
  min_units: int = 40
  max_units: int = 200
  min_trials: int = 100
  max_trials: int = 200
  # synthetic: the session of the synthetic brain (session_index, brain_seed) and its sizes
  sizes: synthetic.SessionSizes = synthetic.SessionSizes()
  animal: int | None = None  # None: the single brain; else the animal of the species (animals)
  # nwb: which file of manual_dir ("": the file named like the config, nwb_sets), which
  # behaviour series ("": the only one), the session id (default: file stem)
  nwb_pattern: str = "*.nwb"
  behaviour: str = "hand_vel"
  behaviour_stride: int = 1
  dims: str = ""  # nwb: comma-separated names of the behaviour's columns ("": from the file, else none)
  session_id: str | None = None
  window: float | None = None  # nwb_<stem>: trials cut to this many s from their start (nwb_sets.windowed)
  # ibl: the session id in the ONE cache and its preprocessing
  eid: str = ""
  ibl_options: configs.IblOptions = configs.IblOptions()
  # bwb: the build (all_units, selected_units) and split set (pretrain, ts1, ts2) of session `eid`
  bwb_build: str = ""
  bwb_splits: str = ""

  def load_session(self, manual_dir: str | None = None) -> session_lib.EventSession:
    """The event session of this config (mtm_jax.datasets.events.session)."""
    if self.source == "reaching":
      return reaching.simulate_reaching_session(
        self.session_index,
        brain_seed=self.brain_seed,
        split_seed=self.split_seed,
        min_units=self.min_units,
        max_units=self.max_units,
        min_trials=self.min_trials,
        max_trials=self.max_trials,
      )
    if self.source == "synthetic":
      return synthetic_events.simulate(
        self.session_index, self.brain_seed, self.split_seed, self.sizes, session_id=self.name, animal=self.animal
      )
    if self.source == "nwb":
      from mtm_jax.datasets import nwb  # pynwb is imported only for NWB sources

      session = nwb.read_nwb(
        self.nwb_file(manual_dir),
        behaviour=self.behaviour or None,
        session_id=self.session_id,
        split_seed=self.split_seed,
        behaviour_stride=self.behaviour_stride,
        behaviour_dims=self.dims.split(",") if self.dims else None,
      )
      return session if self.window is None else nwb_sets.windowed(session, self.window, f"spike_events/{self.name}")[0]
    if self.source == "ibl":
      binned = preprocess.load_session(manual_dir, self.eid, self.ibl_options)
      return convert.event_session(binned, session_id=self.name)
    if self.source == "bwb":
      return bwb_events.event_session(
        bwb_sessions.read_session(bwb_datasets.find_file(manual_dir, self.bwb_build, self.eid).path), self.bwb_splits
      )
    raise ValueError(
      f"spike_events/{self.name}: unknown source {self.source!r}; expected 'reaching', 'synthetic', 'nwb', 'ibl' "
      "or 'bwb'"
    )

  def nwb_file(self, manual_dir: str | None) -> str:
    """The one file under manual_dir matching nwb_pattern (no pattern: the file named like the config)."""
    if not self.nwb_pattern:
      return nwb_sets.find_file(manual_dir, self.name)
    if manual_dir is None or not os.path.isdir(manual_dir):
      raise ValueError(
        f"spike_events/{self.name}: manual_dir {manual_dir!r} is not a directory; pass "
        f"--manual_dir=<folder holding the NWB file>"
      )
    files = sorted(glob.glob(os.path.join(manual_dir, self.nwb_pattern), recursive=True))
    if not files:
      raise ValueError(f"spike_events/{self.name}: no file matching {self.nwb_pattern!r} in manual_dir {manual_dir}")
    if len(files) > 1:
      names = [os.path.relpath(f, manual_dir) for f in files]
      raise ValueError(
        f"spike_events/{self.name}: {len(files)} files match {self.nwb_pattern!r} in manual_dir "
        f"{manual_dir} ({names}); a data set holds one session: give each its own folder"
      )
    return files[0]


def ibl_config(name: str) -> SpikeEventsConfig | None:
  """The config of IBL session name `<eid>[_options]` (configs.parse_config_name); None if not one."""
  kwargs = configs.builder_config_kwargs(name)
  return None if kwargs is None else SpikeEventsConfig(**kwargs)


def bwb_config(name: str) -> SpikeEventsConfig | None:
  """The config of BWB data set name `bwb_<all|sel>_<split set>_<eid>` (mtm_jax.bwb.datasets); None if not one."""
  parsed = bwb_datasets.parse(name)
  if parsed is None:
    return None
  build, splits, eid = parsed
  return SpikeEventsConfig(
    name=name,
    source="bwb",
    eid=eid,
    bwb_build=build,
    bwb_splits=splits,
    description=f"BWB session {eid} ({build}), split set {splits}, in 1 s windows.",
  )


def nwb_config(
  name: str, behaviour: str | None = None, window=None, dims: str | None = None
) -> SpikeEventsConfig | None:
  """The config of the user's NWB file named `nwb_<stem>` (nwb_sets.config_name); None if not one.
  behaviour: the series of processing/behavior to read (None: the only one); window: each
  trial cut to this many seconds from its start, shorter ones left out (None: whole trials);
  dims: comma-separated names of the series' columns (None: from the file, else none)."""
  if not name.startswith(nwb_sets.PREFIX):
    return None
  return SpikeEventsConfig(
    name=name,
    source="nwb",
    nwb_pattern="",
    behaviour=behaviour or "",
    dims=dims or "",
    window=window,
    description=f"The NWB file of data set name {name} under manual_dir.",
  )


def _reaching_configs():
  return [
    SpikeEventsConfig(
      name=f"reaching_{i:03d}", description=f"Session {i} of the synthetic reaching task (seed 0).", session_index=i
    )
    for i in range(N_REACHING_SESSIONS)
  ]


def _synthetic_configs():
  return [SpikeEventsConfig(**kwargs) for kwargs in synthetic.builder_configs() + animals.builder_configs()]


# NLB training files (DANDI 000127-000140) and their velocity series; 1 kHz -> 100 Hz.
_NLB = {
  "mc_maze": ("sub-Jenkins_ses-full_desc-train_behavior+ecephys.nwb", "hand_vel"),
  "mc_maze_large": ("sub-Jenkins_ses-large_desc-train_behavior+ecephys.nwb", "hand_vel"),
  "mc_maze_medium": ("sub-Jenkins_ses-medium_desc-train_behavior+ecephys.nwb", "hand_vel"),
  "mc_maze_small": ("sub-Jenkins_ses-small_desc-train_behavior+ecephys.nwb", "hand_vel"),
  "mc_rtt": ("sub-Indy_desc-train_behavior+ecephys.nwb", "finger_vel"),
  "area2_bump": ("sub-Han_desc-train_behavior+ecephys.nwb", "hand_vel"),
}


def _nwb_configs():
  generic = SpikeEventsConfig(name="nwb", source="nwb", description="The one NWB file directly in manual_dir.")
  return [generic] + [
    SpikeEventsConfig(
      name=f"nlb_{name}",
      source="nwb",
      nwb_pattern=f"**/{filename}",
      behaviour=behaviour,
      behaviour_stride=10,
      session_id=f"nlb_{name}",
      description=f"Neural Latents Benchmark {name}: {filename} under manual_dir.",
    )
    for name, (filename, behaviour) in _NLB.items()
  ]


class Builder(tfds.core.GeneratorBasedBuilder):
  """Spike events of one session per config, one example per split interval."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
    "1.0.0": "Initial release: synthetic reaching sessions, NWB (NLB layout) files, IBL sessions.",
    "1.1.0": "synthetic_NNN configs: the synthetic brain's sessions as spike times, with the counts of "
    "ibl_binned/synthetic_NNN; their examples hold the trial's true rates and trial variables.",
  }
  BUILDER_CONFIGS = _reaching_configs() + _synthetic_configs() + _nwb_configs()
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  NWB, IBL and BWB configs only. Put the session's NWB file in manual_dir (`--manual_dir=...`):
    nwb          exactly one *.nwb file directly in manual_dir;
    nwb_<stem>   the file of that name anywhere below manual_dir (`--list_nwb` lists them);
    nlb_<name>   the NLB training file anywhere below manual_dir, e.g. for nlb_mc_maze
                 000128/sub-Jenkins/sub-Jenkins_ses-full_desc-train_behavior+ecephys.nwb
                 (`dandi download DANDI:000128` fetches it).
  IBL configs (`<eid>`): manual_dir is a ONE cache root holding
  <lab>/Subjects/<subject>/<date>/<number>/alf/... session folders; see docs/real_data.md.
  BWB configs (`bwb_<all|sel>_<split set>_<eid>`): manual_dir is a BWB root holding
  <build>/ibl_brain_wide_bench_2026/<eval|pretrain>/<eid>.h5 (`--list_bwb` lists them); see docs/bwb.md.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    # float64 fields are stored as raw bytes: the default encoding goes through the float32
    # lists of tf.train.Example and would round spike times to ~1 us at 10 s.
    features = {
      "interval_index": tfds.features.Scalar(dtype=np.int32),  # position among the split's intervals
      "interval_start": tfds.features.Tensor(shape=(), dtype=np.float64, encoding="bytes"),
      "interval_end": tfds.features.Tensor(shape=(), dtype=np.float64, encoding="bytes"),
      "spike_times": tfds.features.Tensor(shape=(None,), dtype=np.float64, encoding="bytes"),
      "spike_units": tfds.features.Tensor(shape=(None,), dtype=np.int32),
      "behaviour_timestamps": tfds.features.Tensor(shape=(None,), dtype=np.float64, encoding="bytes"),
      "behaviour_values": tfds.features.Tensor(shape=(None, None), dtype=np.float32, encoding="zlib"),
      "behaviour_weights": tfds.features.Tensor(shape=(None,), dtype=np.float32),
    }
    if self.builder_config.source == "synthetic":  # per-trial ground truth, restored into extras
      features["rates"] = tfds.features.Tensor(shape=(None, None), dtype=np.float32, encoding="zlib")
      features.update({k: tfds.features.Scalar(dtype=t) for k, t in synthetic_events.TRIAL_EXTRAS.items()})
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(features),
      metadata=tfds.core.MetadataDict(),
      homepage="https://poyo-brain.github.io",
    )

  def _split_generators(self, dl_manager):
    config = self.builder_config
    session = config.load_session(str(dl_manager.manual_dir) if config.source in ("nwb", "ibl", "bwb") else None)
    where = f"spike_events/{config.name}"
    session.validate(where=where)
    missing = [s for s in session_lib.SPLITS if s not in session.splits]
    if missing:
      raise ValueError(f"{where}: the session has no {missing} split(s)")
    trials = np.stack([session.trial_starts, session.trial_ends], axis=1)
    self.info.metadata.update(
      session_id=session.session_id,
      unit_ids=[str(u) for u in session.unit_ids],
      unit_regions=[str(r) for r in session.unit_regions],
      n_units=len(session.unit_ids),
      n_spikes=int(len(session.spike_times)),
      behaviour_name=str(session.behaviour_name),
      behaviour_dim=int(np.shape(session.behaviour_values)[1]),
      behaviour_scale=session_lib.behaviour_scale([session]).tolist(),
      trial_intervals=trials.tolist(),
      split_intervals={s: np.asarray(iv, np.float64).reshape(-1, 2).tolist() for s, iv in session.splits.items()},
      source=config.source,
      split_seed=config.split_seed,
      source_info=dict(session.source_info),
    )
    if config.source == "synthetic":  # session-level ground truth, restored into extras
      self.info.metadata["extras"] = dict(
        split_trials={s: idx.tolist() for s, idx in session.extras["split_trials"].items()},
        pool_ids=session.extras["pool_ids"].tolist(),
      )
    if session.source_files is not None:  # NWB, IBL, BWB: the files read, checked when the data set is used
      pattern = config.nwb_pattern if config.source == "nwb" else None
      options = None
      if config.source == "nwb" and not pattern:
        options = nwb_sets.options(session, session.source_info.get("window"))
      self.info.metadata[provenance.RECORD_KEY] = provenance.record(
        dl_manager.manual_dir, session.source_files, pattern or None, options
      )
    return {name: self._generate_examples(session, name) for name in session_lib.SPLITS}

  def _generate_examples(self, session, split):
    intervals = np.asarray(session.splits[split], np.float64).reshape(-1, 2)
    extras = [] if self.builder_config.source != "synthetic" else ["rates", *synthetic_events.TRIAL_EXTRAS]
    rows = synthetic_events.split_rows(session, split)[1] if extras else None
    for j, (start, end) in enumerate(intervals):
      part = session_lib.interval_data(session, start, end)
      n = len(part["behaviour_timestamps"])
      example = {
        "interval_index": j,
        "interval_start": float(start),
        "interval_end": float(end),
        "spike_times": np.asarray(part["spike_times"], np.float64),
        "spike_units": np.asarray(part["spike_units"], np.int32),
        "behaviour_timestamps": np.asarray(part["behaviour_timestamps"], np.float64),
        "behaviour_values": np.asarray(part["behaviour_values"], np.float32).reshape(n, -1),
        "behaviour_weights": np.asarray(part["behaviour_weights"], np.float32),
      }
      for key in extras:
        example[key] = session.extras[key][rows[j]]
      yield j, example
