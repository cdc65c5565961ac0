"""What `experiments.evaluate` says while it works (one line per stage, with its time, and
ETAs from mtm_jax.progress), and its flags checked before any scoring."""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from mtm_jax import progress
from mtm_jax.configs import ndt1 as ndt1_config, poyo_mtm as poyo_mtm_config
from mtm_jax.tasks import registry
from mtm_jax.training import checkpoint, config_checks, provenance
from mtm_jax.training import trainer
from tests.conftest import DATASET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIME = r"\((\d+\.\d s|\d+ s|\d+ min \d+ s)\)$"  # a stage line's elapsed time


class FakeClock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def _stage(clock, lines, **kw):
  return progress.Stage("co_smoothing", clock=clock, log=lambda fmt, *args: lines.append(fmt % args), **kw)


def test_a_stage_logs_its_end_once_and_an_eta_at_most_every_ten_seconds():
  clock, lines = FakeClock(), []
  with _stage(clock, lines) as stage:
    for done in range(1, 101):  # 100 chunks of 0.5 s: 50 s in all
      clock.now += 0.5
      stage.update(done, 100, "chunks")
    stage.note = "0.2134 bps"
  assert lines == [
    "co_smoothing: 20/100 chunks after 10 s, about 40 s left",
    "co_smoothing: 40/100 chunks after 20 s, about 30 s left",
    "co_smoothing: 60/100 chunks after 30 s, about 20 s left",
    "co_smoothing: 80/100 chunks after 40 s, about 10 s left",
    "co_smoothing: 0.2134 bps (50 s)",
  ]
  assert stage.finish() == 50.0 and len(lines) == 5  # the end line is written once


def test_a_short_stage_is_one_line_and_a_failed_one_none():
  clock, lines = FakeClock(), []
  with _stage(clock, lines) as stage:
    clock.now += 3.25
    stage.update(1, 2)  # before `every` seconds: no line
  assert lines == ["co_smoothing: done (3.2 s)"]
  with pytest.raises(RuntimeError), _stage(clock, lines):
    raise RuntimeError("stopped")
  assert len(lines) == 1
  assert [progress.seconds(t) for t in (0.04, 42.4, 200, 4000)] == ["0.0 s", "42 s", "3 min 20 s", "1 h 06 min"]


# ------------------------------------------------------------------------------ NDT1, the program


@pytest.fixture(scope="module")
def workdir(data_dir, tmp_path_factory):
  """A tiny NDT1 trained 2 steps, in a folder named "mtm_run"."""
  path = str(tmp_path_factory.mktemp("evalprogress") / "mtm_run")
  c = ndt1_config.get_config("tiny")
  c.data.datasets, c.data.data_dir = DATASET, data_dir
  c.train.update(steps=2, checkpoint_every=2, eval_every=2)
  c.eval.head_steps = 2
  trainer.train(registry.get("ndt1"), c, path)
  return path


def _evaluate(*args):
  """(status, lines of stdout and stderr) of experiments.evaluate."""
  result = subprocess.run(
    [sys.executable, "-m", "experiments.evaluate", *args],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    timeout=600,
  )
  return result.returncode, result.stdout.splitlines()


def _messages(lines):
  """The text of absl's lines (after 'file:line] ')."""
  return [l.split("] ", 1)[1] for l in lines if "] " in l]


def test_an_ndt1_evaluation_prints_each_stage_in_order_with_its_time(workdir):
  status, lines = _evaluate(f"--workdir={workdir}", "--plots")
  assert status == 0, "\n".join(lines[-30:])
  print("\n".join(lines))  # what a user sees (pytest -s shows it)
  stages = [m for m in _messages(lines) if re.search(TIME, m)]
  names = [m.split(":")[0] for m in stages]
  assert names == [
    "co_smoothing",
    "forward_prediction",
    "inter_region",
    "intra_region",
    "decoders' features (the unmasked trials)",
    "decoder choice_accuracy",
    "decoder whisker_motion_energy_r2",
    "decoder wheel_speed_r2",
    "head choice_accuracy",
    "head whisker_motion_energy_r2",
    "head wheel_speed_r2",
    "evaluation",
    "plots",
  ], "\n".join(lines)
  # The first line comes as soon as the flags are checked, before any scoring (loading, restoring and the
  # first compile take seconds).
  messages = [m for m in _messages(lines) if not m.startswith("re-ran with")]  # entry's huge-pages line
  assert messages[0] == f"loading {workdir} (step 2) and {DATASET}...", "\n".join(lines)
  assert re.fullmatch(r"co_smoothing: -?\d+\.\d{4} bps " + TIME[:-1], stages[0]), stages[0]
  assert re.fullmatch(r"plots: rasters of \w+: .*rasters\.png " + TIME[:-1], stages[-1]), stages[-1]
  with open(os.path.join(workdir, "rasters.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------ flags first


def _other_family(workdir, tmp_path, family="poyo_mtm"):
  """A copy of `workdir` whose saved config says `family` (only metadata is read)."""
  copy = tmp_path / f"{family}_run"
  shutil.copytree(workdir, copy)
  found = 0
  for folder, _, names in os.walk(copy / "checkpoints"):
    for name in names:
      path = os.path.join(folder, name)
      if os.path.basename(folder) == "config" and not name.startswith("_"):
        text = open(path).read()
        if '"family": "ndt1"' in text:
          open(path, "w").write(text.replace('"family": "ndt1"', f'"family": "{family}"'))
          found += 1
  assert found, "no saved config found"
  return str(copy)


def test_a_checkpoint_whose_config_says_mtm_is_read_as_ndt1(workdir, tmp_path):
  """NDT1's family id was "mtm" before "ndt1": a checkpoint saved with it loads, is a
  pretrained model and resumes as NDT1's (registry.of, Task.pretrained_config, checkpoint.check_compatible,
  provenance.differences), and "mtm" typed as a family still names NDT1."""
  old = _other_family(workdir, tmp_path, family="mtm")
  saved, records = checkpoint.load_metadata(old)
  assert saved.family == "mtm" and registry.of(saved).family == "ndt1" and registry.get("mtm").family == "ndt1"
  assert registry.of_workdir(old) is registry.get("ndt1")
  assert registry.load_trained(old).config.family == "mtm"  # read as it was saved
  assert registry.get("ndt1").pretrained_config(old).family == "mtm"
  now, _ = checkpoint.load_metadata(workdir)  # the same run saved as today's
  assert now.family == "ndt1"
  checkpoint.check_compatible(saved, records, now, records, old)
  assert config_checks.family_of({}) == "ndt1" and config_checks.family_of({"family": "poyo"}) == "poyo"
  assert provenance.differences({"family": "mtm", "seed": 1}, {"family": "ndt1", "seed": 1}) == []
  assert provenance.differences({"family": "poyo"}, {"family": "ndt1"}) == [("family", "poyo", "ndt1")]
  other, _ = checkpoint.load_metadata(_other_family(workdir, tmp_path, family="poyo_mtm"))
  with pytest.raises(ValueError, match="config.family"):
    checkpoint.check_compatible(other, records, now, records, old)


def test_compare_entries_are_checked_before_scoring(workdir, tmp_path):
  assert registry.check_evaluation(workdir, plots=True, compare=[f"again={workdir}"]) == {
    "mtm_run": workdir,
    "again": workdir,
  }
  bad = {
    "temporal": r"--compare: expected label=workdir .*got 'temporal'",
    "=x": r"--compare: expected label=workdir",
    "a b=x": r"--compare: expected label=workdir",
    f"mtm_run={workdir}": r"--compare: label 'mtm_run' given twice",
    f"gone={tmp_path / 'gone'}": r"gone: no checkpoints directory",
    f"spikes={_other_family(workdir, tmp_path)}": r"--compare: .*poyo_mtm_run holds a spike-token MtM model; .* NDT1",
  }
  for entry, message in bad.items():
    with pytest.raises((ValueError, FileNotFoundError), match=message):
      registry.check_evaluation(workdir, plots=True, compare=[entry])
  with pytest.raises(ValueError, match=r"--compare: the compared models are drawn in --plots' figure; add --plots"):
    registry.check_evaluation(workdir, compare=[f"again={workdir}"])


def test_plots_of_a_family_without_a_figure_are_refused_before_scoring(workdir, tmp_path):
  other = _other_family(workdir, tmp_path)
  with pytest.raises(ValueError, match=r"--plots: spike-token MtM models have no figure"):
    registry.check_evaluation(other, plots=True)


def test_the_program_stops_on_a_bad_flag_before_scoring(workdir, tmp_path):
  fresh = str(tmp_path / "mtm_copy")
  shutil.copytree(workdir, fresh, ignore=shutil.ignore_patterns("metrics.json", "*.png", "*.npz"))
  start = time.monotonic()
  status, lines = _evaluate(f"--workdir={fresh}", "--plots", "--compare=temporal")
  assert status == 1 and not os.path.exists(os.path.join(fresh, "metrics.json"))
  assert "error: ValueError: --compare: expected label=workdir" in lines[-2], lines
  assert not any(re.search(TIME, m) for m in _messages(lines)), lines  # no stage ran
  assert time.monotonic() - start < 60


def test_a_family_reading_the_other_kind_of_data_set_is_one_clear_line():
  ndt1 = ndt1_config.get_config("tiny")
  ndt1.data.datasets = "spike_events/synthetic_000"
  with pytest.raises(
    ValueError, match=r"config.data.datasets: 'spike_events/synthetic_000' is a data set of spike_events, "
  ):
    registry.get("ndt1").check(ndt1)
  with pytest.raises(ValueError, match=r"NDT1 reads ibl_binned data sets \(ibl_binned/<session>\)"):
    registry.get("ndt1").check(ndt1)
  tokens = poyo_mtm_config.get_config("tiny")
  tokens.data.datasets = DATASET
  with pytest.raises(
    ValueError, match=r"is a data set of ibl_binned, read by NDT1 .*; spike-token MtM reads spike_events"
  ):
    registry.get("poyo_mtm").check(tokens)


def test_pretrain_refuses_an_event_data_set_for_ndt1_before_reading_it(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.pretrain",
      "--config=mtm_jax/configs/ndt1.py:tiny",
      "--config.data.datasets=spike_events/synthetic_000",
      f"--workdir={tmp_path / 'run'}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 1
  assert (
    "error: ValueError: config.data.datasets: 'spike_events/synthetic_000' is a data set of spike_events"
    in result.stderr
  )
  assert "KeyError" not in result.stderr
  assert not json.dumps(os.listdir(tmp_path)).count("checkpoints")


# ------------------------------------------------------------------------------ re-runs


def test_a_nodecoding_rerun_keeps_the_earlier_decoding_scores_and_says_so(workdir, tmp_path, caplog):
  run_dir = str(tmp_path / "mtm_rerun")
  shutil.copytree(workdir, run_dir)
  earlier = {
    "session_id": "synthetic_000",
    "split": "test",
    "step": 2,
    "config_hash": provenance.run_hash(run_dir, 2),  # scores of this very checkpoint
    "co_smoothing_bps": 99.0,  # recomputed: the new score wins
    "choice_accuracy": 0.5,
    "head_choice_accuracy": 0.25,
    "decoding_folds": {"choice_accuracy": 4},
    "skipped": {"wheel_speed_r2": "constant trace"},
  }
  with open(os.path.join(run_dir, "metrics.json"), "w") as f:
    json.dump(earlier, f)
  caplog.set_level("INFO")
  results = registry.evaluate_workdir(run_dir, decode=False)
  with open(os.path.join(run_dir, "metrics.json")) as f:
    saved = json.load(f)
  assert saved == results
  assert saved["co_smoothing_bps"] != 99.0
  assert saved["choice_accuracy"] == 0.5 and saved["head_choice_accuracy"] == 0.25
  assert saved["decoding_folds"] == {"choice_accuracy": 4}
  assert saved["skipped"]["wheel_speed_r2"] == "constant trace"  # the earlier reason, not "decoding turned off"
  assert saved["skipped"]["whisker_motion_energy_r2"] == "decoding turned off"  # never scored
  assert "choice_accuracy" not in saved["skipped"]
  assert any(
    m.startswith("kept 2 earlier scores of ") and m.endswith("did not compute: choice_accuracy, head_choice_accuracy")
    for m in caplog.messages
  ), caplog.messages
  # Scores of another step, or of another config's checkpoint, are not mixed in.
  for other in (dict(earlier, step=1), dict(earlier, config_hash="0" * 64)):
    with open(os.path.join(run_dir, "metrics.json"), "w") as f:
      json.dump(other, f)
    assert "choice_accuracy" not in registry.evaluate_workdir(run_dir, decode=False)


def test_compared_models_join_the_table_under_their_labels(tmp_path, caplog):
  scored, unscored = tmp_path / "temporal_run", tmp_path / "fresh_run"
  scored.mkdir(), unscored.mkdir()
  theirs = {"split": "test", "step": 6, "masking_mode": "temporal", "co_smoothing_bps": 0.3, "skipped": {}}
  (scored / "metrics.json").write_text(json.dumps(theirs))
  caplog.set_level("INFO")
  others = registry.compared_scores({"temporal": str(scored), "fresh": str(unscored)}, "test")
  assert others == {"temporal": theirs}
  assert any(m.startswith("--compare fresh: ") and "not in the table" in m for m in caplog.messages)
  ours = {"session_id": "s", "split": "test", "step": 2, "masking_mode": "mtm", "co_smoothing_bps": 0.2, "skipped": {}}
  lines = registry.get("ndt1").report(ours, label="mtm_run", others=others).splitlines()
  assert lines[1] == "| metric | mtm_run | temporal |" and lines[3] == "| co_smoothing | 0.2000 | 0.3000 |"
  assert registry.get("ndt1").report(ours).splitlines()[1] == "| metric | mtm |"  # alone: its masking mode, as before
