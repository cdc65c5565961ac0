"""Spike-token MtM's four-metric evaluation (evaluation/poyo_mtm.py), per task: its
compile time and run time, model FLOPs and achieved FLOP/s. The program is
benchmarks.evaluation --family=poyo_mtm (this module defines no flags):

  python -m benchmarks.evaluation --family=poyo_mtm --poyo_mtm_size=small --max_masks=8

A synthetic session (benchmarks.synthetic.poyo_mtm_session: 123 units in 5 regions at
10 Hz, 56 test trials), an untrained model of the preset (its speed does not depend on
training), the config's eval batch sizes and widths. Each task runs twice: the first
call compiles (its encoder and decoder shapes) and runs, the second only runs;
compile_seconds is their difference. FLOPs are counted from the shapes of the passes
actually made (benchmarks.flops.poyo_mtm_flops: encoder passes over the padded context
tokens, keys and values once per distinct trial, decoder passes over the padded rows).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from flax import nnx

from benchmarks import flops, synthetic
from mtm_jax import masking
from mtm_jax.configs import poyo_mtm as poyo_mtm_config
from mtm_jax.datasets.events import binning, trials as trials_lib
from mtm_jax.evaluation import activity, poyo_mtm as poyo_mtm_eval
from mtm_jax.models import poyo_mtm
from mtm_jax.tasks import poyo_mtm as poyo_mtm_task


def counting(predictor: poyo_mtm_eval.Predictor, model, shapes: list):
  """`predictor` whose passes append their FLOPs (flops.poyo_mtm_flops of their shapes) to `shapes`."""

  def encode(params, tokens, copy_rows, *rest):
    rows, length = tokens["unit_index"].shape
    parts = flops.poyo_mtm_flops(model, batch=copy_rows.shape[0], tokens=length, queries=0, token_rows=rows)
    shapes.append(parts["encoder"] + parts["processor"])
    return predictor.encode(params, tokens, copy_rows, *rest)

  def decode(params, latents, copy, unit, times, *rest):
    shapes.append(flops.poyo_mtm_flops(model, batch=copy.shape[0], tokens=0, queries=times.shape[0])["decoder"])
    return predictor.decode(params, latents, copy, unit, times, *rest)

  return poyo_mtm_eval.Predictor(encode, decode)


def measure(
  size: str = "small",
  units: int = 123,
  trials: int = 56,
  regions: int = 5,
  *,
  rate: float = 10.0,
  task_names=None,
  max_masks: int = 0,
  widths=None,
  seed: int = 0,
) -> list[dict]:
  """One row per task and a "total" row: compile and run seconds of the evaluation (the
  run extrapolated linearly to every mask when max_masks > 0 times only the first ones).
  widths: the scored bin widths (None: the preset's config.eval.bin_sizes)."""
  config = poyo_mtm_config.get_config(size)
  widths = tuple(config.eval.bin_sizes if widths is None else widths)
  session = synthetic.poyo_mtm_session(units, trials, rate, regions, seed, split="test")
  data = trials_lib.prepare([session], "test", poyo_mtm_task.trial_config(config))
  model = poyo_mtm.from_config(config, units, 1, rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split(model, nnx.Param)
  shapes = []
  predictor = counting(poyo_mtm_eval.make_predictor(graphdef, data.config.bin_size), model, shapes)
  factors = poyo_mtm_eval.width_factors(data.config.bin_size, widths)
  counts = [
    binning.bin_spikes(session, data.trials[:, 1:], data.config.bin_size / f, data.config.n_bins * f) for f in factors
  ]
  options = dict(batch_size=config.eval.batch_size, max_rows=config.eval.max_rows)
  rows = []
  for task in masking.evaluation_masks(data.regions[0, :units], data.config.n_bins):
    if task_names is not None and task.name not in task_names:
      continue
    n_masks = task.hide_neurons.shape[0]
    timed = task
    if 0 < max_masks < n_masks:
      timed = dataclasses.replace(
        task, hide_neurons=task.hide_neurons[:max_masks], score_neurons=task.score_neurons[:max_masks]
      )

    def run():
      log_rates = poyo_mtm_eval.predict_masks(predictor, params, data, 0, timed, factors, **options)
      for f, lr, spikes in zip(factors, log_rates, counts):
        rates = np.exp(lr.astype(np.float64)) * (data.config.bin_size / f)
        activity.score_masks(rates, spikes, poyo_mtm_eval.at_width(timed, f))

    t0 = time.perf_counter()
    run()
    cold = time.perf_counter() - t0
    shapes.clear()
    t0 = time.perf_counter()
    run()
    measured = time.perf_counter() - t0
    done = timed.hide_neurons.shape[0]
    scale = n_masks / done
    seconds, model_flops = measured * scale, sum(shapes) * scale
    rows.append(
      dict(
        task=task.name,
        dtype="float32",
        masks=n_masks,
        timed_masks=done,
        copies=n_masks * trials,
        compile_seconds=max(cold - measured, 0.0),
        seconds=seconds,
        extrapolated=done < n_masks,
        copies_per_s=done * trials / measured,
        model_gflop=model_flops / 1e9,
        achieved_gflops_per_s=model_flops / seconds / 1e9,
      )
    )
    print(rows[-1], flush=True)
  total = lambda key: sum(r[key] for r in rows)
  rows.append(
    dict(
      task="total",
      dtype="float32",
      compile_seconds=total("compile_seconds"),
      seconds=total("seconds"),
      extrapolated=any(r["extrapolated"] for r in rows),
      model_gflop=total("model_gflop"),
      achieved_gflops_per_s=total("model_gflop") / total("seconds"),
    )
  )
  return rows


COLUMNS = [
  "task",
  "masks",
  "timed_masks",
  "copies",
  "compile_seconds",
  "seconds",
  "extrapolated",
  "copies_per_s",
  "model_gflop",
  "achieved_gflops_per_s",
]
