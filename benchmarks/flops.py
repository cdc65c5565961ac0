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
  (evaluation/activity.py `single`): the shared input pre-activation is computed once per
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


def attention_flops(
  rows: int, q: int, c: int, *, dim: int, heads: int, head_dim: int, kv_rows: int | None = None
) -> int:
  """MACs of one perceiver attention (models/perceiver.py) on `rows` rows of `q` queries
  over a context of `c` keys, width D, H heads of E: q projection Q D HE, k and v
  projections 2 C D HE, scores and weighted sum 2 Q C HE, output HE D per row; the k and
  v projections run on `kv_rows` rows when they are computed once per context row and
  gathered (perceiver context_index; None: `rows`)."""
  inner = heads * head_dim
  kv_rows = rows if kv_rows is None else kv_rows
  return rows * (q * dim * inner + 2 * q * c * inner + q * inner * dim) + kv_rows * 2 * c * dim * inner


def ffn_flops(rows: int, *, dim: int, ffn_mult: int = 4) -> int:
  """MACs of the GEGLU feed-forward on `rows` rows: D x 2mD and mD x D per row."""
  return rows * (dim * 2 * ffn_mult * dim + ffn_mult * dim * dim)


def perceiver_flops(
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
  ffn_mult: int = 4,
  token_rows: int | None = None,
) -> dict[str, int]:
  """FLOPs of a PerceiverIO forward pass (models/perceiver.py) on `batch` rows of `tokens`
  (padded) input tokens, `latents` latents and `queries` output queries, split into
  {"encoder": the latents' cross-attention over the tokens and its FFN, "processor": the
  `depth` latent self-attention blocks, "decoder": the queries' cross-attention over the
  latents and its FFN}. token_rows: the rows of distinct token sets whose keys and values
  are computed once for several copies (spike-token MtM's evaluation); None: one per row."""
  attend = lambda q, c, heads, kv_rows=None: attention_flops(
    batch, q, c, dim=dim, heads=heads, head_dim=head_dim, kv_rows=kv_rows
  )
  ffn = lambda rows: ffn_flops(batch * rows, dim=dim, ffn_mult=ffn_mult)
  encoder = attend(latents, tokens, cross_heads, token_rows) + ffn(latents)
  processor = depth * (attend(latents, latents, self_heads) + ffn(latents))
  decoder = attend(queries, latents, cross_heads) + ffn(queries)
  return dict(encoder=2 * encoder, processor=2 * processor, decoder=2 * decoder)


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
  (padded) input tokens, `latents` latents and `queries` output queries per window
  (perceiver_flops, plus the readout Linear(D, n_outputs) per query)."""
  parts = perceiver_flops(
    batch=batch,
    tokens=tokens,
    queries=queries,
    latents=latents,
    dim=dim,
    depth=depth,
    cross_heads=cross_heads,
    self_heads=self_heads,
    head_dim=head_dim,
    ffn_mult=ffn_mult,
  )
  return sum(parts.values()) + 2 * batch * queries * dim * n_outputs


def poyo_mtm_flops(model, *, batch: int, tokens: int, queries: int, token_rows: int | None = None) -> dict[str, int]:
  """FLOPs of a spike-token MtM forward pass (models/poyo_mtm.py `model`) on `batch` rows
  of `tokens` padded tokens (the dropped tokens are masked keys: computed all the same)
  and `queries` (unit, time) queries per row: perceiver_flops' parts, the decoder's with
  the readout Linear(D, 1) and, with unit_readout, Linear(D, D) of the unit embedding and
  its dot product with the output, per query; "total" their sum. token_rows: see
  perceiver_flops (evaluation's encoder passes)."""
  hp = model.hparams
  parts = perceiver_flops(
    batch=batch,
    tokens=tokens,
    queries=queries,
    latents=model.n_latent_steps * hp.latents_per_step,
    dim=hp.dim,
    depth=hp.depth,
    cross_heads=hp.cross_heads,
    self_heads=hp.self_heads,
    head_dim=hp.head_dim,
    token_rows=token_rows,
  )
  readout = hp.dim + (hp.dim * hp.dim + hp.dim if hp.unit_readout else 0)
  parts["decoder"] += 2 * batch * queries * readout
  return dict(parts, total=sum(parts.values()))


def train_flops(forward: int) -> int:
  """FLOPs of a training step: forward + backward (2x forward)."""
  return 3 * forward
