"""The NDT1 vs spike-token MtM study: its presets are consistent, each family reads its own
builder's copy of the same sessions, bad settings name the field, and its outputs (CSV,
table, figure with both families) are written from rows. The whole study runs with
`python -m experiments.family_study --config=mtm_jax/configs/family_study.py:tiny`."""

import csv
import os

import pytest

from mtm_jax.configs import family_study as family_config
from mtm_jax.studies import families, scaling


@pytest.mark.parametrize("preset", ["tiny", "small", "full"])
def test_presets_are_consistent(preset):
  c = family_config.get_config(preset)
  families.validate(c)
  names = scaling._names(c.study.pool)[:2]
  ndt1 = families.stage_config(c, "ndt1", "pretrain", names, "/data")
  spike = families.stage_config(c, "spike", "finetune", names, "/data")
  assert ndt1.data.datasets == ",".join(f"ibl_binned/{n}" for n in names) and ndt1.family == "mtm"
  assert spike.data.datasets == ",".join(f"spike_events/{n}" for n in names) and spike.family == "poyo_mtm"


def test_bad_settings_name_the_field():
  for field, value, match in [
    ("heldout", "synthetic_000", "config.study.heldout"),
    ("sizes", (2,), "config.study.sizes"),
    ("arms", ("NDT1-MtM", "POYO"), "config.study.arms"),
    ("pretrain_steps", (10, 20), "config.study.pretrain_steps"),
    ("pretrain_steps", (0,), "config.study.pretrain_steps"),
  ]:
    c = family_config.get_config("tiny")
    c.study[field] = value
    with pytest.raises(ValueError, match=match):
      families.validate(c)
  c = family_config.get_config("tiny")
  c.spike.finetune.masking.mode = "blocks"
  with pytest.raises(ValueError, match="config.masking.mode"):
    families.validate(c)


def test_pretraining_steps_follow_the_number_of_sessions():
  c = family_config.get_config("small")
  c.study.pretrain_steps = (100, 200, 300)
  families.validate(c)
  pool = scaling._names(c.study.pool)
  for family in ("ndt1", "spike"):
    for n, steps in zip(c.study.sizes, c.study.pretrain_steps):
      stage = families.stage_config(c, family, "pretrain", pool[:n], "/data", n)
      assert stage.train.steps == steps and stage.train.checkpoint_every <= steps, (family, n)
    alone = families.stage_config(c, family, "pretrain", pool[:1], "/data")  # a single-session run
    assert alone.train.steps == c[family].pretrain.train.steps
    assert families.stage_config(c, family, "finetune", pool[:1], "/data", 1).train.steps == 500


def test_outputs_hold_both_families(tmp_path):
  results = {"co_smoothing_bps": 0.3, "co_smoothing_bps_5ms": 0.1, "oracle_co_smoothing_bps": 0.5, "step": 3}
  assert families.metrics_of(results) == {
    **{k: v for k, v in results.items() if k != "step"},
    "co_smoothing_oracle_fraction": pytest.approx(0.6),
  }
  four = dict(zip(families.run.METRICS, (0.3, 0.2, 0.1, 0.2)))
  assert families.metrics_of(four)[families.MEAN_METRIC] == pytest.approx(0.2)
  rows = [
    dict(pretrain_sessions=n, mode=arm, session="synthetic_027", metric=m, value=v + 0.01 * n)
    for arm in families.ARMS
    for n in (0, 1, 4)
    for m, v in families.metrics_of(results).items()
  ]
  scaling.write_outputs(rows, str(tmp_path), "families", figure_metrics=("co_smoothing_bps", "intra_region_bps"))
  assert os.path.getsize(tmp_path / "families.png") > 1000
  table = (tmp_path / "families.md").read_text()
  assert all(arm in table for arm in families.ARMS) and "oracle_co_smoothing_bps" in table
  with open(tmp_path / "families.csv", encoding="utf-8") as f:
    assert len(list(csv.DictReader(f))) == len(rows)
