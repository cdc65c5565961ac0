"""What every family's evaluation reports the same way: the MtM activity metric names,
the behaviour heads' metric names, means over sessions, the heading and markdown table of
a results dict and the hint under it."""

from __future__ import annotations

import re

import numpy as np

from mtm_jax.evaluation import decoding

METRICS = ("co_smoothing_bps", "forward_prediction_bps", "inter_region_bps", "intra_region_bps")
HEAD_METRICS = tuple(f"head_{m}" for m in decoding.BEHAVIOUR_METRICS)

DECODING_OFF = "decoding turned off"  # the reason of every decoder skipped by decode=False


def session_means(per_session: dict[str, dict]) -> dict:
  """{metric: mean over the sessions that scored it} of {session: results}, and "skipped"
  {metric: "<session>: <reason>; ..."} for the metrics no session scored."""
  scored = {k: None for r in per_session.values() for k, v in r.items() if isinstance(v, float)}
  means = {k: float(np.mean([r[k] for r in per_session.values() if k in r])) for k in scored}
  reasons = {}
  for name, r in per_session.items():
    for metric, reason in r.get("skipped", {}).items():
      reasons.setdefault(metric, []).append(f"{name}: {reason}")
  return {**means, "skipped": {m: "; ".join(v) for m, v in reasons.items() if m not in means}}


def heading(results: dict) -> str:
  """The line above a results table: which session(s), split and step were scored."""
  if "sessions" in results:
    scored = f"mean of {len(results['sessions'])} sessions ({', '.join(results['sessions'])})"
  else:
    scored = f"session {results['session_id']}"
  return f"{scored}, {results['split']} split, step {results['step']}"


def _cell(results: dict, metric: str) -> str:
  if metric in results:
    return f"{results[metric]:.4f}"
  return "skipped" if metric in results.get("skipped", {}) else "-"


def row_name(metric: str) -> str:
  """A table row's name for a metric key: 'co_smoothing' for co_smoothing_bps and for
  co_smoothing_bps_5ms alike (the width is in the column names), else the key."""
  return re.sub(r"_bps(_[0-9.]+ms)?$", "", metric)


def table(columns: dict[str, dict], metrics=METRICS) -> str:
  """Markdown table: one row per metric, one column per named result dict ("skipped" for
  a metric in the dict's "skipped" mapping, "-" for one it lacks)."""
  names = list(columns)
  lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
  for m in metrics:
    cells = [_cell(columns[n], m) for n in names]
    lines.append(f"| {row_name(m)} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


NEGATIVE_BPS = "negative bits per spike: worse than predicting each neuron's mean rate (an undertrained model?)"


def bps_hint(results: dict) -> str:
  """NEGATIVE_BPS when a bits-per-spike score of `results` (top level, any bin width) is
  negative, else "" (the printed reports add it under their tables)."""
  scores = [v for k, v in results.items() if k.startswith(METRICS) and isinstance(v, float)]
  return NEGATIVE_BPS if any(v < 0 for v in scores) else ""


def oracle_column(results: dict) -> dict:
  """The oracle_* values of a result dict, under the plain metric names."""
  return {m: results[f"oracle_{m}"] for m in METRICS if f"oracle_{m}" in results}
