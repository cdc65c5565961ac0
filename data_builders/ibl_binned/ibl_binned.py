"""TFDS builder `ibl_binned`: one example per trial of binned spike counts.

One builder config per session; splits train/val/test hold 70/10/20 % of the trials,
drawn with a fixed seed. Written as array_record, read with `tfds.data_source` (no
TensorFlow needed). Session-level facts (session id, region of every neuron, whether
true rates are present; for IBL sessions the files read, mtm_jax.datasets.provenance) are
in `info.metadata`.

Sources: `synthetic_NNN` configs simulate session NNN of the synthetic brain
(mtm_jax.datasets.synthetic); `animalAA_sS` configs session S of animal AA of the
synthetic species (mtm_jax.datasets.animals). `<eid>[_beryl|_cosmos][_rate<Hz>][_good]` configs read IBL
session <eid> from the ONE cache given as manual_dir (mtm_jax.datasets.ibl; made on demand
by `ibl_config`, read back by name from the built files; see docs/real_data.md).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from mtm_jax.datasets import animals
from mtm_jax.datasets import provenance
from mtm_jax.datasets import schema
from mtm_jax.datasets import synthetic
from mtm_jax.datasets.ibl import configs
from mtm_jax.datasets.ibl import preprocess


@dataclasses.dataclass(kw_only=True)
class IblBinnedConfig(tfds.core.BuilderConfig):
  """A session: where its arrays come from."""

  source: str = "synthetic"  # "synthetic" or "ibl"
  session_index: int = 0
  brain_seed: int = 0
  split_seed: int = 0
  sizes: synthetic.SessionSizes = synthetic.SessionSizes()  # synthetic: neuron and trial ranges
  animal: int | None = None  # synthetic: None for the single brain, else the animal of the species (animals)
  # ibl: the session id in the ONE cache and its preprocessing
  eid: str = ""
  ibl_options: configs.IblOptions = configs.IblOptions()

  def load_session(self, manual_dir: str | None = None) -> dict:
    """The session's arrays in the schema of mtm_jax.datasets.schema."""
    if self.source == "ibl":
      return preprocess.load_session(manual_dir, self.eid, self.ibl_options)
    if self.source != "synthetic":
      raise ValueError(f"ibl_binned/{self.name}: unknown source {self.source!r}; expected 'synthetic' or 'ibl'")
    brain, spec = animals.source_session(self.session_index, self.brain_seed, self.sizes, self.animal)
    return brain.simulate_session(spec)


def ibl_config(name: str) -> IblBinnedConfig | None:
  """The config of IBL session name `<eid>[_options]` (configs.parse_config_name); None if not one."""
  kwargs = configs.builder_config_kwargs(name)
  return None if kwargs is None else IblBinnedConfig(**kwargs)


def _synthetic_configs():
  return [IblBinnedConfig(**kwargs) for kwargs in synthetic.builder_configs() + animals.builder_configs()]


class Builder(tfds.core.GeneratorBasedBuilder):
  """Binned IBL-style trials, one config per session."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: synthetic sessions and IBL sessions from a ONE cache."}
  BUILDER_CONFIGS = _synthetic_configs()
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  IBL configs only (`<eid>`): manual_dir (`--manual_dir=...`) is a ONE cache root holding
  <lab>/Subjects/<subject>/<date>/<number>/alf/... session folders, downloaded with ONE on
  a networked machine; see docs/real_data.md.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    features = {
      "spikes": tfds.features.Tensor(shape=(schema.N_BINS, None), dtype=np.int32, encoding="zlib"),
      "regions": tfds.features.Tensor(shape=(None,), dtype=np.object_),
      "session_id": tfds.features.Text(),
      "trial_index": tfds.features.Scalar(dtype=np.int32),
      "choice": tfds.features.Scalar(dtype=np.int32),
      "block": tfds.features.Scalar(dtype=np.float32),
      "contrast": tfds.features.Scalar(dtype=np.float32),
      "reward": tfds.features.Scalar(dtype=np.int32),
      "reaction_time": tfds.features.Scalar(dtype=np.float32),
      "whisker_motion_energy": tfds.features.Tensor(shape=(schema.N_BINS,), dtype=np.float32),
      "wheel_speed": tfds.features.Tensor(shape=(schema.N_BINS,), dtype=np.float32),
    }
    if self.builder_config.source == "synthetic":
      features["rates"] = tfds.features.Tensor(shape=(schema.N_BINS, None), dtype=np.float32, encoding="zlib")
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(features),
      metadata=tfds.core.MetadataDict(),
      homepage="https://github.com/colehurwitz/IBL_foundation_model",
    )

  def _split_generators(self, dl_manager):
    config = self.builder_config
    session = config.load_session(str(dl_manager.manual_dir) if config.source == "ibl" else None)
    schema.validate_session(session, where=f"ibl_binned/{config.name}")
    self.info.metadata.update(
      session_id=config.name,
      region_names=[str(r) for r in session["regions"]],
      n_neurons=int(session["spikes"].shape[2]),
      n_trials=int(session["spikes"].shape[0]),
      has_rates="rates" in session,
      bin_size=schema.BIN_SIZE,
      t_before=schema.T_BEFORE,
      split_seed=config.split_seed,
    )
    if config.source == "ibl":
      self.info.metadata.update(
        source="ibl",
        eid=config.eid,
        unit_ids=[str(u) for u in session["unit_ids"]],
        ibl_options=dataclasses.asdict(config.ibl_options),
        source_info=session["source_info"],
        **{provenance.RECORD_KEY: provenance.record(dl_manager.manual_dir, session["source_files"])},
      )
      splits = {name: np.flatnonzero(session["trial_split"] == name) for name in schema.SPLIT_FRACTIONS}
    else:
      splits = schema.split_trials(session["spikes"].shape[0], seed=config.split_seed)
    return {name: self._generate_examples(session, idx) for name, idx in splits.items()}

  def _generate_examples(self, session, trial_indices):
    regions = np.array([str(r) for r in session["regions"]], dtype=object)
    for k in trial_indices:
      example = {
        "spikes": session["spikes"][k].astype(np.int32),
        "regions": regions,
        "session_id": self.builder_config.name,
        "trial_index": int(session["trial_index"][k]) if "trial_index" in session else int(k),
      }
      for field in schema.TRIAL_FIELDS + schema.BIN_FIELDS:
        example[field] = session[field][k]
      if "rates" in self.info.features:
        example["rates"] = session["rates"][k]
      yield int(k), example
