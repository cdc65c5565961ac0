"""The runs of a study (experiments.family_study, experiments.scaling): each a normal
workdir, loadable by path alone, trained, reused and scored here.

A run is skipped when finished (a checkpoint at the last step; metrics.json of that step
and of that checkpoint's config hash), so an interrupted study resumes where it stopped.
A run folder is reused or resumed only when its recorded provenance (training.provenance:
the config it was given, its pretrained checkpoint's identity) matches the study's run,
up to the fields a resume may change (provenance.RESUMABLE). Otherwise the study stops
with provenance.ProvenanceError naming the folder and the differing fields, rather than
retraining it: the folder is the user's to delete (or the study's config to restore). A
run folder written before runs recorded their provenance is refused the same way. Scores
(metrics.json) record the config hash of the checkpoint they scored ("config_hash") and
its step; stale ones are scored again. Several study processes in one study workdir
share the runs: each run is trained and scored under its lock (_run_lock); another
process waits for it and then reuses it, or (wait=False) passes over it to do another.
"""

from __future__ import annotations

import contextlib
import json
import os

import jax
from absl import logging

from mtm_jax import files
from mtm_jax.evaluation import report
from mtm_jax.tasks import registry
from mtm_jax.training import checkpoint, provenance, trainer


def names(text: str) -> list[str]:
  """The comma-separated names of `text` (a config field), stripped, empty ones left out."""
  return [n.strip() for n in text.split(",") if n.strip()]


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


def finished(workdir: str, steps: int) -> bool:
  return checkpoint.latest_step(workdir) == steps


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
  done = {*results, *(m for m, why in results.get("skipped", {}).items() if why != report.DECODING_OFF)}
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
