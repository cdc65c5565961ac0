"""Where a spike-token MtM train step's time goes: the forward pass's parts, each jitted
and timed alone (benchmarks.poyo_mtm_step --profile).

The parts are the trainer's (tasks/poyo_mtm.masked_nll): the masking (scheme, mask, kept
tokens, sampled queries), the encoder's cross-attention of the latents over the padded
tokens (model.encode without its latent layers), the latent self-attention layers, and
the decoder's queries with the Poisson NLL; and the forward pass with its backward pass
(the gradient the step's optimiser reads). Each runs in the compute dtype, with dropout
as in training; their sum against the whole forward pass shows the glue between them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from benchmarks import common
from mtm_jax import masking, token_masking
from mtm_jax.tasks import poyo_mtm as poyo_mtm_task
from mtm_jax.training import precision


def parts(config, graphdef, params, batch, *, steps: int = 3) -> dict:
  """{forward_s, grad_s (forward and backward, no optimiser), mask_s, encoder_s,
  processor_s, decoder_loss_s}: seconds per call (median of `steps` after one warm-up) of
  the forward pass of `config`'s loss on `batch`, its gradient and its parts (see the
  module doc)."""
  dtype = config.model.get("dtype", "float32")
  bin_size, n_queries = config.data.bin_size, config.data.max_queries
  cast = lambda p: precision.compute_params(p, dtype)
  key = jax.random.key(0)
  k_mask, k_query, k_drop = jax.random.split(key, 3)
  nll = poyo_mtm_task.nll(graphdef, config, train=True)
  forward = jax.jit(lambda p, b, k: nll(p, b, k)[0])
  grad = jax.jit(jax.grad(lambda p, b, k: nll(p, b, k)[0]))

  @jax.jit
  def mask(b, k):
    k_scheme, k_mask, k_query = jax.random.split(k, 3)  # as masked_nll's keys
    scheme = masking.sample_scheme(k_scheme, config.masking.mode)
    m = token_masking.sample_mask(
      k_mask, scheme, b["unit_regions"], b["counts"].shape[1], poyo_mtm_task.mask_config(config)
    )
    keep = token_masking.keep_tokens(m, b, bin_size)
    bins, units, valid = token_masking.sample_queries(k_query, m.targets() & b["valid"][:, None, None], n_queries)
    return keep, bins, units, valid

  keep, bins, units, valid = mask(batch, k_mask)
  inputs = dict(batch, input_mask=keep)
  prompt = jnp.zeros(batch["valid"].shape, jnp.int32)

  @jax.jit
  def encoder(p, b, k):
    model = nnx.merge(graphdef, cast(p))
    model.processor = nnx.List([])  # the latents' cross-attention over the tokens alone
    return model.encode(b, prompt, key=k)

  latents = encoder(params, inputs, k_drop)

  @jax.jit
  def processor(p, x, k):
    model = nnx.merge(graphdef, cast(p))
    angles = model.latent_angles()
    for layer, kl in zip(model.processor, jax.random.split(k, len(model.processor))):
      x = layer(x, angles, key=kl)
    return x

  @jax.jit
  def decoder_loss(p, x, b, k):
    model = nnx.merge(graphdef, cast(p))
    times = poyo_mtm_task.query_times(k, bins, bin_size, True)
    log_rate = model.decode(x, jnp.take_along_axis(b["unit_rows"], units, axis=1), times, b["session_index"], prompt)
    log_count = log_rate + jnp.log(bin_size)
    y = b["counts"][jnp.arange(bins.shape[0])[:, None], bins, units]
    return jnp.sum(jnp.where(valid, jnp.exp(log_count) - y * log_count, 0.0))

  calls = dict(
    forward_s=lambda: forward(params, batch, key),
    grad_s=lambda: grad(params, batch, key),
    mask_s=lambda: mask(batch, k_mask),
    encoder_s=lambda: encoder(params, inputs, k_drop),
    processor_s=lambda: processor(params, latents, k_drop),
    decoder_loss_s=lambda: decoder_loss(params, latents, batch, k_query),
  )
  return {name: common.time_calls(fn, steps=steps, warmup=1)["seconds"] for name, fn in calls.items()}
