"""Figures of the MtM paper: rasters (Figure 2), and `save` (a figure written whole). The
scaling figure (Figure 4) with intervals is studies.report's.

Figures are drawn on `matplotlib.figure.Figure` objects (Agg canvas), so nothing here
touches pyplot or matplotlib's global state.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from mtm_jax import files

_DPI = 120


def _first_seen(values) -> list:
  return list(dict.fromkeys(values))


def save(fig: Figure, path) -> None:
  """Writes `fig` as a PNG at `path` whole (files.atomic_write), its folders created."""
  path = os.fspath(path)
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  with files.atomic_write(path, "wb") as f:  # a reader never sees part of a figure
    fig.savefig(f, format="png", dpi=_DPI)


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
