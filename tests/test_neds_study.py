"""The NEDS study (configs/neds_study.py): NEDS against NDT1-MtM on the fair protocol of
the family study (studies.families), its presets consistent and what issue 34 asks; the
whole tiny study end to end (slow test)."""

import os

import pytest

from mtm_jax.configs import family_study as family_config
from mtm_jax.configs import neds_study
from mtm_jax.studies import families, protocol, runs


@pytest.mark.parametrize("preset", ["tiny", "small", "full"])
def test_presets_are_consistent(preset):
  c = neds_study.get_config(preset)
  families.validate(c)
  names = families.sessions_of(c.study, runs.names(c.study.pool)[:2])
  neds = families.stage_config(c, "neds", "pretrain", names, "/data", 7)
  ndt1 = families.stage_config(c, "ndt1", "finetune", names, "/data", 7)
  assert neds.data.datasets == ndt1.data.datasets == ",".join(f"ibl_binned/{n}" for n in names)  # the same trials
  assert (neds.family, ndt1.family) == ("neds", "ndt1")
  assert neds.train.steps == ndt1.train.steps == 7
  assert "spike" not in c


def test_small_preset_holds_what_the_issue_asks():
  c = neds_study.get_config("small")
  s = c.study
  assert tuple(s.sizes) == (1, 4, 12) and len(s.seeds) >= 3 and len(runs.names(s.heldout)) >= 2
  assert set(s.families) == {"neds", "ndt1"} and protocol.SCRATCH in s.arms
  # NDT1-MtM is the family study's small NDT1, so the two studies' NDT1 arms are the same runs' configs
  assert c.ndt1.finetune.to_dict() == family_config.get_config("small").ndt1.finetune.to_dict()
  assert c.neds.finetune.data.batch_size == c.ndt1.finetune.data.batch_size
  full = neds_study.get_config("full").study
  assert len(full.seeds) >= 5 and len(runs.names(full.heldout)) >= 3 and tuple(full.sizes) == (1, 4, 12)


def test_unknown_preset_is_named():
  with pytest.raises(ValueError, match="neds_study config: unknown preset 'huge'"):
    neds_study.get_config("huge")


@pytest.mark.slow
def test_tiny_neds_study_end_to_end(study_data_dir, tmp_path):
  c = neds_study.get_config("tiny")
  c.study.data_dir = study_data_dir
  rows = families.run_study(c, str(tmp_path))
  assert {(r["family"], r["arm"]) for r in rows} == {(c[f].label, a) for f in c.study.families for a in c.study.arms}
  neds_metrics = {r["metric"] for r in rows if r["family"] == "NEDS"}
  assert {"co_smoothing_bps", "choice_accuracy", "wheel_speed_r2", families.MEAN_METRIC} <= neds_metrics
  for name in ("neds.csv", "neds.md", "neds.png"):
    assert os.path.exists(tmp_path / name)
