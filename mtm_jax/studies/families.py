"""Model families (or variants of one) on held-out animals, on the fair protocol of
studies.protocol: pretrain each on 1..n animals, adapt each arm to held-out animals with a
learning rate chosen on the validation split, score the test split once, summarise with 95%
intervals (the MtM paper's Figure 4 with error bars). experiments.family_study compares
NDT1-MtM with spike-token MtM; experiments.scaling, NDT1 pretrained with MtM's masking
with NDT1 pretrained with temporal masking.

A study's families are config.study.families, each a config.<family> (configs/family_study.family):
its label, the TFDS builder of its sessions and its pretrain and finetune stage configs.
The data sets are TFDS config names of animals' sessions (study.session_name): NDT1 reads them
as ibl_binned/<name>, spike-token MtM as spike_events/<name>: the same trials, splits and
counts (docs/synthetic_data.md). Pretraining uses every session (study.sessions_per_animal)
of the first n animals of study.pool; adaptation, session study.heldout_session of each
animal of study.heldout.

Layout of a study workdir (each run a normal workdir, loadable by path alone):
  pretrain/<family>/a<NN>_<steps>steps/                     pretrained on the first NN animals
  adapt/<family>/<arm>/<pretraining>/<animal>/lr<lr>_seed<s>/   one adaptation run (metrics.json
                                                              when scored: the chosen rate only)
  <study.name>.csv, .md, .png                               rows, tables, figure (studies.report)
Finished runs are reused (studies.runs.train_run / score), so a study resumes; a run
folder of another config or pretrained checkpoint is refused (see studies.runs).
"""

from __future__ import annotations

import math
import os
import time

import ml_collections
import numpy as np
from absl import logging

from mtm_jax.evaluation import decoding, report as eval_report
from mtm_jax.studies import protocol, report, runs
from mtm_jax.tasks import registry

FAMILY_FIELDS = ("label", "builder", "pretrain", "finetune")  # of each config.<family> (configs/family_study.family)
MEAN_METRIC = "four_metric_mean_bps"  # the mean of the four 20 ms metrics (what the arms are compared by)
SCORED = eval_report.METRICS + decoding.BEHAVIOUR_METRICS  # what every adaptation run is scored on
# reported where a family's evaluation gives them, not required of every run: NEDS's own encoding
# score (every spike token masked, the behaviour given), which a family without behaviour inputs lacks
OPTIONAL = ("encoding_bps",)


def sessions_of(study, animals: list[str]) -> list[str]:
  """The config names of the first study.sessions_per_animal sessions of each animal
  (study.session_name, e.g. "{animal}_s{session}")."""
  return [study.session_name.format(animal=a, session=k) for a in animals for k in range(study.sessions_per_animal)]


def heldout_sessions(study) -> dict[str, str]:
  """{held-out animal: the config name of its session study.heldout_session, which each arm adapts to}."""
  return {a: study.session_name.format(animal=a, session=study.heldout_session) for a in runs.names(study.heldout)}


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the field when the study is inconsistent."""
  protocol.check(c.study)
  pool, heldout = runs.names(c.study.pool), runs.names(c.study.heldout)
  runs.check_sessions(pool, heldout, list(c.study.sizes))
  unknown = [f for f in c.study.families if not all(k in c.get(f, {}) for k in FAMILY_FIELDS)]
  if unknown:
    raise ValueError(
      f"config.study.families: {unknown} lack a config.<family> with {list(FAMILY_FIELDS)} (configs/family_study.family)"
    )
  for family in c.study.families:
    for stage in ("pretrain", "finetune"):
      names = sessions_of(c.study, pool[:1])
      registry.of(c[family][stage]).check(stage_config(c, family, stage, names, "data", 1))


def stage_config(c, family: str, stage: str, names: list[str], data_dir: str, steps: int) -> ml_collections.ConfigDict:
  """The `stage` config of `family` on the sessions `names` (config names) for `steps`."""
  out = ml_collections.ConfigDict(c[family][stage].to_dict())
  out.train.steps = steps
  out.train.eval_every = out.train.checkpoint_every = steps
  out.train.log_every = min(out.train.log_every, steps)
  out.data.datasets = ",".join(f"{c[family].builder}/{n}" for n in names)
  out.data.data_dir = data_dir
  if "n_sessions" in out.data:
    out.data.n_sessions = 0
  return out


def adapt_config(c, cell: protocol.Cell, session: str, data_dir: str, pretrained, lr: float, seed: int):
  """The config of one adaptation run: `cell` on `session` at learning rate `lr` with
  `seed` (parameter init, masks and dropout, and the order of the batches)."""
  out = stage_config(c, cell.family, "finetune", [session], data_dir, cell.steps)
  out.optimizer.learning_rate = lr
  out.seed = out.data.shuffle_seed = seed
  task = registry.of(out)
  if cell.pretraining is None:
    return task.finetune_config(out, None)
  mode, warm = protocol.FINETUNE[cell.arm]
  out.finetune.warmup_steps = c.study.warmup_steps if warm else 0
  return task.finetune_config(out, pretrained, mode)


def metrics_of(results: dict) -> dict:
  """The scored metrics present in `results`, and MEAN_METRIC when all four MtM metrics are."""
  out = {m: results[m] for m in SCORED + OPTIONAL if isinstance(results.get(m), float)}
  if all(m in out for m in eval_report.METRICS):
    out[MEAN_METRIC] = sum(out[m] for m in eval_report.METRICS) / len(eval_report.METRICS)
  return out


def shared(items: list, attempt) -> dict:
  """{item: attempt(item, wait)} for every item: first without waiting (attempt returns None
  for an item another process of the study holds), then, waiting, the items left. Several
  processes of one study (experiments.family_study --workers) so share its runs out
  instead of queueing for each one."""
  out = {item: attempt(item, False) for item in items}
  return {item: attempt(item, True) if result is None else result for item, result in out.items()}


def _rate(lr: float) -> str:
  return f"lr{lr:g}"


def run_study(
  config: ml_collections.ConfigDict, workdir: str, *, only_analyse: bool = False, write_report: bool = True
) -> list[dict]:
  """Runs (or reuses) every run of the study; writes <study.name>.csv/.md/.png (unless not
  write_report: a process that trains one family of several); returns the rows."""
  validate(config)
  study = config.study
  workdir = os.path.abspath(os.path.expanduser(workdir))
  data_dir = os.path.abspath(os.path.expanduser(study.data_dir))
  pool, heldout = runs.names(study.pool), heldout_sessions(study)
  start = time.time()
  if not only_analyse:
    from data_builders import prepare  # pylint: disable=g-import-not-at-top

    names = sessions_of(study, pool[: max(study.sizes)]) + list(heldout.values())
    prepare.build([f"{config[f].builder}/{n}" for f in study.families for n in names], data_dir)
  rows = []
  for family in study.families:

    def pretrain(p, wait, family=family):
      names = sessions_of(study, pool[: p.animals])
      c = stage_config(config, family, "pretrain", names, data_dir, p.steps)
      return runs.train_run(c, os.path.join(workdir, "pretrain", family, p.label), only_analyse, wait=wait)

    # every pretraining no other process holds, now; one another holds, once a cell needs it
    done = {p: pretrain(p, False) for p in protocol.pretrainings(study)}
    folders = {p: os.path.join(workdir, "pretrain", family, p.label) for p in done}
    adapt, rates = _Runs(config, heldout, data_dir, workdir, folders, only_analyse), {}  # arm -> its rate
    for cell in protocol.cells(study, family):
      tuner = protocol.tuning_cell(study, cell)
      needed = {c.pretraining for c in (cell, tuner) if c.pretraining is not None}
      for p in needed:
        if done[p] is None:
          done[p] = pretrain(p, True)
      if not all(done[p] for p in needed):
        continue
      if cell.arm not in rates:
        rates[cell.arm] = adapt.tune(tuner)
      if rates[cell.arm] is not None:
        rows += adapt.score(cell, rates[cell.arm])
  if write_report:
    report.write(rows, workdir, study.name, MEAN_METRIC)
  logging.info("%s study: %d rows in %.0f s", study.name, len(rows), time.time() - start)
  return rows


class _Runs:
  """The adaptation runs of a study: <workdir>/adapt/<cell>/<animal>/lr<lr>_seed<seed>/."""

  def __init__(self, config, heldout: dict, data_dir: str, workdir: str, pretrained: dict, only_analyse: bool):
    self.config, self.heldout, self.data_dir, self.workdir = config, heldout, data_dir, workdir
    self.pretrained, self.only_analyse = pretrained, only_analyse

  def folder(self, cell, animal: str, lr: float, seed: int) -> str:
    return os.path.join(self.workdir, "adapt", cell.path, animal, f"{_rate(lr)}_seed{seed}")

  def train(self, cell, animal: str, lr: float, seed: int, wait: bool = True) -> bool | None:
    c = adapt_config(
      self.config, cell, self.heldout[animal], self.data_dir, self.pretrained.get(cell.pretraining), lr, seed
    )
    return runs.train_run(c, self.folder(cell, animal, lr, seed), self.only_analyse, wait=wait)

  def tune(self, cell) -> float | None:
    """The learning rate of study.learning_rates whose runs of `cell` (the first seed, every
    held-out animal) end with the lowest mean validation loss; None if some are missing."""
    study = self.config.study
    seed, losses = study.seeds[0], {}
    jobs = [(lr, animal) for lr in study.learning_rates for animal in self.heldout]
    done = shared(jobs, lambda job, wait: self.train(cell, job[1], job[0], seed, wait))
    for lr in study.learning_rates:
      folders = {animal: self.folder(cell, animal, lr, seed) for animal in self.heldout}
      if not all(done[lr, a] or runs.diverged(f) for a, f in folders.items()):
        return None
      # a diverged run's loss is infinite: its rate is chosen only if every rate diverged
      losses[lr] = [protocol.final_val_loss(f) if done[lr, a] else math.inf for a, f in folders.items()]
    if all(math.isinf(np.mean(v)) for v in losses.values()):
      logging.warning(
        "%s %s: every learning rate diverged on the tuning seed; the arm is not scored", cell.family, cell.arm
      )
      return None
    lr = protocol.choose(losses)
    logging.info(
      "%s %s: learning rate %g (validation losses after %s: %s)",
      cell.family,
      cell.arm,
      lr,
      cell.pretraining.label if cell.pretraining else "no pretraining",
      losses,
    )
    return lr

  def score(self, cell, lr: float) -> list[dict]:
    """Trains every seed of `cell` at `lr` on every held-out animal and scores it on
    study.split; returns its rows."""
    study = self.config.study
    jobs = [(animal, seed) for animal in self.heldout for seed in study.seeds]
    done = shared(jobs, lambda job, wait: self._scored(cell, lr, *job, wait))
    return [row for job in jobs for row in done[job]]

  def _scored(self, cell, lr: float, animal: str, seed: int, wait: bool) -> list[dict] | None:
    """The rows of one seed of `cell` on `animal` (trained and scored now if need be); []
    when it has none (diverged, or not trained with --only_analyse); None when wait is False
    and another process holds it."""
    study, p = self.config.study, cell.pretraining
    run_dir = self.folder(cell, animal, lr, seed)
    done = self.train(cell, animal, lr, seed, wait)
    if done is None:
      return None
    if not done:
      if runs.diverged(run_dir):
        logging.warning("%s: diverged at the arm's chosen learning rate; no scores for this seed", run_dir)
      return []
    results = runs.score(run_dir, cell.steps, study.split, SCORED, wait=wait)
    if results is runs.BUSY:
      return None
    if results is None:
      return []
    common = dict(
      family=self.config[cell.family].label,
      arm=cell.arm,
      pretraining=p.label if p else "none",
      pretrain_animals=p.animals if p else 0,
      pretrain_steps=p.steps if p else 0,
      adapt_steps=cell.steps,
      animal=animal,
      seed=seed,
      learning_rate=lr,
      train_seconds=round(protocol.train_seconds(run_dir), 2),
    )
    return [dict(common, metric=m, value=v) for m, v in metrics_of(results).items()]
