"""The family study on the fair protocol (studies.protocol): its presets are consistent,
bad settings name the field, every arm of a family adapts on the same trials for the same
steps with its learning rate chosen on validation losses, intervals and paired
differences are right, and its outputs (CSV, tables, figure with error bars) are written
from rows. The whole study runs with
`python -m experiments.family_study --config=mtm_jax/configs/family_study.py:tiny` (slow test)."""

import csv
import json
import math
import os

import numpy as np
import pytest
from scipy import stats

from mtm_jax import files
from mtm_jax.configs import family_study as family_config
from mtm_jax.configs import scaling as scaling_config
from mtm_jax.studies import families, protocol, report, runs
from mtm_jax.tasks import registry
from mtm_jax.training import checkpoint, trainer


@pytest.mark.parametrize("preset", ["tiny", "small", "full"])
def test_presets_are_consistent(preset):
  c = family_config.get_config(preset)
  families.validate(c)
  names = families.sessions_of(c.study, runs.names(c.study.pool)[:2])
  ndt1 = families.stage_config(c, "ndt1", "pretrain", names, "/data", 7)
  spike = families.stage_config(c, "spike", "finetune", names, "/data", 7)
  assert ndt1.data.datasets == ",".join(f"ibl_binned/{n}" for n in names) and ndt1.family == "ndt1"
  assert spike.data.datasets == ",".join(f"spike_events/{n}" for n in names) and spike.family == "poyo_mtm"
  assert ndt1.train.steps == spike.train.steps == spike.train.checkpoint_every == 7
  cells = protocol.cells(c.study, "ndt1")
  assert {x.arm for x in cells} == set(protocol.ARMS)
  adapted = [x for x in cells if x.arm != protocol.MATCHED]
  assert {x.steps for x in adapted} == {c.study.adapt_steps}  # every arm adapts for the same steps
  assert not set(runs.names(c.study.heldout)) & set(runs.names(c.study.pool))


def test_small_preset_holds_what_the_issue_asks():
  s = family_config.get_config("small").study
  assert len(s.seeds) >= 3 and len(runs.names(s.heldout)) >= 2 and set(s.sizes) >= {1, 12}
  assert s.control_steps > s.pretrain_steps and set(s.families) == {"ndt1", "spike"}
  full = family_config.get_config("full").study
  assert len(full.seeds) >= 5 and len(runs.names(full.heldout)) >= 3 and tuple(full.sizes) == (1, 4, 12)


def test_bad_settings_name_the_field():
  for field, value, match in [
    ("heldout", "synthetic_000", "config.study.heldout"),
    ("sizes", (2,), "config.study.sizes"),
    ("arms", ("scratch", "POYO"), "config.study.arms"),
    ("seeds", (0, 0), "config.study.seeds"),
    ("learning_rates", (0.0,), "config.study.learning_rates"),
    ("warmup_steps", 3, "config.study.warmup_steps"),
    ("adapt_steps", 0, "config.study.adapt_steps"),
    ("control_steps", -1, "config.study.control_steps"),
    ("families", ("ndt1", "poyo"), "config.study.families"),
  ]:
    c = family_config.get_config("tiny")
    c.study[field] = value
    with pytest.raises(ValueError, match=match):
      families.validate(c)
  c = family_config.get_config("tiny")
  c.spike.finetune.masking.mode = "blocks"
  with pytest.raises(ValueError, match="config.masking.mode"):
    families.validate(c)


def test_intervals_choices_and_verdicts():
  x = [0.2, 0.25, 0.22, 0.3]
  mean, low, high = protocol.interval(x)
  expected = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
  assert mean == pytest.approx(np.mean(x)) and (low, high) == pytest.approx(expected)
  assert protocol.interval([0.5]) == (0.5, 0.5, 0.5)
  assert [protocol.verdict(*v) for v in ((0.01, 0.2), (-0.2, -0.01), (-0.1, 0.1))] == ["better", "worse", "tie"]
  assert protocol.choose({1e-3: [2.0, 2.2], 3e-3: [1.9, 2.1], 1e-2: [1.9, 2.1]}) == 3e-3  # a tie: the smaller


def _rows(arm, pretraining, values, metric="m"):
  """Rows of one cell: values over 2 animals x len(values) / 2 seeds."""
  animals, steps = (0, 0) if pretraining == "none" else (int(pretraining[1:3]), 10)
  common = dict(family="F", arm=arm, pretraining=pretraining, pretrain_animals=animals, pretrain_steps=steps)
  common.update(adapt_steps=5, learning_rate=1e-3, train_seconds=1.5, metric=metric)
  return [dict(common, animal=f"a{i % 2}", seed=i // 2, value=v) for i, v in enumerate(values)]


def test_paired_differences_against_scratch(tmp_path):
  scratch = [0.10, 0.20, 0.30, 0.40]
  rows = _rows(protocol.SCRATCH, "none", scratch) + _rows(protocol.MATCHED, "none", [0.1, 0.2, 0.3, 0.4])
  rows += _rows(protocol.FROZEN, "a01_10steps", [v + 0.05 + 0.001 * i for i, v in enumerate(scratch)])
  rows += _rows(protocol.ALL, "a12_10steps", [v - 0.05 - 0.001 * i for i, v in enumerate(scratch)])
  rows += _rows(protocol.WARMUP, "a12_10steps", [0.40, 0.10, 0.30, 0.20])
  summary = {(e["arm"], e["pretraining"]): e for e in protocol.summarise(rows)}
  assert summary[(protocol.FROZEN, "a01_10steps")]["vs_scratch_verdict"] == "better"
  assert summary[(protocol.ALL, "a12_10steps")]["vs_scratch_verdict"] == "worse"
  assert summary[(protocol.WARMUP, "a12_10steps")]["vs_scratch_verdict"] == "tie"
  assert summary[(protocol.FROZEN, "a01_10steps")]["vs_scratch"] == pytest.approx(0.0515)
  assert "vs_scratch" not in summary[(protocol.SCRATCH, "none")]
  # over animals: the t interval of the 2 animals' mean differences (df 1)
  frozen = summary[(protocol.FROZEN, "a01_10steps")]
  per_animal = [0.05 + 0.001 * np.mean([0, 2]), 0.05 + 0.001 * np.mean([1, 3])]
  expected = stats.t.interval(0.95, 1, loc=np.mean(per_animal), scale=stats.sem(per_animal))
  assert (frozen["vs_scratch_animals_low"], frozen["vs_scratch_animals_high"]) == pytest.approx(expected)
  assert frozen["vs_scratch_animals_verdict"] == "better" and frozen["n_animals"] == 2
  assert protocol.animal_means({("a", 0): 1.0, ("a", 1): 3.0, ("b", 0): 5.0}) == [2.0, 5.0]
  report.write(rows, str(tmp_path), "families", "m")
  table = (tmp_path / "families.md").read_text()
  assert "+0.0515 [" in table and "] better; over animals better" in table and "] worse" in table and "] tie" in table
  assert os.path.getsize(tmp_path / "families.png") > 1000
  with open(tmp_path / "families.csv", encoding="utf-8") as f:
    assert len(list(csv.DictReader(f))) == len(rows)


def test_families_are_compared_pairwise_against_the_first(tmp_path):
  base = [0.10, 0.20, 0.30, 0.40]
  rows = _rows(protocol.SCRATCH, "none", base) + _rows(protocol.WARMUP, "a04_10steps", base)
  other = [
    dict(r, family="G") for r in _rows(protocol.SCRATCH, "none", [v + 0.1 + 0.01 * i for i, v in enumerate(base)])
  ]
  other += [dict(r, family="G") for r in _rows(protocol.WARMUP, "a04_10steps", [0.40, 0.10, 0.30, 0.20])]
  diffs = {(e["family"], e["arm"]): e for e in protocol.family_differences(rows + other, "F")}
  assert set(diffs) == {("G", protocol.SCRATCH), ("G", protocol.WARMUP)}  # the reference is never compared with itself
  scratch = diffs[("G", protocol.SCRATCH)]
  assert scratch["vs_family"] == pytest.approx(0.115) and scratch["vs_family_verdict"] == "better"
  assert scratch["n"] == 4 and "vs_family_animals_verdict" in scratch
  assert diffs[("G", protocol.WARMUP)]["vs_family_verdict"] == "tie"
  report.write(rows + other, str(tmp_path), "two", "m")
  table = (tmp_path / "two.md").read_text()
  assert "Against F (the same arm" in table and "| G | scratch | none | +0.1150 [" in table
  report.write(rows, str(tmp_path), "one", "m")
  assert "Against" not in (tmp_path / "one.md").read_text()  # one family: nothing to compare


def test_run_records_give_val_loss_and_training_time(tmp_path):
  with open(tmp_path / "metrics.jsonl", "w", encoding="utf-8") as f:
    for record in (
      dict(step=10, loss=2.0, steps_per_second=5.0),
      dict(step=10, val_loss=1.5),
      dict(step=30, loss=1.0, steps_per_second=10.0),
      dict(step=30, val_loss=1.25),
    ):
      f.write(json.dumps(record) + "\n")
  assert protocol.final_val_loss(str(tmp_path)) == 1.25 and protocol.train_seconds(str(tmp_path)) == 4.0
  assert protocol.final_val_loss(str(tmp_path / "none")) == math.inf
  assert math.isnan(protocol.train_seconds(str(tmp_path / "none")))


def test_every_arm_adapts_on_the_same_trials_for_the_same_steps(study_data_dir, tmp_path):
  c = family_config.get_config("tiny")
  c.study.data_dir = study_data_dir
  pre = families.stage_config(c, "ndt1", "pretrain", ["synthetic_000"], study_data_dir, 2)
  pre_dir = str(tmp_path / "pre")
  trainer.train(registry.of(pre), pre, pre_dir)
  configs = {
    cell.arm: families.adapt_config(c, cell, "synthetic_027", study_data_dir, pre_dir, 2e-3, 1)
    for cell in protocol.cells(c.study, "ndt1")
    if cell.arm != protocol.MATCHED
  }
  first = configs[protocol.SCRATCH]
  for arm, config in configs.items():
    assert config.data.to_dict() == first.data.to_dict(), arm  # the same batches of the same trials
    assert (config.train.steps, config.seed, config.optimizer.to_dict()) == (
      first.train.steps,
      first.seed,
      first.optimizer.to_dict(),
    ), arm
    assert config.masking.to_dict() == first.masking.to_dict(), arm
  assert configs[protocol.FROZEN].finetune.mode == "unit_id"
  assert (configs[protocol.WARMUP].finetune.mode, configs[protocol.WARMUP].finetune.warmup_steps) == ("full", 1)
  assert (configs[protocol.ALL].finetune.mode, configs[protocol.ALL].finetune.warmup_steps) == ("full", 0)
  assert not first.init.pretrained and configs[protocol.ALL].init.pretrained == os.path.abspath(pre_dir)


def test_each_arm_tunes_once_after_the_largest_step_matched_pretraining():
  study = family_config.get_config("small").study
  tuners = {}
  for cell in protocol.cells(study, "spike"):
    tuners.setdefault(cell.arm, set()).add(protocol.tuning_cell(study, cell))
  assert set(tuners) == set(protocol.ARMS) and all(len(t) == 1 for t in tuners.values())
  for arm in (protocol.FROZEN, protocol.WARMUP, protocol.ALL):
    (tuner,) = tuners[arm]
    assert tuner.pretraining == protocol.Pretraining(max(study.sizes), study.pretrain_steps), arm
  assert [t.pretraining for t in tuners[protocol.SCRATCH] | tuners[protocol.MATCHED]] == [None, None]


@pytest.mark.slow
def test_tiny_study_end_to_end(study_data_dir, tmp_path):
  c = family_config.get_config("tiny")
  c.study.data_dir = study_data_dir
  rows = families.run_study(c, str(tmp_path))
  arms = {(r["family"], r["arm"]) for r in rows}
  assert arms == {(c[f].label, a) for f in c.study.families for a in protocol.ARMS}
  assert {r["seed"] for r in rows} == set(c.study.seeds)
  rates = {(r["family"], r["arm"]): set() for r in rows}
  for r in rows:
    rates[(r["family"], r["arm"])].add(r["learning_rate"])
  assert all(len(v) == 1 for v in rates.values())  # one choice per family and arm
  for name in ("families.csv", "families.md", "families.png"):
    assert os.path.exists(tmp_path / name)
  again = families.run_study(c, str(tmp_path), only_analyse=True)  # every run reused
  assert sorted(map(str, again)) == sorted(map(str, rows))


def test_a_diverged_run_is_marked_loses_the_tuning_and_is_not_trained_again(study_data_dir, tmp_path, monkeypatch):
  c = family_config.get_config("tiny")
  config = families.stage_config(c, "ndt1", "finetune", ["synthetic_027"], study_data_dir, 6)
  config.optimizer.learning_rate, config.train.max_nonfinite_steps = 1e30, 2  # non-finite within a few steps
  workdir = str(tmp_path / "run")
  assert not runs.train_run(config, workdir, False)
  assert runs.diverged(workdir) and "non-finite" in open(os.path.join(workdir, runs.DIVERGED)).read()
  monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("a diverged run was trained again"))
  assert not runs.train_run(config, workdir, False)
  assert protocol.choose({1e-3: [math.inf, 0.5], 3e-3: [0.9, 0.8]}) == 3e-3  # as the tuning counts a diverged run


def test_processes_of_a_study_share_its_runs_out(study_data_dir, tmp_path, monkeypatch):
  """A run another process holds is left for later (train_run with wait=False: None, not
  trained); shared comes back to it, waiting, after the others."""
  c = family_config.get_config("tiny")
  config = families.stage_config(c, "ndt1", "finetune", ["synthetic_027"], study_data_dir, 2)
  workdir = str(tmp_path / "run")
  monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("a run another process holds was trained"))
  with files.waiting(str(tmp_path / ".run.lock"), "holding it"):  # runs._run_lock's file
    assert runs.train_run(config, workdir, False, wait=False) is None
  calls = []

  def attempt(item, wait):
    calls.append((item, wait))
    return None if item == "held" and not wait else item.upper()

  assert families.shared(["a", "held", "b"], attempt) == {"a": "A", "held": "HELD", "b": "B"}
  assert calls == [("a", False), ("held", False), ("b", False), ("held", True)]


def test_the_scaling_study_runs_on_the_protocol_and_resumes(study_data_dir, tmp_path):
  """experiments.scaling's config: NDT1 pretrained with MtM's masking and with temporal
  masking, each adapted as scratch, compute-matched scratch and all; scaling.csv/.md/.png;
  a second run reuses every run (nothing trained again)."""
  c = scaling_config.get_config("tiny")
  c.study.data_dir = study_data_dir
  c.study.learning_rates, c.study.seeds = (1e-3,), (0,)  # one rate and one seed: a quarter of the runs
  rows = families.run_study(c, str(tmp_path))
  assert {(r["family"], r["arm"]) for r in rows} == {
    (c[f].label, a) for f in ("mtm", "temporal") for a in (protocol.SCRATCH, protocol.MATCHED, protocol.ALL)
  }
  for family, mode in (("mtm", "mtm"), ("temporal", "temporal")):
    run = tmp_path / "adapt" / family / "all" / "a01_4steps" / "synthetic_027" / "lr0.001_seed0"
    recorded = json.loads((run / "config.json").read_text())
    assert recorded["masking"]["mode"] == mode and recorded["model"]["use_prompt"] == (mode == "mtm")
  for name in ("scaling.csv", "scaling.md", "scaling.png"):
    assert os.path.getsize(tmp_path / name) > 0
  ckpt = checkpoint.checkpoint_dir(str(tmp_path / "pretrain" / "temporal" / "a01_4steps"))
  stamp = os.path.getmtime(ckpt)
  again = families.run_study(c, str(tmp_path))
  assert os.path.getmtime(ckpt) == stamp
  assert sorted(map(str, again)) == sorted(map(str, rows))


def test_a_process_adapts_the_scratch_arms_while_another_pretrains(study_data_dir, tmp_path, monkeypatch):
  """A pretraining another process holds is waited for only when a cell first needs it."""
  c = family_config.get_config("tiny")
  c.study.data_dir, c.study.families, c.study.arms = study_data_dir, ("ndt1",), (protocol.SCRATCH, protocol.ALL)
  c.study.learning_rates, c.study.seeds = (1e-3,), (0,)
  other = files.waiting(str(tmp_path / "pretrain" / "ndt1" / ".a01_4steps.lock"), "pretraining")
  other.__enter__()  # another process pretraining
  order, train_run = [], runs.train_run

  def recording(config, workdir, only_analyse, *, wait=True):
    done = train_run(config, workdir, only_analyse, wait=wait)
    order.append((os.path.relpath(workdir, tmp_path).split(os.sep)[:3], wait, done))
    if workdir.startswith(str(tmp_path / "adapt" / "ndt1" / "scratch")):
      other.__exit__(None, None, None)  # the other process is done (without a checkpoint: trained here)
    return done

  monkeypatch.setattr(runs, "train_run", recording)
  rows = families.run_study(c, str(tmp_path), write_report=False)
  first = [o for i, o in enumerate(order) if o not in order[:i]]  # a cell's runs come back when scored
  assert first == [
    (["pretrain", "ndt1", "a01_4steps"], False, None),
    (["adapt", "ndt1", "scratch"], False, True),
    (["pretrain", "ndt1", "a01_4steps"], True, True),
    (["adapt", "ndt1", "all"], False, True),
  ]
  assert {r["arm"] for r in rows} == {protocol.SCRATCH, protocol.ALL}
