"""Full four-metric evaluation (co-smoothing, forward prediction, inter- and
intra-region bits per spike) of one session, per task and in total.

  python -m benchmarks.evaluation --size=demo --out=runs/bench/eval.json

Defaults: a 700-neuron session in 5 regions with 180 test trials of 100 bins, synthetic
Poisson counts generated in-process, an untrained NDT1 of --size (its speed does not
depend on training). --no_shortcut also times every mask through the full model (the
evaluation before the one-neuron shortcut; slow). Times include compilation unless
--warm (then the second of two calls is timed).

--family=poyo_mtm times spike-token MtM's evaluation instead (benchmarks.poyo_mtm_eval:
a --poyo_mtm_size model on --neurons units, 123 by default, and --trials test trials, 56
by default; compile and run time apart, fractions of the matmul peak with --peak).
"""

from __future__ import annotations

import dataclasses
import time

from absl import flags
import numpy as np
from flax import nnx

from benchmarks import common, flops, poyo_mtm_eval
from mtm_jax import masking
from mtm_jax.evaluation import activity
from mtm_jax.models import ndt1
from mtm_jax.configs import ndt1 as ndt1_config
from mtm_jax.training import entry

_FAMILY = flags.DEFINE_enum("family", "ndt1", ["ndt1", "poyo_mtm"], "model family whose evaluation is timed")
_POYO_MTM_SIZE = flags.DEFINE_enum("poyo_mtm_size", "small", ["tiny", "small", "base"], "spike-token MtM preset")
_WIDTHS = flags.DEFINE_list("widths", None, "poyo_mtm: scored bin widths in seconds (default: the config's)")
_SIZE = flags.DEFINE_enum("size", "demo", sorted(ndt1.PRESETS), "model size (mtm_jax.models.ndt1.PRESETS)")
_NEURONS = flags.DEFINE_integer("neurons", 700, "neurons of the session")
_TRIALS = flags.DEFINE_integer("trials", 180, "test trials")
_REGIONS = flags.DEFINE_integer("regions", 5, "brain regions")
_MAX_BATCH = flags.DEFINE_integer("max_batch", 2048, "sequences per forward pass (config.eval.max_batch)")
_SHORTCUTS = flags.DEFINE_list("shortcut", ["true"], "shortcut settings to time (true/false)")
_TASKS = flags.DEFINE_list("tasks", [t.name for t in masking.evaluation_masks(np.zeros(1, int), 100)], "tasks to time")
_MAX_MASKS = flags.DEFINE_integer(
  "max_masks",
  0,
  "> 0: time only the first masks of each task and extrapolate "
  "linearly to all of them (the 'extrapolated' column says so)",
)
_WARM = flags.DEFINE_bool("warm", False, "time a second call (compilation excluded)")
_PEAK = flags.DEFINE_string(
  "peak", None, "benchmarks.matmul JSON: adds each task's floor (its model FLOPs at the measured float32 matmul peak)"
)
_OUT = flags.DEFINE_string("out", None, "JSON output path")


def measure(
  size: str,
  neurons: int,
  trials: int,
  regions: int,
  *,
  max_batch: int = 2048,
  shortcuts=("true",),
  task_names=None,
  max_masks: int = 0,
  warm: bool = False,
  peak: dict | None = None,
  seed: int = 0,
) -> list[dict]:
  """One row per (shortcut setting, task) and a "total" row per setting: seconds of the
  evaluation of an untrained NDT1 of `size` on `trials` synthetic trials of 100 bins x
  `neurons` neurons in `regions` regions (compilation included unless `warm`; see the
  module doc for max_masks). task_names: the tasks to time (None: all four)."""
  config = ndt1_config.get_config("paper")
  config.model.size = size
  n, k = neurons, trials
  model = ndt1.from_config(config, n, rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split(model, nnx.Param)
  rng = np.random.default_rng(seed)
  spikes = rng.poisson(0.2, (k, 100, n)).astype(np.float32)
  region_ids = (np.arange(n) * regions // n).astype(np.int32)
  predictor = activity.make_predictor(graphdef)
  peak = peak or {}
  rows = []
  for shortcut in shortcuts:
    total, total_flops = 0.0, 0
    for task in masking.evaluation_masks(region_ids, 100):
      if task_names is not None and task.name not in task_names:
        continue
      n_masks = task.hide_neurons.shape[0]
      timed = task
      if 0 < max_masks < n_masks:
        timed = dataclasses.replace(
          task, hide_neurons=task.hide_neurons[:max_masks], score_neurons=task.score_neurons[:max_masks]
        )
      run = lambda: activity.predict_masks(
        predictor,
        params,
        spikes,
        timed,
        causal=task.prompt == "causal",
        max_batch=max_batch,
        shortcut=shortcut == "true",
      )
      if warm:
        run()
      t0 = time.perf_counter()
      log_rates = run()
      activity.score_masks(np.exp(log_rates.astype(np.float64)), spikes, timed)
      measured = time.perf_counter() - t0
      done = timed.hide_neurons.shape[0]
      seconds = measured * n_masks / done
      total += seconds
      groups = activity.single_neuron_groups(task) if shortcut == "true" else None
      model_flops = _task_flops(config, n, n_masks * k, _embedded_bins(spikes, task, groups))
      total_flops += model_flops
      rows.append(
        dict(
          shortcut=shortcut,
          task=task.name,
          masks=n_masks,
          timed_masks=done,
          sequences=n_masks * k,
          seconds=seconds,
          measured_seconds=measured,
          extrapolated=done < n_masks,
          sequences_per_s=done * k / measured,
          model_gflop=model_flops / 1e9,
          achieved_gflops_per_s=model_flops / seconds / 1e9,
          **_floor(model_flops, peak),
        )
      )
      print(rows[-1], flush=True)
    rows.append(
      dict(
        shortcut=shortcut,
        task="total",
        seconds=total,
        model_gflop=total_flops / 1e9,
        achieved_gflops_per_s=total_flops / total / 1e9,
        **_floor(total_flops, peak),
        extrapolated=any(r["extrapolated"] for r in rows if r["shortcut"] == shortcut),
      )
    )
  return rows


COLUMNS = [
  "shortcut",
  "task",
  "masks",
  "timed_masks",
  "sequences",
  "seconds",
  "extrapolated",
  "sequences_per_s",
  "model_gflop",
  "achieved_gflops_per_s",
]


def main(argv):
  del argv
  peak = common.load_peak(_PEAK.value)
  if _FAMILY.value == "poyo_mtm":
    poyo_mtm_main(peak)
    return
  rows = measure(
    _SIZE.value,
    _NEURONS.value,
    _TRIALS.value,
    _REGIONS.value,
    max_batch=_MAX_BATCH.value,
    shortcuts=_SHORTCUTS.value,
    task_names=_TASKS.value,
    max_masks=_MAX_MASKS.value,
    warm=_WARM.value,
    peak=peak,
  )
  common.report(
    f"evaluation: NDT1 {_SIZE.value}, {_NEURONS.value} neurons x {_TRIALS.value} trials x 100 bins, "
    f"{_REGIONS.value} regions",
    rows,
    COLUMNS + (["floor_seconds_at_fp32_peak"] if peak else []),
    _OUT.value,
    warm=_WARM.value,
    peak_flops_per_s=peak,
  )


def poyo_mtm_main(peak: dict):
  """--family=poyo_mtm: benchmarks.poyo_mtm_eval's table."""
  default = lambda flag, value: flag.value if flags.FLAGS[flag.name].present else value
  units, trials = default(_NEURONS, 123), default(_TRIALS, 56)
  rows = poyo_mtm_eval.measure(
    _POYO_MTM_SIZE.value,
    units,
    trials,
    _REGIONS.value,
    task_names=_TASKS.value,
    max_masks=_MAX_MASKS.value,
    widths=None if _WIDTHS.value is None else [float(w) for w in _WIDTHS.value],
  )
  rows = [common.add_peak_fractions(r, peak) for r in rows]
  common.report(
    f"evaluation: spike-token MtM {_POYO_MTM_SIZE.value}, {units} units x {trials} trials of 2 s, "
    f"{_REGIONS.value} regions",
    rows,
    poyo_mtm_eval.COLUMNS + (["fraction_of_fp32_peak"] if peak else []),
    _OUT.value,
    peak_flops_per_s=peak,
  )


def _embedded_bins(spikes: np.ndarray, task, groups) -> int | None:
  """(sequence, bin) pairs the one-neuron shortcut re-embeds for `task` (each group's
  shared trials once, then each scored neuron's fired hidden bins: activity.fired_bins);
  None when the task runs full passes (groups None)."""
  if groups is None:
    return None
  real = lambda neurons: int((activity.fired_bins(spikes, neurons, task.hide_bins)[0] < len(neurons)).sum())
  return sum(spikes.shape[0] * spikes.shape[1] + real(neurons) for _, neurons in groups)


def _task_flops(config, neurons: int, sequences: int, embedded_bins: int | None) -> int:
  """Model FLOPs of a task's `sequences` passes: through the one-neuron shortcut
  (`embedded_bins` from _embedded_bins), or full (None)."""
  width, layers, _, mlp = ndt1.size_dims(config.model.size)
  shape = dict(
    bins=100,
    neurons=neurons,
    width=width,
    layers=layers,
    mlp_width=mlp,
    embed_mult=config.model.embed_mult,
    stitch_dim=config.model.stitch_dim,
  )
  if embedded_bins is not None:
    return flops.ndt1_single_neuron_flops(sequences=sequences, embedded_bins=embedded_bins, **shape)
  return flops.ndt1_forward_flops(batch=sequences, **shape)


def _floor(model_flops: int, peak: dict) -> dict:
  """The time the FLOPs take at the measured float32 matmul peak: no implementation of the
  same computation on this machine can be faster."""
  return dict(floor_seconds_at_fp32_peak=model_flops / peak["float32"]) if peak else {}


if __name__ == "__main__":
  entry.run(main)
