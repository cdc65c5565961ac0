"""Evaluation of a trained workdir: metrics.json and printable tables."""

from __future__ import annotations

import json
import os

import numpy as np

from mtm_jax import masking
from mtm_jax.datasets import pipeline
from mtm_jax.evaluation import tasks
from mtm_jax.training import loop

METRICS = ("co_smoothing_bps", "forward_prediction_bps", "inter_region_bps", "intra_region_bps")


def evaluate_workdir(workdir: str, split: str | None = None, step: int | None = None) -> dict:
  """Scores the model in `workdir` on a split of its session; writes <workdir>/metrics.json."""
  trained = loop.load_trained(workdir, step)
  config = trained.config
  split = split or config.eval.split
  data = pipeline.load_split(config.data.dataset, config.data.data_dir, split)
  results = tasks.evaluate(
      trained.graphdef, trained.params, data["spikes"], trained.info.region_ids(),
      causal_trained=config.masking.mode in (masking.MTM, "causal"), true_rates=data.get("rates"),
      max_batch=config.eval.max_batch, mesh=trained.mesh)
  per_neuron = results.pop("per_neuron")
  results.update(session_id=trained.info.session_id, split=split, step=trained.step,
                 masking_mode=config.masking.mode, n_trials=int(data["spikes"].shape[0]),
                 n_neurons=trained.info.n_neurons)
  with open(os.path.join(os.path.abspath(workdir), "metrics.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2)
  np.savez(os.path.join(os.path.abspath(workdir), "per_neuron_bps.npz"), **per_neuron)
  return results


def table(columns: dict[str, dict], metrics=METRICS) -> str:
  """Markdown table: one row per metric, one column per named result dict."""
  names = list(columns)
  lines = ["| metric (bits/spike) | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
  for m in metrics:
    cells = [f"{columns[n][m]:.4f}" if m in columns[n] else "-" for n in names]
    lines.append(f"| {m.removesuffix('_bps')} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def oracle_column(results: dict) -> dict:
  """The oracle_* values of a result dict, under the plain metric names."""
  return {m: results[f"oracle_{m}"] for m in METRICS if f"oracle_{m}" in results}
