"""BrainWideBench end to end for every family of a config (configs/bwb.py): data sets, runs,
predictions, the submission and its local scores.

For each family of config.study.families:
  1. pretraining on every pretrain session (the `pretrain` split set of the selected_units
     build: 1 s windows of its pretrain_train / pretrain_val domains) for study.pretrain_steps:
     <workdir>/<family>/pretrain;
  2. per eval session and seed (study.seeds, BWB's 43-47): adaptation, "warm-up then all"
     (new session rows alone for study.warmup_steps, then every parameter), for
     study.adapt_steps at study.learning_rate, on the session's TS1 split set (all_units
     build: TS1 train trials' time) and on its TS2 split set (selected_units build: the TS2
     train chunks): <workdir>/<family>/<ts1|ts2>/<eid>/seed_<seed>;
  3. predictions, one file each (mtm_jax.bwb.submission) under <workdir>/submission/<label>/:
     TS1 with a linear readout of the TS1-adapted model's features fit on the train trials,
     chosen on val (mtm_jax.bwb.readout); TS2 from the TS2-adapted model on BWB's corrupted
     test windows (mtm_jax.bwb.predict); TS3 from BWB's linear probe fit on the pretrained
     model's unit embeddings of the pretrain units and applied to the TS2-adapted models' embeddings
     of the eval units;
  4. the zip, the upload check (mtm_jax.bwb.validation) and the local scores against ground
     truth regenerated from the session files (mtm_jax.bwb.targets): <workdir>/bwb_scores.md
     and .json.
Finished runs and written prediction files are reused, so a re-run resumes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
import zipfile

from absl import logging
import numpy as np

from mtm_jax import files, progress
from mtm_jax.bwb import datasets as bwb_datasets
from mtm_jax.bwb import predict, readout, scoring, sessions, submission, targets, tasks, validation
from mtm_jax.studies import families, protocol, runs
from mtm_jax.tasks import registry

SUBMISSION = "submission"
GROUND_TRUTH = "ground_truth"


@dataclasses.dataclass(frozen=True)
class Plan:
  """The sessions of a BWB folder: pretrain {eid: selected_units path}; eval {eid: {build: path}}."""

  pretrain: dict
  eval: dict

  def paths(self) -> list[str]:
    return sorted(list(self.pretrain.values()) + [p for builds in self.eval.values() for p in builds.values()])


def plan(sessions_dir: str) -> Plan:
  """The sessions of `sessions_dir` the benchmark reads; ValueError when it holds none of a kind."""
  pretrain, evals = {}, {}
  for record in bwb_datasets.list_sessions(sessions_dir):
    if record.kind == "pretrain" and record.build == tasks.SELECTED_UNITS:
      pretrain[record.eid] = record.path
    elif record.kind == "eval":
      evals.setdefault(record.eid, {})[record.build] = record.path
  if not pretrain or not evals:
    raise ValueError(
      f"{sessions_dir}: found {len(pretrain)} pretrain sessions of the selected_units build and {len(evals)} eval "
      "sessions; expected both under <build>/ibl_brain_wide_bench_2026/<eval|pretrain>/<eid>.h5"
    )
  return Plan(dict(sorted(pretrain.items())), dict(sorted(evals.items())))


def split_sets(suites) -> list[tuple[str, str]]:
  """[(split set, build)] the suites adapt on: TS1 the all_units build's ts1 splits; TS2 and
  TS3 the selected_units build's ts2 splits."""
  out = [("ts1", "all_units")] if "ts1" in suites else []
  return out + ([("ts2", tasks.SELECTED_UNITS)] if {"ts2", "ts3"} & set(suites) else [])


def dataset_names(c, family: str, p: Plan) -> dict:
  """{"pretrain": [TFDS names], (split set, eid): TFDS name} of `family` (its builder)."""
  builder = c[family].builder
  out = {"pretrain": [f"{builder}/{bwb_datasets.config_name(tasks.SELECTED_UNITS, 'pretrain', e)}" for e in p.pretrain]}
  for splits, build in split_sets(c.bwb.suites):
    for eid, builds in p.eval.items():
      if build in builds:
        out[splits, eid] = f"{builder}/{bwb_datasets.config_name(build, splits, eid)}"
  return out


def _config_name(dataset: str) -> str:
  return dataset.split("/", 1)[1]


class _Family:
  """The runs and predictions of one family."""

  def __init__(self, c, family: str, p: Plan, workdir: str, data_dir: str, only_analyse: bool):
    self.c, self.family, self.plan, self.data_dir, self.only_analyse = c, family, p, data_dir, only_analyse
    self.workdir = os.path.join(workdir, family)
    self.names = dataset_names(c, family, p)
    self.label = c.bwb.label.format(family=family)
    self.root = os.path.join(workdir, SUBMISSION)
    self._probe_units = None  # probe_units' (embeddings, labels), once computed

  def pretrain(self) -> str | None:
    folder = os.path.join(self.workdir, "pretrain")
    steps = self.c.study.pretrain_steps
    config = families.stage_config(
      self.c, self.family, "pretrain", [_config_name(n) for n in self.names["pretrain"]], self.data_dir, steps
    )
    return folder if runs.train_run(config, folder, self.only_analyse) else None

  def adapt(self, splits: str, eid: str, seed: int, pretrained: str) -> str | None:
    folder = os.path.join(self.workdir, splits, eid, f"seed_{seed}")
    cell = protocol.Cell(self.family, protocol.WARMUP, protocol.Pretraining(0, 0), self.c.study.adapt_steps)
    name = _config_name(self.names[splits, eid])
    config = families.adapt_config(self.c, cell, name, self.data_dir, pretrained, self.c.study.learning_rate, seed)
    return folder if runs.train_run(config, folder, self.only_analyse) else None

  def _path(self, task_id: str, seed: int, eid: str | None = None) -> str:
    parts = [self.root, self.label, task_id] + ([eid] if eid else [])
    return os.path.join(*parts, f"seed_{seed}.safetensors")

  def ts1(self, trained, eid: str, seed: int) -> None:
    session = sessions.read_session(self.plan.eval[eid]["all_units"])
    todo = [t for t in tasks.TS1_TASKS if not os.path.exists(self._path(f"ts1-{t}", seed, eid))]
    items = {t: {s: targets.ts1_items(session, t, s) for s in ("train", "val", "test")} for t in todo}
    for task in todo:
      test = items[task]["test"]
      if test is None or len(test.trial_id) == 0:  # no ground truth either (targets.write_ground_truth)
        logging.warning("%s ts1-%s: no test trial (or no behaviour stream) for this task; not predicted", eid, task)
        del items[task]
        continue
      for s in ("train", "val"):
        if items[task][s] is None or len(items[task][s].trial_id) == 0:
          logging.warning("%s ts1-%s: no %s trial; the readout does without", eid, task, s)
          items[task][s] = None
    if not items:
      return
    # the features of every window once (tasks share their windows: movement, feedback)
    starts = np.unique(np.concatenate([v.window_start for d in items.values() for v in d.values() if v is not None]))
    features = predict.window_features(
      trained, self.names["ts1", eid], session.spike_times, session.spike_units, starts
    )
    for task, split in items.items():
      feats = {s: features[np.searchsorted(starts, v.window_start)] for s, v in split.items() if v is not None}
      fit = {s: readout.Split(feats[s], v.values, v.mask) if v is not None else None for s, v in split.items()}
      fitted = readout.fit_ts1(task, fit["train"], fit["val"], feats["test"])
      test = split["test"]
      submission.write_ts1(
        self.root,
        self.label,
        task,
        eid,
        seed,
        fitted.predictions,
        test.trial_id,
        timestamps=None if tasks.ts1_spec(task).classification else test.timestamps,
        unit_filtering=session.unit_filtering,
        dataset_version=session.dataset_version,
      )

  def _missing(self, splits: str, eid: str, seed: int) -> bool:
    """Whether a prediction file of this (split set, session, seed) is still to be written."""
    suites = self.c.bwb.suites
    ids = list(tasks.task_ids("ts1")) if splits == "ts1" else (list(tasks.task_ids("ts2")) if "ts2" in suites else [])
    missing = any(not os.path.exists(self._path(t, seed, eid)) for t in ids)
    return missing or (splits == "ts2" and "ts3" in suites and not os.path.exists(self._path("ts3-unit_cosmos", seed)))

  def ts2(self, trained, eid: str, seed: int) -> None:
    session = sessions.read_session(self.plan.eval[eid][tasks.SELECTED_UNITS])
    name, starts = self.names["ts2", eid], targets.ts2_starts(session, "test")
    held = np.flatnonzero(session.units.held_out_test)
    for task in tasks.TS2_TASKS:
      if os.path.exists(self._path(f"ts2-{task}", seed, eid)):
        continue
      if task == "co_smoothing":
        hide = np.zeros(len(session.units.ids), bool)
        hide[held] = True
        log_rates = predict.window_log_rates(
          trained, name, session.spike_times, session.spike_units, starts, hide_units=hide, units=held
        )
        units = held
      else:
        log_rates = predict.window_log_rates(
          trained, name, session.spike_times, session.spike_units, starts, forecast_bins=tasks.FORECAST_BINS
        )[:, -tasks.FORECAST_BINS :]
        units = np.arange(len(session.units.ids))
      submission.write_ts2(
        self.root,
        self.label,
        task,
        eid,
        seed,
        log_rates,
        starts,
        tasks.unit_ids(session.session_id, session.units.ids[units]),
        dataset_version=session.dataset_version,
      )

  def probe_units(self, pretrained: str) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings [n, E], Cosmos label indices [n]) of the pretrain units TS3's probe is fit
    on, from the pretrained model in `pretrained`: computed once, every seed's probe reads them."""
    if self._probe_units is None:
      model, x, y = registry.load_trained(pretrained), [], []
      for path, name in zip(self.plan.pretrain.values(), self.names["pretrain"]):
        session = sessions.read_session(path)
        known = targets.ts3_probe_units(session)
        x.append(predict.unit_embeddings(model, name)[known])
        y.append(np.array([tasks.COSMOS_LABELS.index(r) for r in session.units.cosmos.astype(str)[known]], np.int64))
      self._probe_units = np.concatenate(x), np.concatenate(y)
    return self._probe_units

  def eval_units(self, trained, eid: str) -> tuple[list[str], np.ndarray, str]:
    """(unit ids, embeddings [n, E], dataset version) of the eval units TS3 scores, from the
    TS2-adapted model `trained` of session `eid`."""
    session = sessions.read_session(self.plan.eval[eid][tasks.SELECTED_UNITS])
    kept = np.flatnonzero(targets.ts3_keep(session))
    emb = predict.unit_embeddings(trained, self.names["ts2", eid])[kept]
    return tasks.unit_ids(session.session_id, session.units.ids[kept]), emb, session.dataset_version

  def ts3(self, pretrained: str, units: dict, seed: int) -> None:
    """units: {eid: eval_units of this seed's TS2-adapted model}."""
    if os.path.exists(self._path("ts3-unit_cosmos", seed)):
      return
    x, y = self.probe_units(pretrained)
    ids = [u for eid_ids, _, _ in units.values() for u in eid_ids]
    proba = readout.fit_ts3(x, y, np.concatenate([emb for _, emb, _ in units.values()]))
    version = next(iter(units.values()))[2]
    submission.write_ts3(self.root, self.label, seed, proba, ids, dataset_version=version)

  def run(self) -> None:
    suites = self.c.bwb.suites
    pretrained = self.pretrain()
    if pretrained is None:
      logging.warning("%s: pretraining is not complete; nothing adapted", self.family)
      return
    jobs = [(seed, eid) for seed in self.c.study.seeds for eid in self.plan.eval]
    adapted, last = {}, list(self.plan.eval)[-1]
    with progress.Stage(f"{self.family}: adaptations and predictions") as stage:
      for done, (seed, eid) in enumerate(jobs):
        for splits, build in split_sets(suites):
          if (splits, eid) not in self.names:
            logging.warning("%s: eval session %s has no %s file; no %s", self.family, eid, build, splits)
            continue
          folder = self.adapt(splits, eid, seed, pretrained)
          if folder is None or not self._missing(splits, eid, seed):
            continue
          trained = registry.load_trained(folder)
          if splits == "ts1":
            self.ts1(trained, eid, seed)
            continue
          if "ts2" in suites:
            self.ts2(trained, eid, seed)
          if "ts3" in suites:
            adapted.setdefault(seed, {})[eid] = self.eval_units(trained, eid)
        if "ts3" in suites and eid == last and set(adapted.get(seed, ())) == set(self.plan.eval):
          self.ts3(pretrained, adapted.pop(seed), seed)
        stage.update(done + 1, len(jobs), "(seed, session) pairs")


def run(c, workdir: str, *, only_analyse: bool = False) -> dict:
  """Everything of the module docstring; returns the aggregated scores
  {label: {task: {metric: (mean, sem, seeds)}}}."""
  start = time.time()
  workdir = os.path.abspath(os.path.expanduser(workdir))
  data_dir = os.path.abspath(os.path.expanduser(c.study.data_dir))
  if not c.bwb.sessions_dir:
    raise ValueError("config.bwb.sessions_dir: no BWB session folder given (--sessions_dir)")
  p = plan(c.bwb.sessions_dir)
  gt_dir = os.path.join(workdir, GROUND_TRUTH)
  with progress.Stage("ground truth from the session files"):
    targets.write_ground_truth(p.paths(), gt_dir, suites=tuple(c.bwb.suites))
  runners = [_Family(c, f, p, workdir, data_dir, only_analyse) for f in c.study.families]
  if not only_analyse:
    from data_builders import prepare  # pylint: disable=g-import-not-at-top

    names = [n for r in runners for v in r.names.values() for n in (v if isinstance(v, list) else [v])]
    prepare.build(names, data_dir, c.bwb.sessions_dir)
  for r in runners:
    r.run()
  return report(workdir, [r.label for r in runners], gt_dir, time.time() - start)


def report(workdir: str, labels, gt_dir: str, seconds: float) -> dict:
  """Zips each label's submission, runs the upload check and scores it; writes
  <workdir>/bwb_scores.md and .json; returns the scores."""
  root = os.path.join(workdir, SUBMISSION)
  out, lines = {}, []
  for label in labels:
    if not os.path.isdir(os.path.join(root, label)):
      logging.warning("%s: no prediction written", label)
      continue
    zipped = submission.zip_submission(root, label, os.path.join(workdir, f"{label}.zip"))
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(zipped) as z:
      z.extractall(tmp)  # the upload check reads what a user uploads: the zip
      findings = validation.validate(tmp, gt_dir)
    for f in findings:
      logging.error("%s upload check: %s", label, f)
    scores = scoring.score_folder(os.path.join(root, label), gt_dir, strict=True)
    out[label] = {task: {m: list(v) for m, v in metrics.items()} for (_, task), metrics in scores.aggregate().items()}
    out[label]["upload_check"] = [str(f) for f in findings]
    lines += table(label, out[label])
  lines.append(f"\n{seconds:.0f} s in all.")
  with files.atomic_write(os.path.join(workdir, "bwb_scores.json"), encoding="utf-8") as f:
    json.dump(out, f, indent=1)
  with files.atomic_write(os.path.join(workdir, "bwb_scores.md"), encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))
  return out


def table(label: str, scores: dict) -> list[str]:
  """Markdown lines: each task's primary metric (and bps for TS2) as mean ± SEM over seeds."""
  lines = [f"\n### {label}\n", "| task | metric | mean ± SEM over seeds | seeds |", "|---|---|---:|---:|"]
  for task in tasks.ALL_TASK_IDS:
    if task not in scores:
      continue
    names = [tasks.primary_metric(task)] + (["bps"] if task.startswith("ts2-") else [])
    for m in names:
      if m in scores[task]:
        mean, sem, n = scores[task][m]
        lines.append(f"| {task} | {m} | {mean:.4f} ± {sem if sem is not None else float('nan'):.4f} | {n} |")
  check = scores.get("upload_check", [])
  lines.append(f"\nUpload check: {'passed' if not check else f'{len(check)} findings'}.")
  return lines
