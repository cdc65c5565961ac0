"""A minimal PyTorch definition of the MtM authors' NDT1 (IBL_foundation_model, src/models/ndt1.py),
written from the facts of their code for parity tests. Runs in the parity environment
(Python 3.11 + torch), never in mtm_jax's.

Parameter names are theirs, so a state dict of their trained model loads into this one:
  encoder.stitcher.stitcher_dict.<N>.{weight,bias}      per neuron count N (stitching only)
  encoder.embedder.embed_spikes.{weight,bias}           Linear(n_in, mult * n_in)
  encoder.embedder.projection.{weight,bias}             Linear(mult * n_in, hidden)
  encoder.embedder.embed_pos.weight                     Embedding(max_F, hidden)
  encoder.embedder.embed_prompt.weight                  Embedding(4, hidden) (prompting)
  encoder.embedder.embed_session.weight                 Embedding(len(eids), hidden) (session token)
  encoder.layers.<i>.ln1 / ln2                          LayerNorm (eps 1e-5)
  encoder.layers.<i>.attn.{query,key,value,out_proj}    Linear(hidden, hidden)
  encoder.layers.<i>.mlp.{up_proj,down_proj}            Linear, exact GELU between
  encoder.out_norm                                      LayerNorm
  decoder.0                                             Linear(hidden, n_out) (unused with stitching)
  stitch_decoder.stitch_decoder_dict.<N>                Linear(hidden, N) (stitching)

Covered: the "linear" embedding mode with softsign and scale, position embedding, prompt
and session tokens prepended (session first), bidirectional or causal context (the
special tokens see every bin and every bin sees them), the self-mask, pre-LayerNorm
layers, T-Fixup initialisation, stitching keyed by neuron count. Not covered (unused by
the MtM configs): stacking, rotary positions, ScaleNorm, the "embed" mode, factors.

As their module does, this one reads the eid list `data/target_eids.txt` by a path relative
to the working directory when it is imported (their checkout root; the session table has
one row per eid there). parity/make_reference.py lays it out as their checkout does,
`<root>/src/models/ndt1.py` + `<root>/data/target_eids.txt`, so that its pickles name the
classes `models.ndt1.*` and unpickling them meets the same import-time read.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

MASK_TYPES = ("neuron", "causal", "inter-region", "intra-region")  # prompt row order

with open("data/target_eids.txt", encoding="utf-8") as file:  # relative, as in their models/ndt1.py
  include_eids = [line.rstrip() for line in file]


def context_mask(n_bins: int, causal: bool) -> torch.Tensor:
  """[T, T] int64: bin t sees bins <= t (causal) or all bins."""
  ones = torch.ones(n_bins, n_bins, dtype=torch.int64)
  return torch.tril(ones) if causal else ones


class Embedder(nn.Module):
  def __init__(
    self,
    n_in: int,
    hidden: int,
    *,
    mult: int,
    max_F: int,
    scale: float,
    dropout: float,
    use_prompt: bool,
    n_session_rows: int,
  ):
    super().__init__()
    self.embed_spikes = nn.Linear(n_in, n_in * mult)
    self.act = nn.Softsign()
    self.scale = scale
    self.projection = nn.Linear(n_in * mult, hidden)
    self.embed_pos = nn.Embedding(max_F, hidden)
    self.use_prompt, self.use_session = use_prompt, n_session_rows > 0
    if self.use_prompt:
      self.embed_prompt = nn.Embedding(len(MASK_TYPES), hidden)
    if self.use_session:
      self.embed_session = nn.Embedding(n_session_rows, hidden)
    self.dropout = nn.Dropout(dropout)

  def forward(self, spikes, timestamps, masking_mode: str, session_row: int):
    b = spikes.shape[0]
    x = self.act(self.embed_spikes(spikes)) * self.scale
    x = self.projection(x) + self.embed_pos(timestamps)
    if self.use_prompt:
      row = torch.tensor(MASK_TYPES.index(masking_mode))
      x = torch.cat((self.embed_prompt(row)[None, None].expand(b, -1, -1), x), dim=1)
    if self.use_session:
      row = torch.tensor(session_row)
      x = torch.cat((self.embed_session(row)[None, None].expand(b, -1, -1), x), dim=1)
    return self.dropout(x)


class Attention(nn.Module):
  def __init__(self, hidden: int, n_heads: int, dropout: float):
    super().__init__()
    self.n_heads, self.attn_dropout = n_heads, dropout
    self.query = nn.Linear(hidden, hidden)
    self.key = nn.Linear(hidden, hidden)
    self.value = nn.Linear(hidden, hidden)
    self.dropout = nn.Dropout(dropout)
    self.out_proj = nn.Linear(hidden, hidden)

  def forward(self, x, attn_mask):
    b, t, d = x.shape
    heads = lambda y: y.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)
    mask = attn_mask.unsqueeze(1).expand(b, self.n_heads, t, t).bool()
    out = F.scaled_dot_product_attention(
      heads(self.query(x)),
      heads(self.key(x)),
      heads(self.value(x)),
      attn_mask=mask,
      dropout_p=self.attn_dropout if self.training else 0.0,
    )
    return self.out_proj(self.dropout(out.transpose(1, 2).reshape(b, t, d)))


class MLP(nn.Module):
  def __init__(self, hidden: int, inter: int, dropout: float):
    super().__init__()
    self.up_proj = nn.Linear(hidden, inter)
    self.down_proj = nn.Linear(inter, hidden)
    self.dropout = nn.Dropout(dropout)

  def forward(self, x):
    return self.dropout(self.down_proj(F.gelu(self.up_proj(x))))


class EncoderLayer(nn.Module):
  def __init__(self, hidden: int, n_heads: int, inter: int, dropout: float, n_layers: int, fixup_init: bool):
    super().__init__()
    self.ln1 = nn.LayerNorm(hidden)
    self.attn = Attention(hidden, n_heads, dropout)
    self.ln2 = nn.LayerNorm(hidden)
    self.mlp = MLP(hidden, inter, dropout)
    if fixup_init:  # T-Fixup: scale the output projections, and the value projection by sqrt(2) more
      factor = 0.67 * n_layers**-0.25
      with torch.no_grad():
        for name, param in self.named_parameters():
          if name.endswith("_proj.weight"):
            param.mul_(factor)
          elif name.endswith("value.weight"):
            param.mul_(factor * 2**0.5)

  def forward(self, x, attn_mask):
    x = x + self.attn(self.ln1(x), attn_mask)
    return x + self.mlp(self.ln2(x))


class Encoder(nn.Module):
  def __init__(
    self,
    num_neurons,
    *,
    hidden,
    n_layers,
    n_heads,
    inter,
    stitch_channels,
    mult,
    max_F,
    scale,
    embed_dropout,
    dropout,
    use_prompt,
    n_session_rows,
    fixup_init,
  ):
    super().__init__()
    if stitch_channels:
      self.stitcher = nn.Module()
      self.stitcher.stitcher_dict = nn.ModuleDict({str(n): nn.Linear(n, stitch_channels) for n in num_neurons})
    n_in = stitch_channels or num_neurons[0]
    self.embedder = Embedder(
      n_in,
      hidden,
      mult=mult,
      max_F=max_F,
      scale=scale,
      dropout=embed_dropout,
      use_prompt=use_prompt,
      n_session_rows=n_session_rows,
    )
    self.layers = nn.ModuleList(
      [EncoderLayer(hidden, n_heads, inter, dropout, n_layers, fixup_init) for _ in range(n_layers)]
    )
    self.out_norm = nn.LayerNorm(hidden)
    self.n_special = int(use_prompt) + int(n_session_rows > 0)

  def forward(self, spikes, masking_mode: str, session_row: int):
    b, t, n = spikes.shape
    if hasattr(self, "stitcher"):
      spikes = self.stitcher.stitcher_dict[str(n)](spikes)
    timestamps = torch.arange(t)[None].expand(b, t)
    x = self.embedder(spikes, timestamps, masking_mode, session_row)
    s = self.n_special
    ctx = context_mask(t, masking_mode == "causal")
    if s:  # special tokens: seen by every token, and see every token
      ctx = torch.cat((torch.ones(t, s, dtype=torch.int64), ctx), dim=1)
      ctx = torch.cat((torch.ones(s, s + t, dtype=torch.int64), ctx), dim=0)
    length = s + t
    time_mask = torch.ones(b, length, dtype=torch.int64)  # no padded bins
    attn_mask = torch.eye(length, dtype=torch.int64)[None] | (ctx[None] & time_mask[:, None, :])
    for layer in self.layers:
      x = layer(x, attn_mask)
    return self.out_norm(x)


class NDT1(nn.Module):
  """forward(spikes [B, T, N_s], masking_mode, session_row) -> log-rates [B, T, N_s]."""

  def __init__(
    self,
    num_neurons,
    *,
    hidden=512,
    n_layers=5,
    n_heads=8,
    inter=1024,
    stitch_channels=0,
    mult=2,
    max_F=100,
    scale=1.0,
    embed_dropout=0.2,
    dropout=0.4,
    use_prompt=True,
    n_session_rows=0,
    fixup_init=True,
  ):
    super().__init__()
    num_neurons = list(num_neurons)
    self.encoder = Encoder(
      num_neurons,
      hidden=hidden,
      n_layers=n_layers,
      n_heads=n_heads,
      inter=inter,
      stitch_channels=stitch_channels,
      mult=mult,
      max_F=max_F,
      scale=scale,
      embed_dropout=embed_dropout,
      dropout=dropout,
      use_prompt=use_prompt,
      n_session_rows=n_session_rows,
      fixup_init=fixup_init,
    )
    self.decoder = nn.Sequential(nn.Linear(hidden, stitch_channels or num_neurons[0]))
    if stitch_channels:
      self.stitch_decoder = nn.Module()
      self.stitch_decoder.stitch_decoder_dict = nn.ModuleDict({str(n): nn.Linear(hidden, n) for n in num_neurons})

  def forward(self, spikes, masking_mode: str = "neuron", session_row: int = 0):
    t = spikes.shape[1]
    x = self.encoder(spikes, masking_mode, session_row)[:, -t:]
    if hasattr(self, "stitch_decoder"):
      return self.stitch_decoder.stitch_decoder_dict[str(spikes.shape[2])](x)
    return self.decoder(x)
