"""The POYO new-session study end to end (tiny), its resumption and its config checks."""

import json

import numpy as np
import pytest

from mtm_jax.configs import poyo_study as study_config
from mtm_jax.studies import poyo as poyo_study
from mtm_jax.training import checkpoint, trainer


@pytest.mark.slow  # ~1.5 min on an idle 2-core CPU: four trainings and three sliding-window evaluations
def test_study_runs_scores_and_resumes(data_dir, tmp_path, monkeypatch):
  config = study_config.get_config("tiny")
  config.study.data_dir = data_dir
  config.study.stage_steps = (4, 6)  # the second stage longer than config.grow's 4 steps
  summary = poyo_study.run_study(config, str(tmp_path))
  for run in ("scratch", "unit_id", "full"):
    assert np.isfinite(summary[run]["behaviour_r2"]) and np.isfinite(summary[run]["baseline_r2"])
    assert json.loads((tmp_path / run / "metrics.json").read_text())["step"] == 4
  # The same held-out test split and timestamps: the ridge baseline is the same number.
  assert summary["scratch"]["baseline_r2"] == pytest.approx(summary["unit_id"]["baseline_r2"])
  assert summary["unit_id_over_full"] == pytest.approx(
    summary["unit_id"]["behaviour_r2"] / summary["full"]["behaviour_r2"]
  )
  assert "unit identification reaches" in (tmp_path / "poyo_study.md").read_text()
  # Pretraining grew the pool in two stages; the second continued from the first.
  assert [r["name"] for r in checkpoint.load_metadata(str(tmp_path / "pretrain_1"))[1]] == ["spike_events/reaching_001"]
  grown = checkpoint.load_metadata(str(tmp_path / "pretrain_2"))
  assert [r["name"] for r in grown[1]] == ["spike_events/reaching_001", "spike_events/reaching_002"]
  assert grown[0].init.pretrained == str(tmp_path / "pretrain_1")
  assert checkpoint.latest_step(str(tmp_path / "pretrain_2")) == 6

  def no_training(*args, **kwargs):
    raise AssertionError("a finished run was trained again")

  monkeypatch.setattr(trainer, "train", no_training)
  again = poyo_study.run_study(config, str(tmp_path))
  assert {k: again[k] for k in ("scratch", "unit_id", "full")} == {
    k: summary[k] for k in ("scratch", "unit_id", "full")
  }


@pytest.mark.parametrize(
  "field,value,message",
  [
    ("heldout", "spike_events/reaching_000,spike_events/reaching_002", "expected one session"),
    ("heldout", "spike_events/reaching_001", "also in config.study.pool"),
    ("pool", "", "config.study.pool: no data set"),
    ("pool_stages", (2, 1), "config.study.pool_stages: expected increasing"),
    ("pool_stages", (1,), "config.study.pool_stages: expected increasing session counts ending at the pool's 2"),
    ("stage_steps", (4,), r"config.study.stage_steps: expected one positive step count per stage .* got \(4,\)"),
    ("stage_steps", (4, 0), "config.study.stage_steps"),
  ],
)
def test_bad_study_configs_name_the_field(field, value, message):
  config = study_config.get_config("tiny")
  config.study[field] = value
  with pytest.raises(ValueError, match=message):
    poyo_study.validate(config)
