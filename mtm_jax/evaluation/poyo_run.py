"""A trained POYO workdir scored on a split: the checkpoint restored, its sessions read,
behaviour R^2 and the ridge baseline written to <workdir>/metrics.json (NDT1's: run.py).

Here, not in poyo_eval (the scores of arrays), because the training loop imports
poyo_eval for its validation: loading a run needs the loop, so it sits above both.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

from mtm_jax.datasets import events
from mtm_jax.evaluation import poyo_eval
from mtm_jax.training import checkpoint, poyo_loop


def merged(a: dict, b: dict) -> dict:
  """The keys of results a and b together, their "skipped" mappings joined (no "skipped"
  when neither has one)."""
  skipped = {**a.get("skipped", {}), **b.get("skipped", {})}
  return {**a, **b, **({"skipped": skipped} if skipped else {})}


def evaluate_workdir(workdir: str, split: str = "test", step: int | None = None,
                     sessions: Sequence[dict] | None = None, baseline: bool = True, data_dir: str | None = None) -> dict:
  """Scores the POYO model in `workdir` on `split` of its training sessions
  (config.data.datasets, read from TFDS; or the given event `sessions`, which must be in
  the model's vocabulary) and writes <workdir>/metrics.json:
    behaviour_r2, behaviour_r2_<output>  means over sessions (outputs: events.output_names,
                                         e.g. wheel_speed; dim0, dim1, ... when unnamed);
    baseline_r2, baseline_r2_<output>    the ridge baseline on the same timestamps;
    sessions {id: {behaviour_r2, behaviour_r2_<output>, baseline_r2, ...}}, split, step."""
  trained = poyo_loop.load_trained(workdir, step)
  checkpoint.relocate_data(trained.config, data_dir)  # data_dir: where the data sets are now (None: recorded)
  checkpoint.check_writable(workdir, "metrics.json")
  config = trained.config
  if sessions is None:
    sessions = poyo_loop.load_sessions(config, (split, "train"))
  data = events.prepare(sessions, split, poyo_loop.window_config(config, train=False), vocab=trained.vocab,
                        scale=trained.scale)
  if data.vocab != trained.vocab:
    raise ValueError(f"{workdir}: sessions {[s['session_id'] for s in sessions if s['session_id'] not in trained.vocab.session_ids]} "
                     "are not in the model's vocabulary; fine-tune on them first")
  results, stitched = poyo_eval.evaluate_data(trained.graphdef, trained.params, data, task=poyo_loop.behaviour_task(config),
                                    batch_size=config.eval.batch_size, mesh=trained.mesh)
  if baseline:
    base = poyo_eval.baseline_scores(data, stitched, bin_size=config.eval.baseline_bin, lags=config.eval.baseline_lags)
    per_session = {sid: merged(r, base["sessions"][sid]) for sid, r in results["sessions"].items()}
    results = merged(results, base)
    results["sessions"] = per_session
  results = {**results, "skipped": results.get("skipped", {}), "split": split, "step": trained.step}
  with open(os.path.join(os.path.abspath(os.path.expanduser(workdir)), "metrics.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2)
  return results
