"""The POYO new-session study (its config: mtm_jax/configs/poyo_study.py): trains, adapts, scores.

Layout of a study workdir: scratch/, pretrain/ (or pretrain_<n>/ per stage), unit_id/, full/ (POYO workdirs, each
scored run with its metrics.json), poyo_study.json (the summary) and poyo_study.md.
Finished runs (a checkpoint at the last step, metrics.json of that step and config hash)
are reused, so the study resumes where it stopped; a run folder of another config or
pretrained checkpoint is refused (studies.runs.train_run).
"""

from __future__ import annotations

import json
import os
import time

import ml_collections
from absl import logging

from mtm_jax import files
from mtm_jax.datasets import schema
from mtm_jax.studies import runs
from mtm_jax.tasks import registry

ADAPTED = ("unit_id", "full")
SCORES = ("behaviour_r2", "baseline_r2")


def pretrain_stages(c: ml_collections.ConfigDict) -> list[int]:
  """Numbers of pool sessions of the pretraining stages (the last is the whole pool)."""
  n_pool = len(schema.parse_datasets(c.study.pool, "config.study.pool"))
  return list(c.study.get("pool_stages", ())) or [n_pool]


def stage_steps(c: ml_collections.ConfigDict) -> list[int]:
  """Training steps of each pretraining stage (study.stage_steps, or pretrain.train.steps
  for the first and grow.train.steps for the others)."""
  steps = list(c.study.get("stage_steps", ()))
  if steps:
    return steps
  n = len(pretrain_stages(c))
  return [c.pretrain.train.steps] + [c.grow.train.steps] * (n - 1) if "grow" in c or n == 1 else []


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the field when the study is inconsistent."""
  pool = schema.parse_datasets(c.study.pool, "config.study.pool")
  heldout = schema.parse_datasets(c.study.heldout, "config.study.heldout")
  if len(heldout) != 1:
    raise ValueError(f"config.study.heldout: expected one session, got {heldout}")
  if heldout[0] in pool:
    raise ValueError(f"config.study.heldout: {heldout[0]} is also in config.study.pool")
  stages = pretrain_stages(c)
  if stages[-1] != len(pool) or any(b <= a for a, b in zip([0] + stages, stages)):
    raise ValueError(
      f"config.study.pool_stages: expected increasing session counts ending at the pool's "
      f"{len(pool)}, got {tuple(stages)}"
    )
  if len(stages) > 1 and "grow" not in c:
    raise ValueError("config.grow: needed to continue pretraining when config.study.pool_stages has several stages")
  steps = stage_steps(c)
  if len(steps) != len(stages) or any(not isinstance(n, int) or n < 1 for n in steps):
    raise ValueError(
      f"config.study.stage_steps: expected one positive step count per stage of "
      f"config.study.pool_stages {tuple(stages)}, got {tuple(steps)}"
    )
  for stage in ("scratch", "pretrain", "grow", "finetune"):
    if stage in c:
      registry.get("poyo").check(c[stage])


def _stage(base: ml_collections.ConfigDict, datasets: list[str], data_dir: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(base.to_dict())
  c.data.datasets, c.data.data_dir = ",".join(datasets), data_dir
  return c


def _pretrain(
  config: ml_collections.ConfigDict, pool: list[str], data_dir: str, workdir: str, only_analyse: bool
) -> str | None:
  """Runs (or reuses) the pretraining stages; the last stage's workdir, or None when a
  stage is missing (only_analyse) or unfinished."""
  stages = pretrain_stages(config)
  previous = None
  for n, steps in zip(stages, stage_steps(config)):
    run_dir = os.path.join(workdir, "pretrain" if len(stages) == 1 else f"pretrain_{n}")
    if previous is None:
      run_config = _stage(config.pretrain, pool[:n], data_dir)
    else:
      run_config = registry.get("poyo").finetune_config(_stage(config.grow, pool[:n], data_dir), previous, "full")
    if steps != run_config.train.steps:
      run_config.train.steps = steps
      run_config.train.eval_every = run_config.train.checkpoint_every = max(steps // 4, 1)
    if not runs.train_run(run_config, run_dir, only_analyse):
      return None
    previous = run_dir
  return previous


def run_study(config: ml_collections.ConfigDict, workdir: str, *, only_analyse: bool = False) -> dict:
  """Runs (or reuses) every run; writes poyo_study.json/.md in `workdir`; returns the summary:
  {run: {behaviour_r2, baseline_r2}} for scratch, unit_id and full, plus
  unit_id_over_full (R^2 ratio) and scratch_minus_baseline."""
  validate(config)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  data_dir = os.path.abspath(os.path.expanduser(config.study.data_dir))
  pool = schema.parse_datasets(config.study.pool, "config.study.pool")
  heldout = schema.parse_datasets(config.study.heldout, "config.study.heldout")
  start = time.time()
  if not only_analyse:
    from data_builders import prepare  # pylint: disable=g-import-not-at-top

    prepare.build(pool + heldout, data_dir)

  configs = {"scratch": _stage(config.scratch, heldout, data_dir)}
  pretrained = _pretrain(config, pool, data_dir, workdir, only_analyse)
  if pretrained is not None:
    for mode in ADAPTED:
      configs[mode] = registry.get("poyo").finetune_config(_stage(config.finetune, heldout, data_dir), pretrained, mode)
  summary = {}
  for name, run_config in configs.items():
    run_dir = os.path.join(workdir, name)
    if not runs.train_run(run_config, run_dir, only_analyse):
      continue
    results = runs.score(run_dir, run_config.train.steps, config.study.split, SCORES)
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
  lines = [
    f"Held-out session {summary['heldout']} ({summary['split']} split); pretrained on {len(summary['pool'])} sessions.",
    "",
    "| run | POYO R^2 | ridge R^2 |",
    "|---|---:|---:|",
  ]
  for name in ("scratch",) + ADAPTED:
    if name in summary:
      lines.append(f"| {name} | {summary[name]['behaviour_r2']:.4f} | {summary[name]['baseline_r2']:.4f} |")
  if "unit_id_over_full" in summary:
    lines += ["", f"unit identification reaches {100 * summary['unit_id_over_full']:.1f}% of full fine-tuning's R^2."]
  return "\n".join(lines)


def write_outputs(summary: dict, workdir: str) -> None:
  os.makedirs(workdir, exist_ok=True)
  with files.atomic_write(os.path.join(workdir, "poyo_study.json"), encoding="utf-8") as f:
    json.dump(summary, f, indent=2)
  with files.atomic_write(os.path.join(workdir, "poyo_study.md"), encoding="utf-8") as f:
    f.write(table(summary) + "\n")
