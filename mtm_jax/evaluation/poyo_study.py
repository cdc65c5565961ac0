"""The POYO new-session study (mtm_jax/configs/poyo_study.py): trains, adapts, scores.

Layout of a study workdir: scratch/, pretrain/ (or pretrain_<n>/ per stage), unit_id/, full/ (POYO workdirs, each
scored run with its metrics.json), poyo_study.json (the summary) and poyo_study.md.
Finished runs (a checkpoint at the last step, metrics.json of that step) are reused, so
the study resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import time

import ml_collections
from absl import logging

from mtm_jax.configs import poyo_study as study_config
from mtm_jax.datasets import schema
from mtm_jax.evaluation import poyo_run, scaling
from mtm_jax.training import poyo_loop

ADAPTED = ("unit_id", "full")
SCORES = ("behaviour_r2", "baseline_r2")


def _stage(base: ml_collections.ConfigDict, datasets: list[str], data_dir: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(base.to_dict())
  c.data.datasets, c.data.data_dir = ",".join(datasets), data_dir
  return c


def _pretrain(config: ml_collections.ConfigDict, pool: list[str], data_dir: str, workdir: str,
              only_analyse: bool) -> str | None:
  """Runs (or reuses) the pretraining stages; the last stage's workdir, or None when a
  stage is missing (only_analyse) or unfinished."""
  stages = study_config.pretrain_stages(config)
  previous = None
  for n, steps in zip(stages, study_config.stage_steps(config)):
    run_dir = os.path.join(workdir, "pretrain" if len(stages) == 1 else f"pretrain_{n}")
    if previous is None:
      run_config = _stage(config.pretrain, pool[:n], data_dir)
    else:
      run_config = poyo_loop.finetune_config(_stage(config.grow, pool[:n], data_dir), previous, "full")
    if steps != run_config.train.steps:
      run_config.train.steps = steps
      run_config.train.eval_every = run_config.train.checkpoint_every = max(steps // 4, 1)
    if not scaling.train_run(run_config, run_dir, only_analyse, poyo_loop.train):
      return None
    previous = run_dir
  return previous


def run_study(config: ml_collections.ConfigDict, workdir: str, *, only_analyse: bool = False) -> dict:
  """Runs (or reuses) every run; writes poyo_study.json/.md in `workdir`; returns the summary:
  {run: {behaviour_r2, baseline_r2}} for scratch, unit_id and full, plus
  unit_id_over_full (R^2 ratio) and scratch_minus_baseline."""
  study_config.validate(config)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  data_dir = os.path.abspath(os.path.expanduser(config.study.data_dir))
  pool = schema.parse_datasets(config.study.pool, "config.study.pool")
  heldout = schema.parse_datasets(config.study.heldout, "config.study.heldout")
  start = time.time()
  if not only_analyse:
    from data_builders import prepare  # pylint: disable=g-import-not-at-top
    prepare.build(pool + heldout, data_dir)

  runs = {"scratch": _stage(config.scratch, heldout, data_dir)}
  pretrained = _pretrain(config, pool, data_dir, workdir, only_analyse)
  if pretrained is not None:
    for mode in ADAPTED:
      runs[mode] = poyo_loop.finetune_config(_stage(config.finetune, heldout, data_dir), pretrained, mode)
  summary = {}
  for name, run_config in runs.items():
    run_dir = os.path.join(workdir, name)
    if not scaling.train_run(run_config, run_dir, only_analyse, poyo_loop.train):
      continue
    results = scaling.scored(run_dir, run_config.train.steps, SCORES, config.study.split)
    if results is None:
      results = poyo_run.evaluate_workdir(run_dir, config.study.split)
    summary[name] = {k: float(results[k]) for k in SCORES}
  if "unit_id" in summary and "full" in summary:
    summary["unit_id_over_full"] = summary["unit_id"]["behaviour_r2"] / summary["full"]["behaviour_r2"]
  if "scratch" in summary:
    summary["scratch_minus_baseline"] = summary["scratch"]["behaviour_r2"] - summary["scratch"]["baseline_r2"]
  summary.update(heldout=heldout[0], pool=pool, split=config.study.split, seconds=time.time() - start)
  write_outputs(summary, workdir)
  logging.info("POYO study: %.0f s", summary["seconds"])
  return summary


def table(summary: dict) -> str:
  """A markdown table of the summary."""
  lines = [f"Held-out session {summary['heldout']} ({summary['split']} split); pretrained on "
           f"{len(summary['pool'])} sessions.", "", "| run | POYO R^2 | ridge R^2 |", "|---|---:|---:|"]
  for name in ("scratch",) + ADAPTED:
    if name in summary:
      lines.append(f"| {name} | {summary[name]['behaviour_r2']:.4f} | {summary[name]['baseline_r2']:.4f} |")
  if "unit_id_over_full" in summary:
    lines += ["", f"unit identification reaches {100 * summary['unit_id_over_full']:.1f}% of full fine-tuning's R^2."]
  return "\n".join(lines)


def write_outputs(summary: dict, workdir: str) -> None:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "poyo_study.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2)
  with open(os.path.join(workdir, "poyo_study.md"), "w", encoding="utf-8") as f:
    f.write(table(summary) + "\n")
