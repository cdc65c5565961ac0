"""Analytic model FLOPs (matrix products only; 2 FLOPs per multiply-add).

Element-wise work (softmax, GELU, LayerNorm, the optimiser) is left out, as is usual
for "model FLOPs": it is a few percent at these sizes. A training step costs 3x the
forward pass (the backward pass computes gradients for activations and weights).
"""

from __future__ import annotations


def ndt1_forward_flops(
  *,
  batch: int,
  bins: int,
  neurons: int,
  width: int,
  layers: int,
  mlp_width: int,
  n_special: int = 2,
  embed_mult: int = 2,
  stitch_dim: int = 0,
) -> int:
  """FLOPs of one NDT1 forward pass on [batch, bins, neurons] (models/ndt1.py).

  Per bin: [stitch Linear(N, s)], Linear(n, mult n), Linear(mult n, D); per token (bins
  plus special tokens) and layer: q, k, v, out projections (4 D^2), attention scores and
  weighted sum (2 L D), MLP (2 D F); per bin: the readout Linear(D, N)."""
  n_in = stitch_dim or neurons
  tokens = bins + n_special
  per_bin = (neurons * stitch_dim if stitch_dim else 0) + n_in * embed_mult * n_in + embed_mult * n_in * width
  per_bin += width * neurons  # readout
  per_token_layer = 4 * width * width + 2 * tokens * width + 2 * width * mlp_width
  return 2 * batch * (bins * per_bin + layers * tokens * per_token_layer)


def ndt1_single_neuron_flops(
  *,
  sequences: int,
  bins: int,
  neurons: int,
  width: int,
  layers: int,
  mlp_width: int,
  n_special: int = 2,
  embed_mult: int = 2,
  stitch_dim: int = 0,
  embedded_bins: int | None = None,
) -> int:
  """FLOPs of `sequences` evaluation passes through the one-neuron shortcut
  (evaluation/tasks.py `single`): the shared input pre-activation is computed once per
  trial (not counted); the projection Linear(mult n, D) runs at `embedded_bins` (sequence,
  bin) pairs in all (the bins where the hidden neuron fired, plus the shared embedding's;
  None: every bin of every sequence); each sequence costs the transformer layers and one
  readout column per bin."""
  n_in = stitch_dim or neurons
  tokens = bins + n_special
  embedded_bins = sequences * bins if embedded_bins is None else embedded_bins
  per_token_layer = 4 * width * width + 2 * tokens * width + 2 * width * mlp_width
  return 2 * (
    embedded_bins * embed_mult * n_in * width + sequences * (bins * width + layers * tokens * per_token_layer)
  )


def poyo_forward_flops(
  *,
  batch: int,
  tokens: int,
  queries: int,
  latents: int,
  dim: int,
  depth: int,
  cross_heads: int,
  self_heads: int,
  head_dim: int = 64,
  n_outputs: int = 2,
  ffn_mult: int = 4,
) -> int:
  """FLOPs of one POYO forward pass (models/poyo.py, models/perceiver.py) on `tokens`
  (padded) input tokens, `latents` latents and `queries` output queries per window.

  Attention block of width D over a context of C keys with H heads of E: q projection
  Q D HE, k and v projections 2 C D HE, scores and weighted sum 2 Q C HE, output HE D;
  GEGLU FFN: D x 2mD and mD x D per query row."""

  def attention(q, c, heads):
    inner = heads * head_dim
    return q * dim * inner + 2 * c * dim * inner + 2 * q * c * inner + q * inner * dim

  ffn = lambda rows: rows * (dim * 2 * ffn_mult * dim + ffn_mult * dim * dim)
  encoder = attention(latents, tokens, cross_heads) + ffn(latents)
  processor = depth * (attention(latents, latents, self_heads) + ffn(latents))
  decoder = attention(queries, latents, cross_heads) + ffn(queries)
  readout = queries * dim * n_outputs
  return 2 * batch * (encoder + processor + decoder + readout)


def train_flops(forward: int) -> int:
  """FLOPs of a training step: forward + backward (2x forward)."""
  return 3 * forward
