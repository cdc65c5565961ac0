"""TFDS builder `ibl_binned`: one example per trial of binned spike counts.

One builder config per session; splits train/val/test hold 70/10/20 % of the trials,
drawn with a fixed seed. Written as array_record, read with `tfds.data_source` (no
TensorFlow needed). Session-level facts (session id, region of every neuron, whether
true rates are present) are in `info.metadata`.

Sources: `synthetic_NNN` configs simulate session NNN of the synthetic brain
(mtm_jax.datasets.synthetic). Real recordings come in later configs.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from mtm_jax.datasets import schema
from mtm_jax.datasets import synthetic

N_SYNTHETIC_SESSIONS = 28  # 24 for pretraining + 4 held out, see docs/synthetic_data.md


@dataclasses.dataclass(kw_only=True)
class IblBinnedConfig(tfds.core.BuilderConfig):
  """A session: where its arrays come from."""

  source: str = "synthetic"
  session_index: int = 0
  brain_seed: int = 0
  split_seed: int = 0

  def load_session(self) -> dict:
    """The session's arrays in the schema of mtm_jax.datasets.schema."""
    if self.source != "synthetic":
      raise ValueError(f"ibl_binned/{self.name}: unknown source {self.source!r}; expected 'synthetic'")
    brain = synthetic.Brain(synthetic.BrainConfig(seed=self.brain_seed))
    return brain.simulate_session(brain.session_spec(self.session_index))


def _synthetic_configs():
  return [
      IblBinnedConfig(
          name=f"synthetic_{i:03d}",
          description=f"Session {i} of the synthetic brain (seed 0).",
          session_index=i,
      )
      for i in range(N_SYNTHETIC_SESSIONS)
  ]


class Builder(tfds.core.GeneratorBasedBuilder):
  """Binned IBL-style trials, one config per session."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: synthetic sessions."}
  BUILDER_CONFIGS = _synthetic_configs()

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
    del dl_manager  # synthetic sessions need no download
    config = self.builder_config
    session = config.load_session()
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
    splits = schema.split_trials(session["spikes"].shape[0], seed=config.split_seed)
    return {name: self._generate_examples(session, idx) for name, idx in splits.items()}

  def _generate_examples(self, session, trial_indices):
    regions = np.array([str(r) for r in session["regions"]], dtype=object)
    for k in trial_indices:
      example = {
          "spikes": session["spikes"][k].astype(np.int32),
          "regions": regions,
          "session_id": self.builder_config.name,
          "trial_index": int(k),
      }
      for field in schema.TRIAL_FIELDS + schema.BIN_FIELDS:
        example[field] = session[field][k]
      if "rates" in self.info.features:
        example["rates"] = session["rates"][k]
      yield int(k), example
