"""Figures and tables of the MtM paper: scaling curves (Figure 4) and rasters (Figure 2).

Scaling results are rows (dicts, e.g. from csv.DictReader, so values may be strings)
with the keys of `SCALING_KEYS`:
- `pretrain_sessions`: number of pretraining sessions; 0 means the model was trained on
  the held-out session alone (from scratch);
- `mode`: masking mode of the model ("mtm", "temporal", ...);
- `session`: the held-out session the value was measured on;
- `metric`: metric name (e.g. "co_smoothing_bps");
- `value`: the metric's value.

Figures are drawn on `matplotlib.figure.Figure` objects (Agg canvas), so nothing here
touches pyplot or matplotlib's global state.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator

from mtm_jax import files

SCALING_KEYS = ("pretrain_sessions", "mode", "session", "metric", "value")
SCRATCH_LABEL = "scratch"
# With this many held-out sessions or fewer, the band of a scaling curve is min-max.
MIN_MAX_BAND_SESSIONS = 2
_DPI = 120


# ----------------------------------------------------------------------------- scaling


def _parse_rows(rows) -> list[dict]:
  """Validated copies of the rows with typed values (int sessions count, float value)."""
  try:
    if isinstance(rows, (str, bytes, Mapping)):
      raise TypeError
    rows = list(rows)
  except TypeError:
    raise ValueError(
      "rows must be a list of dicts with keys " + ", ".join(SCALING_KEYS) + f"; got {type(rows).__name__}"
    ) from None
  parsed = []
  for i, row in enumerate(rows):
    if not isinstance(row, Mapping):
      raise ValueError(f"rows[{i}] must be a dict; got {type(row).__name__}")
    for key in SCALING_KEYS:
      if key not in row or row[key] is None or (isinstance(row[key], str) and not row[key].strip()):
        raise ValueError(f"rows[{i}] lacks key {key!r} (needs {', '.join(SCALING_KEYS)}); got {row!r}")
    try:
      count = float(row["pretrain_sessions"])
    except (TypeError, ValueError):
      count = math.nan
    if not (count >= 0 and count == int(count)):
      raise ValueError(f"rows[{i}]: pretrain_sessions must be an integer >= 0; got {row['pretrain_sessions']!r}")
    try:
      value = float(row["value"])
    except (TypeError, ValueError):
      raise ValueError(f"rows[{i}]: value must be a number; got {row['value']!r}") from None
    parsed.append(
      {
        "pretrain_sessions": int(count),
        "mode": str(row["mode"]).strip(),
        "session": str(row["session"]).strip(),
        "metric": str(row["metric"]).strip(),
        "value": value,
      }
    )
  if not parsed:
    raise ValueError("rows is empty: no scaling results to summarise")
  return parsed


def _first_seen(values) -> list:
  return list(dict.fromkeys(values))


def _summarise(parsed: list[dict]) -> list[dict]:
  groups: dict[tuple, dict[str, float]] = {}
  for row in parsed:
    key = (row["metric"], row["mode"], row["pretrain_sessions"])
    sessions = groups.setdefault(key, {})
    if row["session"] in sessions:
      raise ValueError(
        f"rows: two values for metric {key[0]!r}, mode {key[1]!r}, "
        f"pretrain_sessions {key[2]}, session {row['session']!r}"
      )
    sessions[row["session"]] = row["value"]
  summary = []
  for (metric, mode, count), sessions in sorted(groups.items()):
    values = np.array(list(sessions.values()), np.float64)
    summary.append(
      {
        "metric": metric,
        "mode": mode,
        "pretrain_sessions": count,
        "n": int(values.size),
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if values.size > 1 else math.nan,
        "min": float(values.min()),
        "max": float(values.max()),
        "sessions": sorted(sessions),
      }
    )
  return summary


def scaling_summary(rows) -> list[dict]:
  """Mean and spread over held-out sessions per (pretrain_sessions, mode, metric).

  Args:
    rows: scaling results, see the module docstring.

  Returns:
    One dict per (metric, mode, pretrain_sessions), sorted by those keys in that order,
    with `metric`, `mode`, `pretrain_sessions` (int), `n` (held-out sessions), `mean`,
    `std` (sample standard deviation, ddof=1; NaN when n == 1), `min`, `max` and
    `sessions` (sorted ids). Two values for the same session in one group are an error.
  """
  return _summarise(_parse_rows(rows))


def _format_cell(entry: dict | None) -> str:
  if entry is None:
    return "-"
  if entry["n"] < 2:
    return f"{entry['mean']:.4f}"
  return f"{entry['mean']:.4f} ± {entry['std']:.4f}"


def scaling_table(rows) -> str:
  """Markdown table: one row per (metric, pretrain_sessions), one column per mode.

  Cells are `mean ± std` over held-out sessions (4 decimals; only the mean when one
  session); the from-scratch rows (pretrain_sessions 0) are labelled "scratch" and come
  first. Metrics and modes are in first-seen order; missing cells are "-".
  """
  parsed = _parse_rows(rows)
  summary = {(e["metric"], e["mode"], e["pretrain_sessions"]): e for e in _summarise(parsed)}
  modes = _first_seen(r["mode"] for r in parsed)
  lines = ["| metric | pretraining sessions | " + " | ".join(modes) + " |", "|---|---:|" + "---:|" * len(modes)]
  for metric in _first_seen(r["metric"] for r in parsed):
    counts = sorted({r["pretrain_sessions"] for r in parsed if r["metric"] == metric})
    for count in counts:
      cells = [_format_cell(summary.get((metric, mode, count))) for mode in modes]
      label = SCRATCH_LABEL if count == 0 else str(count)
      lines.append(f"| {metric} | {label} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _panel_series(summary: list[dict], metric: str) -> dict:
  """Per mode, what a scaling panel draws: the pretrained curve with its band and scratch.

  Returns {"band": "std" | "min-max", "n_sessions": int, "modes": {mode: {"x", "mean",
  "low", "high" (arrays over pretrain_sessions > 0, ascending), "scratch" (float or
  None)}}}.
  """
  entries = [e for e in summary if e["metric"] == metric]
  n_sessions = len({s for e in entries for s in e["sessions"]})
  band = "min-max" if n_sessions <= MIN_MAX_BAND_SESSIONS else "std"
  modes = {}
  for mode in _first_seen(e["mode"] for e in entries):
    pretrained = sorted(
      (e for e in entries if e["mode"] == mode and e["pretrain_sessions"] > 0), key=lambda e: e["pretrain_sessions"]
    )
    scratch = [e["mean"] for e in entries if e["mode"] == mode and e["pretrain_sessions"] == 0]
    mean = np.array([e["mean"] for e in pretrained], np.float64)
    if band == "std":
      spread = np.array([0.0 if e["n"] < 2 else e["std"] for e in pretrained], np.float64)
      low, high = mean - spread, mean + spread
    else:
      low = np.array([e["min"] for e in pretrained], np.float64)
      high = np.array([e["max"] for e in pretrained], np.float64)
    modes[mode] = {
      "x": np.array([e["pretrain_sessions"] for e in pretrained], np.int64),
      "mean": mean,
      "low": low,
      "high": high,
      "scratch": scratch[0] if scratch else None,
    }
  return {"band": band, "n_sessions": n_sessions, "modes": modes}


def save(fig: Figure, path) -> None:
  """Writes `fig` as a PNG at `path` whole (files.atomic_write), its folders created."""
  path = os.fspath(path)
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  with files.atomic_write(path, "wb") as f:  # a reader never sees part of a figure
    fig.savefig(f, format="png", dpi=_DPI)


def scaling_figure(rows, path, *, metrics: Sequence[str] | None = None) -> None:
  """Figure 4 of the MtM paper: each metric against the number of pretraining sessions.

  One panel per metric (default: the metrics of `rows`, in first-seen order). In each,
  one line per mode: the mean over held-out sessions at each pretrain_sessions > 0
  (log-2 x axis, ticks at those counts), markers, and a shaded band of +- one sample
  standard deviation, or min-max when the panel has 2 or fewer held-out sessions (the
  y label says which). The from-scratch value (pretrain_sessions 0, mean over sessions)
  of each mode is a dashed horizontal line in the mode's colour. Writes a PNG at `path`.
  """
  parsed = _parse_rows(rows)
  present = _first_seen(r["metric"] for r in parsed)
  if metrics is None:
    metrics = present
  elif isinstance(metrics, str) or not all(isinstance(m, str) for m in metrics) or not metrics:
    raise ValueError(f"metrics must be a non-empty list of metric names; got {metrics!r}")
  else:
    missing = [m for m in metrics if m not in present]
    if missing:
      raise ValueError(f"metrics {missing} are not in rows; rows have {present}")
  summary = _summarise(parsed)
  modes = _first_seen(r["mode"] for r in parsed)
  colours = {mode: f"C{i % 10}" for i, mode in enumerate(modes)}

  fig = Figure(figsize=(4.2 * len(metrics) + 2.4, 3.8), layout="constrained")
  axes = fig.subplots(1, len(metrics), squeeze=False)[0]
  legend: dict[str, object] = {}
  for ax, metric in zip(axes, metrics):
    series = _panel_series(summary, metric)
    ticks = sorted({int(x) for s in series["modes"].values() for x in s["x"]})
    for mode, s in series["modes"].items():
      colour = colours[mode]
      if s["x"].size:
        ax.fill_between(s["x"], s["low"], s["high"], color=colour, alpha=0.2, linewidth=0)
        ax.plot(s["x"], s["mean"], "o-", color=colour, markersize=5)
        legend.setdefault(f"{mode} (pretrained)", Line2D([], [], color=colour, marker="o"))
      if s["scratch"] is not None:
        ax.axhline(s["scratch"], color=colour, linestyle="--", linewidth=1.2)
        legend.setdefault(f"{mode} (from scratch)", Line2D([], [], color=colour, linestyle="--"))
    if ticks:
      ax.set_xscale("log", base=2)
      if len(ticks) == 1:
        ax.set_xlim(ticks[0] / 2, ticks[0] * 2)
      else:
        ax.set_xlim(ticks[0] / 2**0.4, ticks[-1] * 2**0.4)
      ax.xaxis.set_major_locator(FixedLocator(ticks))
      ax.xaxis.set_minor_locator(NullLocator())
      ax.set_xticklabels([str(t) for t in ticks])
    else:
      ax.set_xticks([])
    band = "± 1 s.d." if series["band"] == "std" else "min-max"
    ax.set_xlabel("pretraining sessions")
    ax.set_ylabel(f"mean over {series['n_sessions']} held-out sessions\n(band: {band})")
    ax.set_title(metric)
    ax.grid(True, alpha=0.3)
  legend["band: spread over\nheld-out sessions"] = Patch(color="0.5", alpha=0.3)
  fig.legend(list(legend.values()), list(legend), loc="outside right upper", frameon=False, fontsize="small")
  save(fig, path)


# ----------------------------------------------------------------------------- rasters


def _time_edges(n_bins: int, bin_size: float, t_before: float) -> tuple[float, float]:
  """Left and right edges (s, relative to stimulus onset) of `n_bins` bins; bin b is
  centred at -t_before + (b + 0.5) * bin_size."""
  return -t_before, -t_before + n_bins * bin_size


def _raster_panels(truth, predictions, neuron_order=None) -> dict:
  """Validated trial-averaged images of a raster figure.

  Returns {"order": [shown] neuron indices, top row first, "truth": [shown, time],
  "rows": {row: {column: [shown, time]}}, "columns": column labels in first-seen order}.
  """
  truth = np.asarray(truth, np.float64)
  if truth.ndim != 3 or 0 in truth.shape:
    raise ValueError(f"raster_figure: truth must be a non-empty [trials, time, neurons]; got shape {truth.shape}")
  if not isinstance(predictions, Mapping) or not predictions:
    raise ValueError(
      "raster_figure: predictions must be a non-empty dict {row label: {column label: [trials, time, neurons]}}"
    )
  rows = {}
  for row, models in predictions.items():
    if not isinstance(models, Mapping) or not models:
      raise ValueError(
        f"raster_figure: predictions[{row!r}] must be a non-empty dict {{column label: [trials, time, neurons]}}"
      )
    rows[str(row)] = {}
    for column, values in models.items():
      values = np.asarray(values, np.float64)
      if values.shape != truth.shape:
        raise ValueError(
          f"raster_figure: predictions[{row!r}][{column!r}] must have the shape of "
          f"truth {truth.shape} [trials, time, neurons]; got {values.shape}"
        )
      rows[str(row)][str(column)] = np.nanmean(values, axis=0).T
  truth_mean = np.nanmean(truth, axis=0).T  # [neurons, time]
  n_neurons = truth.shape[2]
  if neuron_order is None:
    order = np.argsort(-np.nan_to_num(truth_mean.mean(axis=1), nan=-np.inf), kind="stable")
  else:
    order = np.asarray(neuron_order)
    if (
      order.ndim != 1
      or order.size == 0
      or order.dtype.kind not in "iu"
      or order.min() < 0
      or order.max() >= n_neurons
      or np.unique(order).size != order.size
    ):
      raise ValueError(
        f"raster_figure: neuron_order must be distinct neuron indices in [0, {n_neurons}); got {neuron_order!r}"
      )
  columns = _first_seen(c for models in rows.values() for c in models)
  return {
    "order": order,
    "truth": truth_mean[order],
    "rows": {r: {c: img[order] for c, img in models.items()} for r, models in rows.items()},
    "columns": columns,
  }


def raster_figure(
  path, truth, predictions, *, neuron_order=None, bin_size: float = 0.02, t_before: float = 0.5, title: str = ""
) -> None:
  """Figure 2 of the MtM paper: trial-averaged rasters of one region's neurons.

  Args:
    path: where to write the PNG (parent folders are created).
    truth: [trials, time, neurons] observed counts (or rates) of the region's neurons.
    predictions: {row label (masking scheme, e.g. "inter-region"): {column label (model,
      e.g. "MtM"): [trials, time, neurons] predicted expected counts}}.
    neuron_order: neuron indices to show, top row first; default: all neurons by
      decreasing mean observed rate.
    bin_size: seconds per bin.
    t_before: seconds before stimulus onset at the first bin's left edge; bin b is
      centred at -t_before + (b + 0.5) * bin_size.
    title: figure title.

  One row per masking scheme: the trial-averaged truth ("ground truth", repeated on each
  row for comparison), then one panel per model; a colour scale per row from the truth's
  1st-99th percentiles (a model's outliers saturate, not wash out the truth) and a colourbar.
  A model missing from a row leaves an empty panel.
  """
  if not (isinstance(bin_size, numbers.Real) and bin_size > 0 and math.isfinite(bin_size)):
    raise ValueError(f"raster_figure: bin_size must be a positive number of seconds; got {bin_size!r}")
  if not (isinstance(t_before, numbers.Real) and math.isfinite(t_before)):
    raise ValueError(f"raster_figure: t_before must be a finite number of seconds; got {t_before!r}")
  bin_size, t_before = float(bin_size), float(t_before)
  panels = _raster_panels(truth, predictions, neuron_order)
  n_shown, n_bins = panels["truth"].shape
  left, right = _time_edges(n_bins, bin_size, t_before)
  columns = panels["columns"]
  n_rows, n_cols = len(panels["rows"]), 1 + len(columns)

  fig = Figure(figsize=(3.0 * n_cols + 1.2, 2.6 * n_rows + 0.6), layout="constrained")
  axes = fig.subplots(n_rows, n_cols, squeeze=False, sharex=True, sharey=True)
  order_label = "sorted by mean rate" if neuron_order is None else "given order"
  order = panels["order"]

  def neuron_index(y, _):  # y ticks at display rows, labelled with the neuron's index
    row = int(round(y))
    return str(int(order[row])) if abs(y - row) < 1e-6 and 0 <= row < n_shown else ""

  for r, (row, models) in enumerate(panels["rows"].items()):
    finite = panels["truth"][np.isfinite(panels["truth"])]  # the truth's scale: a model's outliers saturate
    vmin, vmax = (float(np.percentile(finite, 1)), float(np.percentile(finite, 99))) if finite.size else (0.0, 1.0)
    if vmax <= vmin:
      vmax = vmin + 1.0
    shown = None
    for c, label in enumerate(["ground truth", *columns]):
      ax = axes[r, c]
      image = panels["truth"] if c == 0 else models.get(label)
      ax.set_title(label)
      if image is None:
        ax.text(0.5, 0.5, f"no {label}", ha="center", va="center", transform=ax.transAxes)
        ax.tick_params(left=False, bottom=False)
        continue
      shown = ax.imshow(
        image,
        aspect="auto",
        interpolation="nearest",
        cmap="viridis",
        vmin=vmin,
        vmax=vmax,
        extent=(left, right, n_shown - 0.5, -0.5),
      )
      if left < 0 < right:
        ax.axvline(0.0, color="white", linestyle=":", linewidth=1)
      if r == n_rows - 1:
        ax.set_xlabel("time from stimulus onset (s)")
    axes[r, 0].set_ylabel(f"{row}\nneuron index ({order_label})")
    axes[r, 0].yaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
    axes[r, 0].yaxis.set_major_formatter(FuncFormatter(neuron_index))
    fig.colorbar(shown, ax=list(axes[r]), label="mean count / bin", shrink=0.9)
  if title:
    fig.suptitle(title)
  save(fig, path)
