"""The fair study protocol: which runs a family study makes, how their learning rate is
chosen, and how their scores are summarised with intervals.

A study adapts pretrained models (or trains from scratch) on held-out animals, never seen
in pretraining. Its cells, per family:
  scratch            trained on the held-out session alone, study.adapt_steps
  scratch, matched   the same for study.pretrain_steps + study.adapt_steps (the steps of
                     pretraining and adaptation together: a compute-matched baseline)
  frozen             from a pretrained model, only the new session's rows train (NDT1: new
                     stitchers and session row; spike-token MtM: unit identification)
  warm-up then all   frozen for study.warmup_steps, then everything
  all                everything trains from the first step
each pretrained arm from every pretraining: 1, 4, 12 ... animals of study.pool at
study.pretrain_steps (step-matched), and the 1-animal control at study.control_steps.
Every arm of both families adapts for the same steps (study.adapt_steps) with the same
batches for the same seed, and picks its learning rate from the same grid
(study.learning_rates) by the validation loss of the tuning seed (the first of
study.seeds), averaged over held-out animals, once per family and arm: a pretrained arm
on its tuning cell (after the largest step-matched pretraining, tuning_cell), applied to
its every pretraining. Only the chosen learning rate's runs are scored, on study.split
(the test split), once.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np
from scipy import stats

SCRATCH, MATCHED, FROZEN, WARMUP, ALL = "scratch", "scratch, matched", "frozen", "warm-up then all", "all"
ARMS = (SCRATCH, MATCHED, FROZEN, WARMUP, ALL)
# arm -> (config.finetune.mode, whether it warms up) of a pretrained arm
FINETUNE = {FROZEN: ("unit_id", False), WARMUP: ("full", True), ALL: ("full", False)}
CONFIDENCE = 0.95


@dataclasses.dataclass(frozen=True)
class Pretraining:
  """A pretraining run of a family: the first `animals` animals of study.pool for `steps`."""

  animals: int
  steps: int

  @property
  def label(self) -> str:
    return f"a{self.animals:02d}_{self.steps}steps"


@dataclasses.dataclass(frozen=True)
class Cell:
  """One arm of one family after one pretraining (None: from scratch), adapted for `steps`."""

  family: str
  arm: str
  pretraining: Pretraining | None
  steps: int

  @property
  def path(self) -> str:
    """Its folder under <study>/adapt/."""
    arm = self.arm.replace(", ", "_").replace(" ", "_")
    return os.path.join(self.family, arm, self.pretraining.label if self.pretraining else "none")


def pretrainings(study) -> list[Pretraining]:
  """Step-matched pretraining on each of study.sizes animals, and the 1-animal control at
  study.control_steps (0: none)."""
  out = [Pretraining(n, study.pretrain_steps) for n in study.sizes]
  if study.control_steps and Pretraining(1, study.control_steps) not in out:
    out.append(Pretraining(1, study.control_steps))
  return out


def cells(study, family: str) -> list[Cell]:
  """The cells of `family` for the arms of study.arms (see the module docstring): the
  scratch arms, then each pretraining's arms (the order a study runs them in, so an
  interrupted study has every arm of the pretrainings it reached)."""
  out = []
  for arm in study.arms:
    if arm == SCRATCH:
      out.append(Cell(family, arm, None, study.adapt_steps))
    elif arm == MATCHED:
      out.append(Cell(family, arm, None, study.pretrain_steps + study.adapt_steps))
  for p in pretrainings(study):
    out += [Cell(family, arm, p, study.adapt_steps) for arm in study.arms if arm in FINETUNE]
  return out


def tuning_cell(study, cell: Cell) -> Cell:
  """The cell whose validation losses choose `cell`'s learning rate: a pretrained arm's
  after the largest step-matched pretraining (max(study.sizes) animals at
  study.pretrain_steps), a scratch arm's itself."""
  if cell.pretraining is None:
    return cell
  return dataclasses.replace(cell, pretraining=Pretraining(max(study.sizes), study.pretrain_steps))


def check(study) -> None:
  """Raises ValueError naming the field of config.study that is inconsistent."""
  unknown = [a for a in study.arms if a not in ARMS]
  if unknown:
    raise ValueError(f"config.study.arms: unknown {unknown}; expected some of {list(ARMS)}")
  if not study.seeds or len(set(study.seeds)) != len(study.seeds):
    raise ValueError(f"config.study.seeds: expected distinct seeds, got {list(study.seeds)}")
  if not study.learning_rates or min(study.learning_rates) <= 0:
    raise ValueError(f"config.study.learning_rates: expected positive learning rates, got {list(study.learning_rates)}")
  for field in ("pretrain_steps", "adapt_steps"):
    if study[field] < 1:
      raise ValueError(f"config.study.{field}: must be >= 1, got {study[field]}")
  if WARMUP in study.arms and not 0 < study.warmup_steps < study.adapt_steps:
    raise ValueError(
      f"config.study.warmup_steps: the {WARMUP!r} arm needs 0 < warmup_steps < adapt_steps "
      f"({study.adapt_steps}), got {study.warmup_steps}"
    )
  if study.control_steps < 0:
    raise ValueError(f"config.study.control_steps: must be >= 0 (0: no control), got {study.control_steps}")


def final_val_loss(workdir: str) -> float:
  """The last validation loss a run logged (<workdir>/metrics.jsonl; inf if none)."""
  path = os.path.join(workdir, "metrics.jsonl")
  last = math.inf
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      for line in f:
        value = json.loads(line).get("val_loss")
        if value is not None:
          last = float(value)
  return last


def train_seconds(workdir: str) -> float:
  """The run's training time without compilation: the sum over its logged windows of
  steps / steps_per_second (<workdir>/metrics.jsonl; nan if it logged none)."""
  path = os.path.join(workdir, "metrics.jsonl")
  total, previous = 0.0, 0
  if not os.path.exists(path):
    return math.nan
  with open(path, encoding="utf-8") as f:
    for line in f:
      record = json.loads(line)
      if record.get("steps_per_second"):
        total += (record["step"] - previous) / record["steps_per_second"]
        previous = record["step"]
  return total if previous else math.nan


def choose(losses: dict[float, list[float]]) -> float:
  """The learning rate whose validation losses (one per held-out animal) have the lowest
  mean; ties go to the smaller rate."""
  return min(sorted(losses), key=lambda lr: float(np.mean(losses[lr])))


def interval(values) -> tuple[float, float, float]:
  """(mean, low, high): the mean and its two-sided 95% Student-t interval over `values`
  (low = high = mean for one value)."""
  x = np.asarray(values, np.float64)
  mean = float(x.mean())
  if len(x) < 2:
    return mean, mean, mean
  half = stats.t.ppf(0.5 + CONFIDENCE / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
  return mean, mean - half, mean + half


def verdict(low: float, high: float) -> str:
  """What a difference's interval supports (higher scores are better): "better", "worse" or "tie"."""
  return "better" if low > 0 else "worse" if high < 0 else "tie"


def animal_means(values: dict[tuple, float]) -> list[float]:
  """The mean over seeds of each animal's values ({(animal, seed): value}), one per animal."""
  by_animal: dict = {}
  for (animal, _), v in values.items():
    by_animal.setdefault(animal, []).append(v)
  return [float(np.mean(v)) for v in by_animal.values()]


def _over_animals(values: dict[tuple, float], prefix: str) -> dict:
  """{prefix + "animals_low"/"_high"/"_verdict"}: the interval of the per-animal means
  (animal_means; n = animals), where there are at least 2 animals."""
  means = animal_means(values)
  if len(means) < 2:
    return {}
  _, low, high = interval(means)
  return {f"{prefix}animals_low": low, f"{prefix}animals_high": high, f"{prefix}animals_verdict": verdict(low, high)}


def summarise(rows: list[dict]) -> list[dict]:
  """Per (family, arm, pretraining, metric): n, mean, low, high over (animal, seed), and
  against the same family's scratch arms, the paired difference (same animal and seed)
  with its interval and verdict ("vs_scratch_*", "vs_matched_*"). Each interval also
  over animals alone ("animals_*", "vs_scratch_animals_*", ...: a t interval of the
  per-animal means, n = held-out animals), which does not count an animal's seeds as
  independent draws of animals."""
  groups = _groups(rows)
  sizes = {}
  for r in rows:
    key = (r["family"], r["arm"], r["pretraining"], r["metric"])
    sizes[key] = dict(pretrain_animals=int(r["pretrain_animals"]), pretrain_steps=int(r["pretrain_steps"]))
  out = []
  for (family, arm, pretraining, metric), values in groups.items():
    mean, low, high = interval(list(values.values()))
    entry = dict(family=family, arm=arm, pretraining=pretraining, metric=metric, n=len(values))
    entry.update(sizes[(family, arm, pretraining, metric)])
    entry.update(mean=mean, low=low, high=high, n_animals=len(animal_means(values)), **_over_animals(values, ""))
    for name, base in (("vs_scratch", SCRATCH), ("vs_matched", MATCHED)):
      ref = groups.get((family, base, "none", metric))
      pairs = {k: values[k] - ref[k] for k in values if ref and k in ref}
      if pretraining != "none" and len(pairs) >= 2:
        d, lo, hi = interval(list(pairs.values()))
        entry.update({f"{name}": d, f"{name}_low": lo, f"{name}_high": hi, f"{name}_verdict": verdict(lo, hi)})
        entry.update(_over_animals(pairs, f"{name}_"))
    out.append(entry)
  return out


def _groups(rows: list[dict]) -> dict[tuple, dict]:
  """{(family, arm, pretraining, metric): {(animal, seed): value}} of the rows."""
  groups: dict[tuple, dict] = {}
  for r in rows:
    key = (r["family"], r["arm"], r["pretraining"], r["metric"])
    groups.setdefault(key, {})[(r["animal"], int(r["seed"]))] = float(r["value"])
  return groups


def family_differences(rows: list[dict], reference: str) -> list[dict]:
  """Per (family other than `reference`, arm, pretraining, metric): the paired difference
  (same animal and seed) against `reference`'s same arm after the same pretraining, with its
  95% interval and verdict ("vs_family", "vs_family_low", ...) and the same over animals
  ("vs_family_animals_*"); cells with fewer than 2 pairs are left out. The families read the
  same trials of the same held-out sessions, so the pairs compare the families themselves."""
  groups, out = _groups(rows), []
  for (family, arm, pretraining, metric), values in groups.items():
    ref = groups.get((reference, arm, pretraining, metric))
    pairs = {k: values[k] - ref[k] for k in values if ref and k in ref}
    if family == reference or len(pairs) < 2:
      continue
    d, lo, hi = interval(list(pairs.values()))
    entry = dict(family=family, arm=arm, pretraining=pretraining, metric=metric, n=len(pairs))
    entry.update(vs_family=d, vs_family_low=lo, vs_family_high=hi, vs_family_verdict=verdict(lo, hi))
    entry.update(_over_animals(pairs, "vs_family_"))
    out.append(entry)
  return out
