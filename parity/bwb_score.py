"""Scores a BrainWideBench submission with the official scorer (ibl-bwb-eval), in its own
environment (`make bwb-env`), for tests/test_bwb_scorer.py: the functions its CLI calls
(ibl_bwb_eval.scoring.{ts1,ts2,ts3}.score_dir, aggregation.aggregate_over_seeds).

Usage: python parity/bwb_score.py PRED_DIR GT_DIR OUT_JSON
Writes {"raw": [[key, metrics], ...], "aggregate": [[[label, task], {metric: [mean, sem, n]}], ...]}.
"""

import json
import sys

from ibl_bwb_eval.scoring import aggregation, ts1, ts2, ts3


def main(pred_dir, gt_dir, out):
  raw = {}
  raw.update(ts1.score_dir(pred_dir, gt_dir))
  raw.update(ts2.score_dir(pred_dir, gt_dir))
  task = aggregation._discover_ts3_task(__import__("pathlib").Path(pred_dir))
  if task is not None:
    raw.update(aggregation.from_ts3(ts3.score_dir(pred_dir, gt_dir), task=task))
  summary = aggregation.aggregate_over_seeds(raw)
  with open(out, "w") as f:
    json.dump(
      {"raw": [[list(k), v] for k, v in raw.items()], "aggregate": [[list(k), v] for k, v in summary.items()]}, f
    )


if __name__ == "__main__":
  main(*sys.argv[1:4])
