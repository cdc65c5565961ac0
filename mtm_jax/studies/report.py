"""A family study's outputs: <name>.csv (one row per family, arm, pretraining, animal,
seed and metric), <name>.md (means with 95% intervals, paired differences against the
scratch arms and, in a study of several families, against the first family's same arm, with
what they support) and <name>.png (Figure 4 of the MtM paper with
error bars). Summaries come from studies.protocol.summarise."""

from __future__ import annotations

import csv
import os

from absl import logging
from matplotlib.figure import Figure

from mtm_jax import files
from mtm_jax.studies import protocol

FIELDS = (
  "family",
  "arm",
  "pretraining",
  "pretrain_animals",
  "pretrain_steps",
  "adapt_steps",
  "animal",
  "seed",
  "learning_rate",
  "train_seconds",
  "metric",
  "value",
)
FIGURE_METRICS = ("co_smoothing_bps", "choice_accuracy", "wheel_speed_r2")


def write(rows: list[dict], workdir: str, name: str, main_metric: str) -> None:
  """<name>.csv, .md and .png in `workdir` (each written whole)."""
  write_csv(rows, os.path.join(workdir, f"{name}.csv"), FIELDS)
  if not rows:
    logging.warning("%s study: no scored runs to summarise", name)
    return
  summary = protocol.summarise(rows)
  with files.atomic_write(os.path.join(workdir, f"{name}.md"), encoding="utf-8") as f:
    f.write(tables(rows, summary, main_metric) + "\n")
  figure(summary, os.path.join(workdir, f"{name}.png"), (main_metric,) + FIGURE_METRICS)


def write_csv(rows: list[dict], path: str, fields) -> None:
  """`rows` as a CSV file of columns `fields` at `path` (its folder made; written whole)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with files.atomic_write(path, newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)


def _cell(e: dict | None) -> str:
  if e is None:
    return "-"
  return f"{e['mean']:.4f}" if e["n"] < 2 else f"{e['mean']:.4f} [{e['low']:.4f}, {e['high']:.4f}]"


def _difference(e: dict, name: str) -> str:
  if name not in e:
    return "-"
  text = f"{e[name]:+.4f} [{e[name + '_low']:+.4f}, {e[name + '_high']:+.4f}] {e[name + '_verdict']}"
  if name + "_animals_verdict" in e:
    text += f"; over animals {e[name + '_animals_verdict']}"
  return text


def _first_seen(values) -> list:
  return list(dict.fromkeys(values))


def tables(rows: list[dict], summary: list[dict], main_metric: str) -> str:
  """Markdown: the main metric per (family, arm, pretraining) with n, mean [95% interval],
  the paired differences against scratch (step-matched) and scratch, matched
  (compute-matched), the chosen learning rate and the mean training time; then every
  metric's mean [95% interval]."""
  keys = _first_seen((r["family"], r["arm"], r["pretraining"]) for r in rows)
  by_key = {(e["family"], e["arm"], e["pretraining"], e["metric"]): e for e in summary}
  extra = {}
  for r in rows:
    extra.setdefault((r["family"], r["arm"], r["pretraining"]), {}).setdefault("lr", r["learning_rate"])
    extra[(r["family"], r["arm"], r["pretraining"])].setdefault("seconds", {})[(r["animal"], r["seed"])] = float(
      r["train_seconds"]
    )
  out = [
    f"{main_metric}: mean [95% interval] over held-out animals x seeds; differences are paired (same animal and "
    "seed) and say what their interval supports; 'over animals': what the t interval of the per-animal mean "
    "differences supports (n = held-out animals, seeds not counted as independent animals)",
    "",
    "| family | arm | pretraining | n | mean [95% interval] | vs scratch | vs scratch, matched | lr | train s |",
    "|---|---|---|---:|---|---|---|---:|---:|",
  ]
  for key in keys:
    e = by_key.get(key + (main_metric,))
    if e is None:
      continue
    seconds = list(extra[key]["seconds"].values())
    cells = [_cell(e), _difference(e, "vs_scratch"), _difference(e, "vs_matched")]
    lr, mean_s = float(extra[key]["lr"]), sum(seconds) / len(seconds)
    out.append(f"| {' | '.join(key)} | {e['n']} | " + " | ".join(cells) + f" | {lr:g} | {mean_s:.0f} |")
  metrics = _first_seen(r["metric"] for r in rows)
  out += ["", "| family | arm | pretraining | " + " | ".join(metrics) + " |", "|---|---|---|" + "---|" * len(metrics)]
  for key in keys:
    out.append(f"| {' | '.join(key)} | " + " | ".join(_cell(by_key.get(key + (m,))) for m in metrics) + " |")
  families = _first_seen(r["family"] for r in rows)
  differences = {
    (e["family"], e["arm"], e["pretraining"], e["metric"]): e for e in protocol.family_differences(rows, families[0])
  }
  compared = [key for key in keys if any(key + (m,) in differences for m in metrics)]
  if compared:
    out += [
      "",
      f"Against {families[0]} (the same arm after the same pretraining; paired by animal and seed): "
      "difference [95% interval] and what it supports",
      "",
      "| family | arm | pretraining | " + " | ".join(metrics) + " |",
      "|---|---|---|" + "---|" * len(metrics),
    ]
    for key in compared:
      cells = [_difference(differences[key + (m,)], "vs_family") if key + (m,) in differences else "-" for m in metrics]
      out.append(f"| {' | '.join(key)} | " + " | ".join(cells) + " |")
  return "\n".join(out)


def figure(summary: list[dict], path: str, metrics) -> None:
  """One panel per metric (those present): per family and pretrained arm, the mean against
  the number of pretraining animals (step-matched pretraining; log-2 axis) with 95%
  interval error bars, the 1-animal control as a hollow marker, and each family's scratch
  arms as horizontal lines with their interval shaded."""
  metrics = [m for m in metrics if any(e["metric"] == m for e in summary)]
  fig = Figure(figsize=(4.4 * len(metrics) + 2.6, 3.9), layout="constrained")
  axes = fig.subplots(1, len(metrics), squeeze=False)[0]
  series = _first_seen((e["family"], e["arm"]) for e in summary)
  colours = {s: f"C{i % 10}" for i, s in enumerate(series)}
  for ax, metric in zip(axes, metrics):
    entries = [e for e in summary if e["metric"] == metric]
    matched = _matched_steps(entries)
    for family, arm in series:
      mine = [e for e in entries if e["family"] == family and e["arm"] == arm]
      if not mine:
        continue
      colour, label = colours[(family, arm)], f"{family}: {arm}"
      if mine[0]["pretraining"] == "none":
        e = mine[0]
        ax.axhline(e["mean"], color=colour, ls="--" if arm == protocol.SCRATCH else ":", label=label)
        ax.axhspan(e["low"], e["high"], color=colour, alpha=0.12)
        continue
      main = sorted((_animals(e), e) for e in mine if _steps(e) == matched)
      ax.errorbar(
        [a for a, _ in main],
        [e["mean"] for _, e in main],
        yerr=[[e["mean"] - e["low"] for _, e in main], [e["high"] - e["mean"] for _, e in main]],
        color=colour,
        marker="o",
        capsize=3,
        label=label,
      )
      for e in (e for e in mine if _steps(e) != matched):
        ax.errorbar(
          [_animals(e) * 0.9],
          [e["mean"]],
          yerr=[[e["mean"] - e["low"]], [e["high"] - e["mean"]]],
          color=colour,
          marker="o",
          mfc="none",
          capsize=3,
        )
    ticks = sorted({_animals(e) for e in entries if e["pretraining"] != "none"})
    ax.set_xscale("log", base=2)
    if ticks:
      ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("pretraining animals (hollow: 1 animal, longer)")
    ax.set_title(metric)
  handles, labels = axes[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="outside right center", fontsize=8)
  fig.savefig(path, dpi=110)


def _animals(e: dict) -> int:
  return int(e["pretrain_animals"])


def _steps(e: dict) -> int:
  return int(e["pretrain_steps"])


def _matched_steps(entries: list[dict]) -> int | None:
  """The step count of the step-matched pretrainings: the one most pretrainings share."""
  counts = [_steps(e) for e in entries if e["pretraining"] != "none"]
  return max(sorted(set(counts)), key=counts.count) if counts else None
