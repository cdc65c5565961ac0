"""mtm_jax.bwb against BrainWideBench's official scorer (ibl-bwb-eval 0.1.0, docs/bwb.md).

The scorer runs in its own Python 3.11 environment with CPU PyTorch (parity/.bwb-venv, `make
bwb-env`; or the interpreter in $MTM_BWB_PYTHON): parity/bwb_score.py scores the small
submission of tests/bwb_fixtures.py with the functions its CLI calls, and its CLI runs on the
same folders. Every score both compute (per file, and aggregated over recordings and seeds)
must agree to 1e-6: the scorer accumulates in float32, mtm_jax.bwb in float64. Without that
environment these tests are skipped, with the reason.
"""

import bwb_fixtures
import bwb_official
import pytest

from mtm_jax.bwb import scoring, submission

TOLERANCE = bwb_official.TOLERANCE


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  bwb_official.scorer_python()
  return bwb_fixtures.make(str(tmp_path_factory.mktemp("bwb")))


@pytest.fixture(scope="module")
def official(tiny, tmp_path_factory):
  sub, gt = tiny
  return bwb_official.scores(sub, gt, tmp_path_factory.mktemp("bwb_scores") / "scores.json")


def test_every_file_scores_the_same(tiny, official):
  sub, gt = tiny
  assert submission.validate(sub, gt) == []
  theirs, _ = official
  ours = scoring.score_folder(sub, gt).raw
  assert set(ours) == set(theirs) and len(ours) == 45
  compared = 0
  for key, metrics in ours.items():
    for name, value in metrics.items():
      assert value == pytest.approx(theirs[key][name], abs=TOLERANCE), (key, name)
      compared += 1
  assert compared > 45 * 2


def test_aggregates_are_the_same(tiny, official):
  sub, gt = tiny
  _, theirs = official
  ours = scoring.score_folder(sub, gt).aggregate()
  assert set(ours) == set(theirs)
  for key, metrics in ours.items():
    for name, (mean, sem, n) in metrics.items():
      their_mean, their_sem, their_n = theirs[key][name]
      assert (mean, sem, n) == (
        pytest.approx(their_mean, abs=TOLERANCE),
        pytest.approx(their_sem, abs=TOLERANCE),
        their_n,
      )


def test_scorer_cli_reads_our_files(tiny):
  sub, gt = tiny
  out = bwb_official.run(["-m", "ibl_bwb_eval.scoring.aggregation", "--pred_dir", sub, "--gt_dir", gt, "--all-metrics"])
  assert "tiny" in out and "Error" not in out
  for suite in ("ts1", "ts2", "ts3"):
    out = bwb_official.run(["-m", f"ibl_bwb_eval.scoring.{suite}", "--pred_dir", sub, "--gt_dir", gt])
    assert "tiny" in out and "Error" not in out and "not found" not in out
