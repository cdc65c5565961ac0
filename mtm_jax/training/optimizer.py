"""Optimiser from config: AdamW with the one-cycle schedule MtM uses."""

from __future__ import annotations

import ml_collections
import optax


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Start at peak/div_factor, warm up over warmup_fraction of the steps, cosine down to
  start/final_div_factor (PyTorch's OneCycleLR)."""
  o = config.optimizer
  return optax.cosine_onecycle_schedule(
      transition_steps=config.train.steps, peak_value=o.learning_rate, pct_start=o.warmup_fraction,
      div_factor=o.div_factor, final_div_factor=o.final_div_factor)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  return optax.adamw(learning_rate_schedule(config), b1=0.9, b2=0.999, eps=1e-8,
                     weight_decay=config.optimizer.weight_decay)
