"""NDT1-MtM against spike-token MtM on the same sessions: pretrain on 1..n sessions,
adapt to held-out ones, score the four MtM metrics, plot (the MtM paper's Figure 4 with
both families).

The sessions are TFDS config names (synthetic_020, an IBL eid ...); NDT1 reads them as
ibl_binned/<name>, spike-token MtM as spike_events/<name>: the same trials, splits and
counts (docs/synthetic_data.md). Arms (a label each, the `mode` column of the rows):
  NDT1-MtM                 pretrained NDT1-stitch, new stitchers, every parameter trains
  spike-token MtM unit-id  pretrained spike-token MtM, only the new unit/session rows train
  spike-token MtM full     the same, then everything trains
and, with study.scratch, each family trained on the held-out session alone (n = 0), with
its pretraining stage's config (steps, schedule): a single-session model of each family.

Layout of a study workdir (each run a normal workdir, loadable by path alone):
  pretrain/<family>/n<NN>/              pretrained on the first NN sessions of study.pool
  finetune/<arm>/n<NN>/<session>/       adapted to a held-out session (metrics.json)
  families.csv, families.png, families.md   the rows, the figure and the table
Finished runs are reused (studies.scaling.train_run / score), so a study resumes; a run
folder of another config or pretrained checkpoint is refused (see studies.scaling).
"""

from __future__ import annotations

import os
import time

import ml_collections
from absl import logging

from mtm_jax.evaluation import run
from mtm_jax.studies import scaling
from mtm_jax.tasks import registry

BUILDERS = {"ndt1": "ibl_binned", "spike": "spike_events"}  # family key -> TFDS builder of its sessions
# label -> (family key, fine-tuning mode, whether it has a from-scratch run)
ARMS = {
  "NDT1-MtM": ("ndt1", "full", True),
  "spike-token MtM unit-id": ("spike", "unit_id", False),
  "spike-token MtM full": ("spike", "full", True),
}


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the field when the study is inconsistent."""
  pool = scaling._names(c.study.pool)
  scaling.check_sessions(pool, scaling._names(c.study.heldout), list(c.study.sizes))
  steps = list(c.study.get("pretrain_steps", ()))
  if steps and (len(steps) != len(c.study.sizes) or min(steps) < 1):
    raise ValueError(
      f"config.study.pretrain_steps: {steps} must be one positive step count per entry of "
      f"config.study.sizes {list(c.study.sizes)} (or empty: each family's pretrain.train.steps)"
    )
  unknown = [a for a in c.study.arms if a not in ARMS]
  if unknown:
    raise ValueError(f"config.study.arms: unknown {unknown}; expected some of {list(ARMS)}")
  for family in {ARMS[a][0] for a in c.study.arms}:
    for stage in ("pretrain", "finetune"):
      registry.of(c[family][stage]).check(stage_config(c, family, stage, pool[:1], "data"))


def stage_config(
  c, family: str, stage: str, names: list[str], data_dir: str, size: int = 0
) -> ml_collections.ConfigDict:
  """The `stage` config of `family` on the sessions `names` (config names). size: the
  pretraining run of study.sizes[i] sessions runs study.pretrain_steps[i] steps where those
  are given (0: the stage's own steps, e.g. a single-session run)."""
  out = ml_collections.ConfigDict(c[family][stage].to_dict())
  steps = dict(zip(c.study.sizes, c.study.get("pretrain_steps", ())))
  if stage == "pretrain" and size in steps:
    out.train.steps = steps[size]
    out.train.eval_every = out.train.checkpoint_every = min(out.train.checkpoint_every, out.train.steps)
  out.data.datasets = ",".join(f"{BUILDERS[family]}/{n}" for n in names)
  out.data.data_dir = data_dir
  if "n_sessions" in out.data:
    out.data.n_sessions = 0
  return out


MEAN_METRIC = "four_metric_mean_bps"  # the mean of the four 20 ms metrics (what the arms are compared by)


def metrics_of(results: dict) -> dict:
  """The four metrics (and their 10 ms / 5 ms versions and oracles where present), their
  mean at the training bin (MEAN_METRIC, when all four are there) and, per width,
  co-smoothing's fraction of the oracle ("co_smoothing_oracle_fraction[_5ms]")."""
  keys = [m for m in results if any(m.startswith(b) or m.startswith(f"oracle_{b}") for b in run.METRICS)]
  out = {m: results[m] for m in keys if isinstance(results[m], float)}
  if all(m in out for m in run.METRICS):
    out[MEAN_METRIC] = sum(out[m] for m in run.METRICS) / len(run.METRICS)
  for key in [k for k in out if k.startswith("co_smoothing_bps")]:
    oracle = out.get(f"oracle_{key}")
    if oracle:
      out[key.replace("co_smoothing_bps", "co_smoothing_oracle_fraction")] = out[key] / oracle
  return out


def run_study(config: ml_collections.ConfigDict, workdir: str, *, only_analyse: bool = False) -> list[dict]:
  """Runs (or reuses) every run of the study; writes families.csv/.png/.md; returns the rows."""
  validate(config)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  data_dir = os.path.abspath(os.path.expanduser(config.study.data_dir))
  pool, heldout = scaling._names(config.study.pool), scaling._names(config.study.heldout)
  families = sorted({ARMS[a][0] for a in config.study.arms})
  start = time.time()
  if not only_analyse:
    from data_builders import prepare  # pylint: disable=g-import-not-at-top

    names = pool[: max(config.study.sizes)] + heldout
    prepare.build([f"{BUILDERS[f]}/{n}" for f in families for n in names], data_dir)
  rows = []
  for arm in config.study.arms:
    family, mode, has_scratch = ARMS[arm]
    for n in ([0] if config.study.scratch and has_scratch else []) + list(config.study.sizes):
      pretrained = None
      if n:
        pretrained = os.path.join(workdir, "pretrain", family, f"n{n:02d}")
        if not scaling.train_run(
          stage_config(config, family, "pretrain", pool[:n], data_dir, n), pretrained, only_analyse
        ):
          continue
      for session in heldout:
        run_dir = os.path.join(workdir, "finetune", arm.replace(" ", "_"), f"n{n:02d}", session)
        base = stage_config(config, family, "finetune" if n else "pretrain", [session], data_dir)
        ft = registry.of(base).finetune_config(base, pretrained, mode if pretrained else None)
        if not scaling.train_run(ft, run_dir, only_analyse):
          continue
        results = scaling.score(run_dir, ft.train.steps, config.study.split, run.METRICS)
        if results is None:
          continue
        rows += [
          dict(pretrain_sessions=n, mode=arm, session=session, metric=m, value=v)
          for m, v in metrics_of(results).items()
        ]
  scaling.write_outputs(
    rows, workdir, "families", figure_metrics=(MEAN_METRIC,) + run.METRICS + tuple(f"{m}_5ms" for m in run.METRICS)
  )
  logging.info("families study: %d rows in %.0f s", len(rows), time.time() - start)
  return rows
