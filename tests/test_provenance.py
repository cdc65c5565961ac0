"""Run provenance (training.provenance): a resume or a study's reuse under another config,
or from another pretrained checkpoint, is refused; allowed changes resume; checkpoints
without provenance still restore."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from mtm_jax.configs import ndt1 as ndt1_config
from mtm_jax.studies import runs
from mtm_jax.tasks import registry
from mtm_jax.training import checkpoint, provenance, trainer
from tests.conftest import DATASET

STEPS = 4


def _config(data_dir, **train):
  c = ndt1_config.get_config("tiny,stitch")
  c.data.datasets, c.data.data_dir = DATASET, data_dir
  c.train.update(dict(steps=STEPS, checkpoint_every=2, eval_every=STEPS, log_every=2, keep_checkpoints=3))
  c.train.update(train)
  c.eval.head_steps = 0
  return c


@pytest.fixture(scope="module")
def pretrained(data_dir, tmp_path_factory):
  """A tiny NDT1-stitch run with checkpoints at steps 2 and 4 (tests copy it before changing it)."""
  workdir = str(tmp_path_factory.mktemp("provenance") / "pretrained")
  trainer.train(registry.get("ndt1"), _config(data_dir), workdir)
  return workdir


def _copy(run, tmp_path, name="run", steps=None) -> str:
  """A copy of `run` (its checkpoints of `steps` only, when given)."""
  target = str(tmp_path / name)
  shutil.copytree(run, target, ignore=shutil.ignore_patterns(".lock"))
  if steps is not None:
    for s in os.listdir(checkpoint.checkpoint_dir(target)):
      if int(s) not in steps:
        shutil.rmtree(os.path.join(checkpoint.checkpoint_dir(target), s))
  return target


def _train(config, workdir):
  return trainer.train(registry.get("ndt1"), config, workdir)


def test_the_config_hash_is_of_the_canonical_json():
  c = ndt1_config.get_config("tiny")
  as_json = json.loads(json.dumps(c.to_dict()))  # tuples come back as lists, keys in any order
  assert provenance.config_hash(c) == provenance.config_hash(dict(reversed(list(as_json.items()))))
  c.optimizer.learning_rate = 1e-3 + 1e-21  # the same float: the same hash
  assert provenance.config_hash(c) == provenance.config_hash(as_json)
  c.optimizer.learning_rate = 1.0000001e-3
  assert provenance.config_hash(c) != provenance.config_hash(as_json)


def test_a_run_records_its_provenance(pretrained):
  saved = checkpoint.read_metadata(pretrained)
  with open(os.path.join(pretrained, provenance.FILE), encoding="utf-8") as f:
    written = json.load(f)
  assert saved.provenance == written and written["pretrained"] is None
  with open(os.path.join(pretrained, "config.json"), encoding="utf-8") as f:
    assert written["config_hash"] == provenance.config_hash(json.load(f)) == provenance.run_hash(pretrained)
  assert written["request"]["train"]["steps"] == STEPS
  assert written["request_hash"] == provenance.config_hash(written["request"])


def test_a_resume_with_other_steps_or_learning_rate_is_refused(data_dir, pretrained, tmp_path):
  run = _copy(pretrained, tmp_path, steps=(2,))
  with pytest.raises(provenance.ProvenanceError, match=r"(?s)config.train.steps: 4 -> 6\n.*another workdir") as e:
    _train(_config(data_dir, steps=6), run)
  assert run in str(e.value) and "config.train.log_every" in str(e.value)  # the fields that may change
  config = _config(data_dir)
  config.optimizer.learning_rate = 2e-3
  with pytest.raises(provenance.ProvenanceError, match=r"config.optimizer.learning_rate: 0.001 -> 0.002"):
    _train(config, run)
  assert checkpoint.latest_step(run) == 2  # nothing trained


def test_at_most_ten_differences_are_listed():
  recorded = dict(request={f"f{i:02d}": i for i in range(13)}, pretrained=None)
  with pytest.raises(provenance.ProvenanceError) as e:
    provenance.check(recorded, {f"f{i:02d}": -i for i in range(13)}, None, "run", "advice")
  lines = str(e.value).splitlines()
  assert lines[1:12] == [f"  config.f{i:02d}: {i} -> {-i}" for i in range(1, 11)] + ["  and 2 more"]
  assert "config.f00" not in str(e.value)  # equal


def test_a_resume_changing_only_allowed_fields_continues_exactly(data_dir, pretrained, tmp_path):
  run = _copy(pretrained, tmp_path, steps=(2,))
  _train(_config(data_dir, log_every=1, checkpoint_every=4, keep_checkpoints=2), run)
  assert checkpoint.latest_step(run) == STEPS
  a, b = (jax.device_get(registry.load_trained(w).params) for w in (pretrained, run))
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert checkpoint.read_metadata(run).provenance["request"]["train"]["log_every"] == 1


def _finetune_config(data_dir, pretrained_dir, steps=2):
  base = _config(data_dir, steps=steps, checkpoint_every=1, eval_every=steps)
  return registry.get("ndt1").finetune_config(base, pretrained_dir)


def test_a_finetune_whose_pretrained_checkpoint_changed_is_refused(data_dir, pretrained, tmp_path):
  pre = _copy(pretrained, tmp_path, "pre")
  ft = str(tmp_path / "ft")
  _train(_finetune_config(data_dir, pre), ft)
  recorded = checkpoint.read_metadata(ft).provenance["pretrained"]
  assert recorded["path"] == pre and recorded["step"] == STEPS
  shutil.rmtree(os.path.join(checkpoint.checkpoint_dir(ft), "2"))  # interrupted after step 1
  # The pretrained run "re-trained": its checkpoint of the same step holds other files.
  meta = os.path.join(checkpoint.checkpoint_dir(pre), str(STEPS), "_CHECKPOINT_METADATA")
  with open(meta, encoding="utf-8") as f:
    text = f.read()
  with open(meta, "w", encoding="utf-8") as f:
    f.write(text + " ")
  with pytest.raises(provenance.ProvenanceError, match=r"config.init.pretrained's checkpoint changed .*: fingerprint"):
    _train(_finetune_config(data_dir, pre), ft)
  # Or it now ends at another step (init.step -1: its newest).
  shutil.rmtree(os.path.join(checkpoint.checkpoint_dir(pre), str(STEPS)))
  with pytest.raises(provenance.ProvenanceError, match=r"checkpoint changed .*step 4 -> 2"):
    _train(_finetune_config(data_dir, pre), ft)
  assert checkpoint.latest_step(ft) == 1


def test_a_study_refuses_a_stale_run_and_reuses_a_matching_one(data_dir, pretrained, tmp_path, monkeypatch):
  run = _copy(pretrained, tmp_path)
  monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("a finished run was trained again"))
  assert runs.train_run(_config(data_dir), run, False)
  assert runs.train_run(_config(data_dir, log_every=1), run, True)
  config = _config(data_dir)
  config.masking.ratio = 0.5
  with pytest.raises(provenance.ProvenanceError, match=rf"(?s){run}: .*config.masking.ratio: 0.3 -> 0.5.*delete"):
    runs.train_run(config, run, False)
  with pytest.raises(provenance.ProvenanceError, match=r"config.train.steps: 4 -> 8"):
    runs.train_run(_config(data_dir, steps=8), run, True)  # analysing only: not reused either


def test_a_study_scores_again_when_the_scores_are_stale(pretrained, monkeypatch):
  calls = []

  def evaluate(workdir, split):
    calls.append(workdir)
    return dict(step=STEPS, split=split, config_hash=provenance.run_hash(workdir), co_smoothing_bps=0.1)

  monkeypatch.setattr(registry, "evaluate_workdir", evaluate)
  path = os.path.join(pretrained, "metrics.json")
  stale = dict(step=STEPS, split="test", config_hash="0" * 64, co_smoothing_bps=0.5)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(stale, f)
  try:
    assert runs.score(pretrained, STEPS, "test", ("co_smoothing_bps",))["co_smoothing_bps"] == 0.1
    assert calls == [pretrained]
    with open(path, "w", encoding="utf-8") as f:
      json.dump(dict(stale, config_hash=provenance.run_hash(pretrained)), f)
    assert runs.score(pretrained, STEPS, "test", ("co_smoothing_bps",))["co_smoothing_bps"] == 0.5
    assert calls == [pretrained]  # fresh: not scored again
  finally:
    os.remove(path)


def test_a_checkpoint_without_provenance_still_restores(data_dir, pretrained, tmp_path, caplog, monkeypatch):
  run = _copy(pretrained, tmp_path)
  for step in ("2", str(STEPS)):
    shutil.rmtree(os.path.join(checkpoint.checkpoint_dir(run), step, "provenance"))
  os.remove(os.path.join(run, provenance.FILE))
  assert checkpoint.read_metadata(run).provenance is None
  trained = registry.load_trained(run)
  assert trained.step == STEPS and provenance.run_hash(run) == provenance.run_hash(pretrained)
  jax.tree.map(
    np.testing.assert_array_equal, *(jax.device_get(t.params) for t in (trained, registry.load_trained(pretrained)))
  )
  # A resume checks its family, model and sessions only (after a warning) ...
  _train(_config(data_dir), run)
  assert "records no provenance" in caplog.text and "nothing to train" in caplog.text
  # ... and a study refuses to reuse it (it cannot tell what it was trained with).
  monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("trained"))
  with pytest.raises(provenance.ProvenanceError, match="records no provenance"):
    runs.train_run(_config(data_dir), run, False)
