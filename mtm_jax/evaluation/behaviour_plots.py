"""The behaviour figure of a POYO model: predicted vs true traces on a few windows of the
scored split, one row per behaviour dimension and one column per window."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from mtm_jax.evaluation import plots


def windows(timestamps: np.ndarray, length: float, count: int) -> list[tuple[float, float]]:
  """Up to `count` windows [start, start + length) spread evenly over the covered span of
  `timestamps` (sorted seconds); one window of the whole span when it is shorter."""
  if len(timestamps) == 0:
    raise ValueError("behaviour figure: no behaviour samples of the split to draw")
  first, last = float(timestamps[0]), float(timestamps[-1])
  if last - first <= length:
    return [(first, last + 1e-9)]
  starts = np.linspace(first, last - length, count)
  return [(float(s), float(s) + length) for s in starts]


COLOURS = ("tab:orange", "tab:blue", "tab:green", "tab:red", "tab:purple")


def behaviour_figure(
  path, stitched: dict[str, dict], names: Sequence[str], *, length: float = 2.0, count: int = 3, title=""
) -> Figure:
  """Writes (plots.save) and returns the figure of one session's stitched predictions
  {model label: stitching.stitch_predictions' dict (timestamps [T], prediction and target
  [T, D])}: the true trace (black, the first model's targets) and each model's prediction
  in `count` windows of `length` seconds, one row per dimension (`names`, D of them)."""
  for label, st in stitched.items():
    shapes = np.shape(st["prediction"]), np.shape(st["target"])
    if shapes[0] != shapes[1] or len(shapes[0]) != 2 or shapes[0][1] != len(names):
      raise ValueError(f"behaviour figure: {label}: expected [T, {len(names)}] predictions and targets, got {shapes}")
  first = next(iter(stitched.values()))
  t, target = np.asarray(first["timestamps"], np.float64), np.asarray(first["target"])
  spans = windows(t, length, count)
  fig = Figure(figsize=(3.2 * len(spans) + 0.8, 2.0 * len(names) + 0.8), layout="constrained")
  axes = fig.subplots(len(names), len(spans), squeeze=False, sharey="row")
  for d, name in enumerate(names):
    for w, (start, end) in enumerate(spans):
      ax = axes[d, w]
      inside = (t >= start) & (t < end)
      ax.plot(t[inside], target[inside, d], color="black", linewidth=1.2, label="true")
      for m, (label, st) in enumerate(stitched.items()):
        times = np.asarray(st["timestamps"], np.float64)
        shown = (times >= start) & (times < end)
        colour = COLOURS[m % len(COLOURS)]
        ax.plot(times[shown], np.asarray(st["prediction"])[shown, d], color=colour, linewidth=1.2, label=label)
      if d == 0:
        ax.set_title(f"{start:.1f}-{end:.1f} s")
      if d == len(names) - 1:
        ax.set_xlabel("time (s)")
    axes[d, 0].set_ylabel(name)
  axes[0, -1].legend(loc="upper right", fontsize="small")
  if title:
    fig.suptitle(title)
  plots.save(fig, path)
  return fig
