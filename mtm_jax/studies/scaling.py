"""The scaling study: pretrain on 1..n sessions, fine-tune on held-out ones, score, plot.

Layout of a study workdir (each run a normal workdir, loadable by path alone):
  pretrain/<mode>/n<NN>/                 NDT1-stitch pretrained on the first NN sessions
  finetune/<mode>/n<NN>/<session>/       fine-tuned on a held-out session (metrics.json)
  finetune/<mode>/n00/<session>/         trained on the held-out session alone (scratch)
  scaling.csv                            pretrain_sessions, mode, session, metric, value
  scaling.png, scaling.md                the figure (MtM paper Fig. 4) and its table

Runs are skipped when finished (a checkpoint at the last step; metrics.json of that step
and of that checkpoint's config hash), so an interrupted study resumes where it stopped.
A run folder is reused or resumed only when its recorded provenance (training.provenance:
the config it was given, its pretrained checkpoint's identity) matches the study's run,
up to the fields a resume may change (provenance.RESUMABLE). Otherwise the study stops
with provenance.ProvenanceError naming the folder and the differing fields, rather than
retraining it: the folder is the user's to delete (or the study's config to restore). A
run folder written before runs recorded their provenance is refused the same way. Scores
(metrics.json) record the config hash of the checkpoint they scored ("config_hash") and
its step; stale ones are scored again. Two study processes in one study workdir
share the runs: each run is trained and scored under its lock (_run_lock); the other
process waits for it, then reuses it. The outputs are written whole (files.atomic_write).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import time

import jax
import ml_collections
from absl import logging

from mtm_jax import files, masking
from mtm_jax.evaluation import decoding, plots, run
from mtm_jax.studies import report
from mtm_jax.tasks import registry
from mtm_jax.training import checkpoint, provenance, trainer

METRICS = run.METRICS + decoding.BEHAVIOUR_METRICS + run.HEAD_METRICS
CSV_FIELDS = ("pretrain_sessions", "mode", "session", "metric", "value")


def _names(text: str) -> list[str]:
  return [n.strip() for n in text.split(",") if n.strip()]


def _short(name: str) -> str:
  return name.replace("/", "_")


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the field when the study is inconsistent."""
  check_sessions(_names(c.study.pool), _names(c.study.heldout), list(c.study.sizes))
  for mode in c.study.modes:
    if mode not in masking.MODES:
      raise ValueError(f"config.study.modes: unknown {mode!r}; expected some of {masking.MODES}")


def check_sessions(pool: list[str], heldout: list[str], sizes: list[int]) -> None:
  """config.study.pool, heldout and sizes of a study: held-out sessions outside the pool,
  sizes increasing counts of pool sessions (ValueError naming the field)."""
  if not heldout:
    raise ValueError("config.study.heldout: no held-out session")
  if set(pool) & set(heldout):
    raise ValueError(f"config.study.heldout: {sorted(set(pool) & set(heldout))} are also in config.study.pool")
  if not sizes or min(sizes) < 1 or max(sizes) > len(pool) or sizes != sorted(set(sizes)):
    raise ValueError(
      f"config.study.sizes: {sizes} must be increasing counts in 1..{len(pool)} (the sessions of config.study.pool)"
    )


def stage_config(base: ml_collections.ConfigDict, mode: str, datasets: list[str], data_dir: str):
  """A stage config (pretrain or finetune) for one run."""
  c = ml_collections.ConfigDict(base.to_dict())
  c.masking.mode = mode
  c.model.use_prompt = mode != masking.TEMPORAL
  c.data.datasets, c.data.n_sessions, c.data.data_dir = ",".join(datasets), 0, data_dir
  return c


def finished(workdir: str, steps: int) -> bool:
  return checkpoint.latest_step(workdir) == steps


def expected_metrics(finetune: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The metrics each fine-tuned run reports under this config."""
  return run.METRICS + decoding.BEHAVIOUR_METRICS + (run.HEAD_METRICS if finetune.eval.head_steps > 0 else ())


def scored(workdir: str, steps: int, metrics, split: str | None = None, *, config_hash: str) -> dict | None:
  """metrics.json of the run's last step on `split` (any split when None), scored from the
  checkpoint of `config_hash`, if it has every expected metric: scored, or skipped as one the
  split cannot score (not one skipped because decoding was turned off, e.g. by
  `experiments.evaluate --nodecoding`)."""
  path = os.path.join(workdir, "metrics.json")
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    results = json.load(f)
  done = {*results, *(m for m, why in results.get("skipped", {}).items() if why != run.DECODING_OFF)}
  if results.get("step") != steps or (split is not None and results.get("split") != split):
    return None
  if results.get("config_hash") != config_hash:
    return None
  return results if all(m in done for m in metrics) else None


def _run_lock(workdir: str, doing: str, wait: bool = True):
  """The lock of one run of a study, held while training or scoring it: a second study
  process in the same study workdir waits for it (one log line), then reuses its work;
  with wait=False, files.InUseError at once (the caller does other runs meanwhile).
  The file is beside the run's folder (<parent>/.<run>.lock), so the run's own workdir lock
  (training.workdir) is another. A study run by every process of a multi-host job takes
  none (its processes must agree on every run; a second job is refused by the workdir lock)."""
  if jax.process_count() > 1:
    return contextlib.nullcontext()
  parent, name = os.path.split(os.path.abspath(workdir))
  path = os.path.join(parent, f".{name}.lock")
  return files.waiting(path, f"{doing} {workdir}") if wait else files.exclusive(path, f"{doing} {workdir}")


@contextlib.contextmanager
def _unless_busy(workdir: str, doing: str, wait: bool):
  """Yields True holding the run's lock (_run_lock), or False at once when wait is False
  and another process holds it."""
  with contextlib.ExitStack() as stack:
    try:
      stack.enter_context(_run_lock(workdir, doing, wait))
    except files.InUseError:
      yield False
      return
    yield True


REUSE_ADVICE = "The study reuses a run only if it matches: delete that folder to train it again with this config"


def check_reuse(config, workdir: str) -> None:
  """Raises provenance.ProvenanceError naming `workdir` when it holds checkpoints of another
  run than `config`'s (module docstring); nothing when it holds none."""
  if checkpoint.latest_step(workdir) is None:
    return
  recorded = checkpoint.read_metadata(workdir).provenance
  if recorded is None:
    raise provenance.ProvenanceError(
      f"{workdir}: holds a run that records no provenance (trained before runs recorded it), so the study "
      f"cannot tell whether it matches this config. {REUSE_ADVICE}"
    )
  request = trainer.resolved_config(registry.of(config), config)
  provenance.check(recorded, request.to_dict(), provenance.pretrained_of(request)[0], workdir, REUSE_ADVICE)


BUSY = {"busy": True}  # score(wait=False): another process is scoring the run
DIVERGED = "diverged.txt"  # in a run's workdir: why its training stopped (the trainer's FloatingPointError)


def diverged(workdir: str) -> bool:
  """Whether the run in `workdir` stopped on non-finite losses (train_run wrote DIVERGED)."""
  return os.path.exists(os.path.join(workdir, DIVERGED))


def train_run(config, workdir: str, only_analyse: bool, *, wait: bool = True) -> bool | None:
  """Trains `config` (any family) in `workdir` unless finished (or only analysing);
  returns whether the run is complete; None when wait is False and another study process
  is training it (it is then neither waited for nor trained). A run there of another config is refused (check_reuse).
  A run whose losses stay non-finite (the trainer's FloatingPointError, e.g. a learning rate
  too large for it) is not complete: its reason is written to <workdir>/DIVERGED, a warning
  logged, and the study goes on; it is not trained again (it would diverge the same way)."""
  check_reuse(config, workdir)
  if finished(workdir, config.train.steps):
    return True
  if diverged(workdir):
    return False
  if only_analyse:
    logging.warning("%s: not trained to step %d; skipped (--only_analyse)", workdir, config.train.steps)
    return False
  with _unless_busy(workdir, "training", wait) as held:
    if not held:
      return None
    if not finished(workdir, config.train.steps) and not diverged(workdir):  # else another process did it
      logging.info("training %s", workdir)
      try:
        trainer.train(registry.of(config), config, workdir)
      except FloatingPointError as e:
        with files.atomic_write(os.path.join(workdir, DIVERGED), encoding="utf-8") as f:
          f.write(f"{e}\n")
        logging.warning("%s: diverged, so this run has no scores: %s", workdir, e)
        return False
  return True


def score(workdir: str, steps: int, split: str, metrics, *, wait: bool = True) -> dict | None:
  """The run's metrics.json of its last step on `split` (and of its checkpoint's config),
  scored now if it has none; BUSY when wait is False and another study process is scoring it."""
  if not finished(workdir, steps):
    return None
  config_hash = provenance.run_hash(workdir)
  results = scored(workdir, steps, metrics, split, config_hash=config_hash)
  if results is None:
    with _unless_busy(workdir, "scoring", wait) as held:
      if not held:
        return BUSY
      # another study process may have scored it meanwhile
      results = scored(workdir, steps, metrics, split, config_hash=config_hash)
      if results is None:
        results = registry.evaluate_workdir(workdir, split)
  return results


def run_study(config: ml_collections.ConfigDict, workdir: str, *, only_analyse: bool = False) -> list[dict]:
  """Runs (or reuses) every run of the study; writes scaling.csv/.png/.md; returns the rows."""
  validate(config)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  data_dir = os.path.abspath(os.path.expanduser(config.study.data_dir))
  pool, heldout = _names(config.study.pool), _names(config.study.heldout)
  start = time.time()
  if not only_analyse:
    from data_builders import prepare  # pylint: disable=g-import-not-at-top

    prepare.build(pool[: max(config.study.sizes)] + heldout, data_dir)

  rows = []
  sizes = ([0] if config.study.scratch else []) + list(config.study.sizes)
  for mode in config.study.modes:
    for n in sizes:
      pretrained = None
      if n:
        pretrained = os.path.join(workdir, "pretrain", mode, f"n{n:02d}")
        if not train_run(stage_config(config.pretrain, mode, pool[:n], data_dir), pretrained, only_analyse):
          continue
      for session in heldout:
        run_dir = os.path.join(workdir, "finetune", mode, f"n{n:02d}", _short(session))
        ft = registry.get("mtm").finetune_config(stage_config(config.finetune, mode, [session], data_dir), pretrained)
        if not train_run(ft, run_dir, only_analyse):
          continue
        results = score(run_dir, ft.train.steps, config.study.split, expected_metrics(config.finetune))
        if results is None:
          continue
        rows += [
          dict(pretrain_sessions=n, mode=mode, session=session, metric=m, value=results[m])
          for m in METRICS
          if m in results
        ]
  write_outputs(rows, workdir)
  logging.info("scaling study: %d rows in %.0f s", len(rows), time.time() - start)
  return rows


def write_outputs(rows: list[dict], workdir: str, name: str = "scaling", figure_metrics=None) -> None:
  """<name>.csv, <name>.png (panels: figure_metrics of those present, default all) and
  <name>.md (a table of means ± std) in `workdir`."""
  report.write_csv(rows, os.path.join(workdir, f"{name}.csv"), CSV_FIELDS)
  if not rows:
    logging.warning("%s study: no finished runs to plot", name)
    return
  present = {r["metric"] for r in rows}
  panels = None if figure_metrics is None else [m for m in figure_metrics if m in present] or None
  plots.scaling_figure(rows, os.path.join(workdir, f"{name}.png"), metrics=panels)
  with files.atomic_write(os.path.join(workdir, f"{name}.md"), encoding="utf-8") as f:
    f.write(plots.scaling_table(rows) + "\n")


def read_rows(workdir: str) -> list[dict]:
  """The rows of <workdir>/scaling.csv."""
  path = os.path.join(os.path.abspath(workdir), "scaling.csv")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no scaling.csv; run the study first")
  with open(path, encoding="utf-8") as f:
    return list(csv.DictReader(f))
