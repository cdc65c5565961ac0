"""NEDS as a family on the trainer: config checks, behaviour tokens, pretraining on two
sessions that resumes bit for bit, encoding and decoding scores, a data set without
whisker motion energy, and fine-tuning on a new session from the pretrained weights."""

import json
import os

import jax
import numpy as np
import pytest

from mtm_jax.configs import neds as neds_config
from mtm_jax.datasets import behaviour_tokens, pipeline
from mtm_jax.evaluation import neds as neds_eval
from mtm_jax.tasks import neds as neds_task, registry
from mtm_jax.training import trainer
from tests import run_checks
from tests.conftest import DATASET, STUDY_DATASETS

STEPS = 4


def tiny_config(data_dir, datasets=(DATASET, STUDY_DATASETS[0])):
  c = neds_config.get_config("tiny")
  c.data.datasets, c.data.data_dir = ",".join(datasets), data_dir
  c.train.steps = STEPS
  c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 2, STEPS, 2
  c.eval.split, c.eval.max_masks = "val", 4  # scored on 54 trials, 4 neurons per task: seconds
  return c


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("family", "mtm", "config.family"),
    ("masking.schemes", ("encoding", "decode"), "config.masking.schemes"),
    ("masking.weights", (1.0, -1.0, 1.0, 1.0, 1.0), "config.masking.weights"),
    ("masking.weights", (1.0, 1.0), "config.masking.weights"),
    ("masking.ratio", 1.5, "config.masking.ratio"),
    ("loss.wheel", -1.0, "config.loss.wheel"),
    ("model.size", "huge", "config.model.size"),
    ("model.modalities", ("spike", "gaze"), "config.model.modalities"),
    ("model.modalities", ("spike",), "config.model.modalities"),
    ("data.datasets", "spike_events/reaching_000", "config.data.datasets"),
    ("eval.split", "holdout", "config.eval.split"),
    ("eval.max_masks", -1, "config.eval.max_masks"),
    ("train.steps", 0, "config.train.steps"),
    ("finetune.mode", "frozen", "config.finetune.mode"),
  ],
)
def test_config_checks_name_the_field(field, value, message):
  c = neds_config.get_config("tiny")
  neds_task.check_config(c)
  section, _, name = field.rpartition(".")
  with c.unlocked():
    (c[section] if section else c)[name] = value
  with pytest.raises(ValueError, match=message):
    neds_task.check_config(c)


def test_presets_and_their_sizes():
  for preset, layers in (("single", 5), ("medium", 16), ("large", 22), ("demo", 2), ("tiny", 1)):
    c = neds_config.get_config(preset)
    neds_task.check_config(c)
    assert neds_task.neds.Hparams.from_config(c.model).n_layers == layers, preset
  assert neds_config.get_config("single").optimizer.learning_rate == 2e-4
  with pytest.raises(ValueError, match="unknown preset"):
    neds_config.get_config("huge")


def test_behaviour_tokens_in_the_models_units():
  np.testing.assert_array_equal(behaviour_tokens.choice_classes(np.array([-1, 1, 1]), "x"), [0, 1, 1])
  np.testing.assert_array_equal(behaviour_tokens.block_classes(np.array([0.8, 0.2, 0.5]), "x"), [2, 0, 1])
  with pytest.raises(ValueError, match="x: 'block' must hold one of"):
    behaviour_tokens.block_classes(np.array([0.3]), "x")
  with pytest.raises(ValueError, match="x: 'choice' must hold"):
    behaviour_tokens.choice_classes(np.array([0]), "x")
  train = dict(
    spikes=np.zeros((4, 100, 3), np.uint8),
    trial_index=np.arange(4),
    wheel_speed=np.arange(400, dtype=np.float32).reshape(4, 100),
    choice=np.array([1, -1, 1, -1]),
    block=np.array([0.5, 0.5, 0.2, 0.8]),
  )
  mods = ("spike", "choice", "block", "wheel", "whisker")
  stats = behaviour_tokens.trace_stats(train, mods)
  assert set(stats) == {"wheel"} and np.isclose(stats["wheel"][0], 199.5)
  record = dict(present=behaviour_tokens.present_modalities(train, mods), stats=stats)
  assert record["present"] == ["spike", "choice", "block", "wheel"]  # no whisker: absent, not invented
  arrays = behaviour_tokens.model_arrays(train, record, mods, "x")
  assert abs(arrays["wheel"].mean()) < 1e-5 and np.isclose(arrays["wheel"].std(), 1.0, atol=1e-5)
  assert not arrays["whisker"].any() and arrays["block"].tolist() == [1, 1, 0, 2]


@pytest.fixture(scope="module")
def pretrained(study_data_dir, tmp_path_factory):
  """A tiny NEDS pretrained STEPS steps on two sessions."""
  workdir = str(tmp_path_factory.mktemp("neds") / "pre")
  config = tiny_config(study_data_dir)
  trainer.train(registry.get("neds"), config, workdir)
  return config, workdir


def test_pretraining_on_two_sessions_resumes_exactly(pretrained, tmp_path):
  config, workdir = pretrained
  trained = registry.load_trained(workdir)
  assert trained.names == [DATASET, STUDY_DATASETS[0]] and trained.step == STEPS
  assert all(set(r["present"]) == set(neds_config.get_config("tiny").model.modalities) for r in trained.records)
  lines = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert any("val_loss" in line for line in lines) and all(
    np.isfinite(line["loss"]) for line in lines if "loss" in line
  )
  run_checks.assert_resumes_exactly("neds", config, workdir, None, STEPS, tmp_path)


def test_a_step_changes_only_its_sessions_rows(pretrained):
  config, workdir = pretrained
  task = registry.get("neds")
  trained = registry.load_trained(workdir)
  params = trained.params
  mask = neds_task.session_row_mask(params, {"session": np.array([1, 1])})
  flat = run_checks.flat(jax.tree.map(np.asarray, mask))
  assert flat["io/spike/stitch_in/kernel"].shape[:2] == (2, 1)
  assert flat["io/spike/stitch_in/kernel"].ravel().tolist() == [False, True]
  assert flat["io/choice/token_weights"].ravel().tolist() == [False, True]
  assert flat["mask_token"].shape == () and bool(flat["mask_token"])
  tx = task.create(config, trained.records, trained.mesh)[1]
  counts = run_checks.flat(tx.init(params)[0].count)
  assert counts["io/wheel/session/embedding"].shape == (2, 1) and counts["layers/0/attn/query/kernel"].shape == ()


def test_the_loss_weighs_modalities_and_draws_per_batch_as_neds(pretrained):
  config, workdir = pretrained
  trained = registry.load_trained(workdir)
  rng = np.random.default_rng(0)
  batch = dict(
    spikes=rng.poisson(0.3, (4, 100, trained.n_neurons)).astype(np.float32),
    session=np.ones(4, np.int32),
    choice=rng.integers(0, 2, 4).astype(np.int32),
    block=rng.integers(0, 3, 4).astype(np.int32),
    wheel=rng.normal(size=(4, 100)).astype(np.float32),
    whisker=rng.normal(size=(4, 100)).astype(np.float32),
  )
  mods = neds_task.neds.Hparams.from_config(config.model).modalities
  consts = neds_task.consts_of(trained.records, mods)
  c = neds_config.get_config("tiny")
  c.loss.choice = c.loss.block = c.loss.wheel = c.loss.whisker = 0.0
  c.masking.per_example = False  # NEDS's draw (training runs the default, per example)
  total, metrics = neds_task.masked_loss(
    trained.graphdef, trained.params, batch, consts, jax.random.key(3), config=c, train=False
  )
  assert np.isfinite(float(total)) and float(total) == float(metrics["loss_spike"])


def test_evaluation_scores_encoding_and_decoding(pretrained):
  _, workdir = pretrained
  results = registry.evaluate_workdir(workdir)
  for name in (DATASET, STUDY_DATASETS[0]):
    r = results["sessions"][name]
    for metric in neds_eval.ENCODING_METRICS + ("choice_accuracy", "block_balanced_accuracy", "wheel_speed_r2"):
      assert np.isfinite(r[metric]), (name, metric)
    assert "whisker_motion_energy_r2" in r and not r["skipped"] and r["absent"] == []
  assert "co_smoothing" in registry.get("neds").report(results)


def test_a_data_set_without_whisker_trains_and_evaluates(study_data_dir, tmp_path, monkeypatch):
  load = pipeline.load_split

  def without_whisker(dataset, data_dir, split, fields=None):
    out = load(dataset, data_dir, split, fields)
    out.pop("whisker_motion_energy", None)
    return out

  monkeypatch.setattr(pipeline, "load_split", without_whisker)
  config = tiny_config(study_data_dir, (DATASET,))
  config.train.steps = config.train.eval_every = config.train.checkpoint_every = 2
  workdir = str(tmp_path / "nowhisker")
  trainer.train(registry.get("neds"), config, workdir)
  trained = registry.load_trained(workdir)
  assert "whisker" not in trained.records[0]["present"] and "whisker" not in trained.records[0]["stats"]
  results, _ = registry.get("neds").evaluate(trained, "val")
  assert results["absent"] == ["whisker"]
  assert results["skipped"] == {"whisker_motion_energy_r2": neds_eval.ABSENT}
  assert np.isfinite(results["co_smoothing_bps"]) and np.isfinite(results["wheel_speed_r2"])


def test_finetuning_on_a_new_session_merges_the_pretrained_weights(pretrained, study_data_dir, tmp_path):
  _, pre_dir = pretrained
  task = registry.get("neds")
  config = tiny_config(study_data_dir, (STUDY_DATASETS[1],))
  config.train.steps = config.train.eval_every = config.train.checkpoint_every = 2
  config.model.size = "single"  # replaced by the pretrained architecture
  config = task.finetune_config(config, pre_dir, "unit_id")
  assert config.model.size == "tiny"
  workdir = str(tmp_path / "ft")
  trainer.train(task, config, workdir)
  pre = run_checks.flat(registry.load_trained(pre_dir).params)
  ft = registry.load_trained(workdir)
  assert ft.names == [STUDY_DATASETS[1]]
  after = run_checks.flat(ft.params)
  for name in ("layers/0/attn/query/kernel", "mask_token", "io/spike/position/embedding"):
    np.testing.assert_array_equal(after[name], pre[name], err_msg=name)  # unit_id: shared weights as pretrained
  assert after["io/spike/stitch_in/kernel"].shape == (1, 138, 276)
  assert not np.array_equal(after["io/wheel/session/embedding"][0], pre["io/wheel/session/embedding"][0])
