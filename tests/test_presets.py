"""The presets fit the sessions they are documented with: spike-token MtM's token buckets
grow from the built sessions' longest trial (up the ladder), POYO's from the longest
window of each split, an explicit cap (config.data.max_tokens) is an error naming the
field and the longest trial or window, and the `tiny` preset pretrains and fine-tunes on
its docstring's default sessions."""

import os
import subprocess
import sys

import pytest

from data_builders import prepare
from mtm_jax.configs import poyo as poyo_config
from mtm_jax.configs import poyo_mtm as poyo_mtm_config
from mtm_jax.datasets.events import buckets as buckets_lib
from mtm_jax.datasets.events import batches as batches_lib
from mtm_jax.datasets.events import tfds as tfds_lib
from mtm_jax.datasets.events import tokens as tokens_lib
from mtm_jax.datasets.events import trials as trials_lib
from mtm_jax.datasets.events import windows as windows_lib
from mtm_jax.tasks import poyo as poyo_task
from mtm_jax.tasks import poyo_mtm as poyo_mtm_task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN_SESSION = "spike_events/synthetic_000"  # the config's default (its docstring's pretraining example)
FINETUNE_SESSION = "spike_events/synthetic_024"  # the docstring's fine-tuning example
POYO_SESSION = "spike_events/reaching_000"  # 168 units: windows with every unit hold up to ~2,300 tokens


def test_buckets_grow_by_the_ladder_only_as_far_as_the_longest_item():
  assert buckets_lib.grow_buckets((256, 512, 1024, 2048), 3192) == (256, 512, 1024, 2048, 3072, 4096)
  assert buckets_lib.grow_buckets((256, 512, 1024, 2048), 2048) == (256, 512, 1024, 2048)
  assert buckets_lib.grow_buckets((1024,), 9000) == (1024, 1536, 2048, 3072, 4096, 6144, 8192, 12288)
  assert buckets_lib.grow_buckets((1000,), 1001) == (1000, 1024)  # back onto the ladder
  for b in (8, 24, 1000, 1024, 1536, 3072, 12288):
    rung = buckets_lib.next_rung(b)
    assert b < rung <= 1.5 * max(b, 16) and rung % 8 == 0, (b, rung)


def test_tiny_preset_reads_its_default_session_and_a_cap_names_the_longest_trial(data_dir):
  prepare.build([PRETRAIN_SESSION], data_dir)
  session = tfds_lib.load_event_session(PRETRAIN_SESSION, data_dir, splits=("val",))
  config = poyo_mtm_config.get_config("tiny")
  data = trials_lib.prepare([session], "val", poyo_mtm_task.trial_config(config))
  longest = int(data.token_counts().max())
  assert longest > config.data.token_buckets[-1]  # the case that failed: 3192 tokens, largest bucket 2048
  assert data.config.bucket_lengths[: len(config.data.token_buckets)] == tuple(config.data.token_buckets)
  assert data.config.bucket_lengths[-2] < longest <= data.config.bucket_lengths[-1]
  trials_lib.check_buckets(data)
  assert trials_lib.evaluation_batches(data, 4)[0]["unit_index"].shape[1] in data.config.bucket_lengths

  config.data.max_tokens = 2048
  with pytest.raises(ValueError, match=rf"config.data.max_tokens=2048: session 'synthetic_000' .* of {longest} tokens"):
    trials_lib.prepare([session], "val", poyo_mtm_task.trial_config(config))


def test_poyo_tiny_evaluates_every_window_whole_and_a_cap_names_the_longest_window(data_dir):
  prepare.build([POYO_SESSION], data_dir)
  session = tfds_lib.load_event_session(POYO_SESSION, data_dir, splits=("train", "val", "test"))
  config = poyo_config.get_config("tiny")
  for split, train in (("test", False), ("val", False), ("train", True)):
    data = windows_lib.prepare([session], split, poyo_task.window_config(config, train=train))
    assert data.config.bucket_lengths[: len(config.data.token_buckets)] == tuple(config.data.token_buckets)
    if not train:  # every evaluation window once: none loses a spike (on main: most, cut to 512 tokens)
      dropped = [int(meta["dropped_spikes"].sum()) for _, meta in batches_lib.evaluation_batches(data, 16)]
      assert sum(dropped) == 0, split
      longest = max(
        tokens_lib.token_count(data, int(s), a, b, None, False) for s, a, b in windows_lib.evaluation_windows(data)
      )
      assert longest > config.data.token_buckets[-1], split  # the case that failed
      assert longest <= data.config.bucket_lengths[-1] < 2 * longest, split  # grown only as far as needed
    else:
      report = batches_lib.token_length_report(data, config.data.batch_size, seed=0, n_batches=4)
      assert report["truncated_windows"] == 0 and report["dropped_spikes"] == 0

  config.data.max_tokens = 1024
  with pytest.raises(ValueError, match=r"config.data.max_tokens=1024: session 'reaching_000' has a window of split"):
    windows_lib.prepare([session], "test", poyo_task.window_config(config, train=False))


def _run(*args):
  result = subprocess.run(
    [sys.executable, "-m", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900
  )
  assert result.returncode == 0, result.stdout[-3000:]
  return result.stdout


@pytest.mark.slow  # about 2 min on 2 cores: trials of 3-5k tokens compile 4 bucket shapes
def test_tiny_preset_pretrains_and_finetunes_on_its_documented_sessions(data_dir, tmp_path):
  prepare.build([PRETRAIN_SESSION, FINETUNE_SESSION], data_dir)
  common = [
    "--config=mtm_jax/configs/poyo_mtm.py:tiny",
    f"--config.data.data_dir={data_dir}",
    "--config.mesh.data=1",
    "--config.train.steps=2",
    "--config.train.eval_every=2",
    "--config.train.checkpoint_every=2",
  ]
  pre, new = tmp_path / "pre", tmp_path / "new"
  _run("experiments.pretrain", *common, f"--workdir={pre}")
  out = _run(
    "experiments.finetune",
    *common,
    "--mode=unit_id",
    f"--pretrained={pre}",
    f"--datasets={FINETUNE_SESSION}",
    f"--workdir={new}",
  )
  assert "saved checkpoint of step 2" in out
