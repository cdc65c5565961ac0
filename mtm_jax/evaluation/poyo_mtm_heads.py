"""POYO's supervised readout, fine-tuned on top of a (pre)trained spike-token MtM.

The readout is POYO's decoder: one output query per 20 ms bin of the trial (a learned
query embedding plus the session's embedding, rotary time at the bin centre),
cross-attention over the model's latents of the unmasked trial (given the decoding
prompt), then Linear(D, 1). Whisker motion energy and wheel speed are read per bin;
choice is the mean of the per-bin outputs (a logit). Readout and model are fine-tuned
together on the training trials (heads.Fit: AdamW, the loss and standardisation of
NDT1's heads), then scored on the held-out trials with the same numbers as NDT1's heads
(`head_<metric>`: choice accuracy, R^2 pooled over trial x bin).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtm_jax import masking, progress
from mtm_jax.datasets.events import trials as trials_lib
from mtm_jax.evaluation import decoding, heads
from mtm_jax.models import rotary, spike_perceiver


class BehaviourReadout(nnx.Module):
  """POYO's output decoder for one behaviour: [B, N_lat, D] latents -> [B, T] (per bin) or [B]."""

  def __init__(self, hparams, per_bin: bool, *, rngs: nnx.Rngs):
    hp = hparams
    self.query = nnx.Param(nnx.initializers.normal(hp.emb_init_scale)(rngs.params(), (hp.dim,)))
    self.decoder = spike_perceiver.cross_attention(hp, rotate_value=False, rngs=rngs)
    self.linear = nnx.Linear(hp.dim, 1, rngs=rngs)
    self.per_bin = per_bin

  def __call__(self, latents, session_emb, query_angles, latent_angles, *, key=None):
    """latents [B, M, D], session_emb [B, D], query_angles [1, T, F], latent_angles [1, M, F]."""
    b, t = latents.shape[0], query_angles.shape[1]
    queries = jnp.broadcast_to((self.query[...] + session_emb)[:, None], (b, t, latents.shape[-1]))
    out = self.linear(self.decoder(queries, latents, query_angles, latent_angles, key=key))[..., 0]
    return out if self.per_bin else jnp.mean(out, axis=1)


def unmasked(batch: dict) -> dict:
  """The model's token inputs of a collated batch (every real token kept)."""
  return {k: batch[k] for k in ("unit_index", "timestamps", "token_type", "input_mask", "session_index")}


def finetune_head(
  graphdef,
  params,
  train: trials_lib.TrialData,
  test: trials_lib.TrialData,
  position: int,
  fit: heads.Fit,
  y_test: np.ndarray,
  *,
  prompt: str,
  seed: int = 0,
) -> float:
  """Fine-tunes the model (graphdef, params: not changed) with a fresh BehaviourReadout on
  the trials of session `position` in `train` (fit: its targets, [K] choices in {0, 1} or
  [K, T] traces at the bin centres, and steps), returns its score on that session's
  trials in `test` (y_test). Each split's trials of the session are collated once, padded
  to its largest trial, and batches are rows of them; seed: the readout's initialisation."""
  model = nnx.merge(graphdef, jax.tree.map(jnp.asarray, jax.device_get(params)))
  readout = BehaviourReadout(model.hparams, fit.per_bin, rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split((model, readout), nnx.Param)
  scheme = masking.scheme_index(prompt)
  n_bins = train.config.n_bins
  centres = ((np.arange(n_bins) + 0.5) * train.config.bin_size).astype(np.float32)

  def predict(params, batch, key):
    m, r = nnx.merge(graphdef, params)
    k_enc, k_dec = (None, None) if key is None else tuple(jax.random.split(key))
    latents = m.encode(batch, jnp.full(batch["session_index"].shape, scheme), key=k_enc)
    angles = rotary.rotary_angles(jnp.asarray(centres)[None], m.frequencies())
    return r(latents, m.session_emb(batch["session_index"]), angles, m.latent_angles(), key=k_dec)

  def collated(data, pad_to: int) -> dict:
    """The session's trials of `data` once, on device, padded with empty rows to a multiple of pad_to."""
    ks = [int(k) for k in data.session_trials(position)]
    rows = ks + [-1] * (-len(ks) % pad_to)
    batch = trials_lib.collate(data, rows, int(data.token_counts()[ks].max()))
    return {k: jnp.asarray(v) for k, v in unmasked(batch).items()}

  chunk = fit.batch_size
  x_train, x_test = collated(train, 1), collated(test, chunk)
  params = fit.train(predict, params, lambda idx: {k: v[idx] for k, v in x_train.items()})
  predict_test = jax.jit(predict)  # one compiled shape: every chunk has `chunk` rows
  n_test = len(y_test)
  out = [
    np.asarray(predict_test(params, {k: v[i : i + chunk] for k, v in x_test.items()}, None))
    for i in range(0, n_test, chunk)
  ]
  out = np.concatenate(out)[:n_test]
  return fit.score(out, y_test)


def head_metrics(
  graphdef,
  params,
  train: trials_lib.TrialData,
  test: trials_lib.TrialData,
  position: int,
  targets,
  *,
  prompt: str,
  steps: int = 300,
  seed: int = 0,
) -> decoding.Decoded:
  """Decoded({"head_<metric>": score}, {}, {"head_<metric>": reason}) of session
  `position` of the splits train and test (targets: the (train, test) pair of its
  evaluation.poyo_mtm.trial_behaviour), one readout per target fine-tuned for `steps` steps
  (heads.Fit at heads.LEARNING_RATE and BATCH_SIZE)."""
  scores, skipped = {}, {}
  y_train_all, y_test_all = targets
  for target, metric in heads.TARGETS.items():
    name = f"head_{metric}"
    if target not in y_train_all or target not in y_test_all:
      skipped[name] = f"the session has no {target}"
      continue
    y_train, y_test = heads.target_values(y_train_all, target), heads.target_values(y_test_all, target)
    try:
      heads.check_scorable(target, y_train, y_test, train_split=train.split, eval_split=test.split)
    except decoding.Undecodable as e:
      skipped[name] = str(e)
      continue
    fit = heads.Fit(y_train, steps, heads.LEARNING_RATE, heads.BATCH_SIZE, seed)
    with progress.Stage(f"head {metric}") as stage:
      scores[name] = finetune_head(graphdef, params, train, test, position, fit, y_test, prompt=prompt, seed=seed)
      stage.note = f"{scores[name]:.4f} ({steps} steps)"
  return decoding.Decoded(scores, {}, skipped)
