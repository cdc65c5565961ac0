"""The benchmarks' analytic FLOP counts against hand counts."""

from benchmarks import flops


def test_ndt1_flops_by_hand():
  # 1 trial, 2 bins, 3 neurons, D=4, 1 layer, MLP 8, 2 special tokens (L=4), mult 2.
  # Per bin: 3x6 + 6x4 embedding + 4x3 readout = 54 MACs; per token: 4 x 16 projections
  # + 2 x 4 x 4 attention + 2 x 4 x 8 MLP = 160 MACs. 2 x (2 x 54 + 4 x 160) = 1496.
  assert flops.ndt1_forward_flops(batch=1, bins=2, neurons=3, width=4, layers=1, mlp_width=8) == 1496
  # A stitcher Linear(3, 5) in front: the embedding becomes 5x10 + 10x4.
  assert flops.ndt1_forward_flops(batch=1, bins=2, neurons=3, width=4, layers=1, mlp_width=8, stitch_dim=5) == 2 * (
    2 * (15 + 50 + 40 + 12) + 4 * 160
  )
  assert flops.train_flops(1496) == 3 * 1496


def test_ndt1_single_neuron_flops_by_hand():
  # bins 2, n 3 (mult 2 -> 6), D 4, 1 layer, F 8, 4 tokens: per bin 6*4 + 4 = 28; per token
  # 4*16 + 2*4*4 + 2*4*8 = 160; 2 * (2*28 + 4*160) = 1392 per sequence.
  assert flops.ndt1_single_neuron_flops(sequences=5, bins=2, neurons=3, width=4, layers=1, mlp_width=8) == 5 * 1392
  # Re-embedding only 3 of the 10 (sequence, bin) pairs saves 7 projections of 6*4.
  assert (
    flops.ndt1_single_neuron_flops(sequences=5, bins=2, neurons=3, width=4, layers=1, mlp_width=8, embedded_bins=3)
    == 5 * 1392 - 2 * 7 * 24
  )


def test_poyo_flops_by_hand():
  # 1 window, 3 tokens, 2 queries, 2 latents, D=4, 1 latent layer, 1 head of 2, FFN x1.
  # attention(q, c): q*4*2 + 2*c*4*2 + 2*q*c*2 + q*2*4; ffn(rows): rows * (4*8 + 4*4).
  enc = (2 * 8 + 2 * 3 * 8 + 2 * 2 * 3 * 2 + 2 * 8) + 2 * 48
  proc = (2 * 8 + 2 * 2 * 8 + 2 * 2 * 2 * 2 + 2 * 8) + 2 * 48
  dec = (2 * 8 + 2 * 2 * 8 + 2 * 2 * 2 * 2 + 2 * 8) + 2 * 48
  assert flops.poyo_forward_flops(
    batch=1,
    tokens=3,
    queries=2,
    latents=2,
    dim=4,
    depth=1,
    cross_heads=1,
    self_heads=1,
    head_dim=2,
    n_outputs=2,
    ffn_mult=1,
  ) == 2 * (enc + proc + dec + 2 * 4 * 2)


def test_poyo_mtm_flops_parts():
  # Keys and values computed once per token row: only the encoder's k and v projections shrink.
  shape = dict(tokens=3, queries=2, latents=2, dim=4, depth=1, cross_heads=1, self_heads=1, head_dim=2, ffn_mult=1)
  each, shared = flops.perceiver_flops(batch=4, **shape), flops.perceiver_flops(batch=4, token_rows=1, **shape)
  assert each["encoder"] - shared["encoder"] == 2 * 3 * (2 * 3 * 4 * 2)
  assert (each["processor"], each["decoder"]) == (shared["processor"], shared["decoder"])
  assert sum(flops.perceiver_flops(batch=1, **shape).values()) + 2 * 2 * 4 * 2 == flops.poyo_forward_flops(
    batch=1, n_outputs=2, **shape
  )
