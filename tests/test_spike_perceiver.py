"""The spike-token models' shared parts (models/spike_perceiver.py, models/unit_tables.py):
POYO's and spike-token MtM's parameter paths and shapes stay those their checkpoints (and
the torch_brain converter) were written with, and the tables grow the same for both."""

import jax
import numpy as np
import pytest
from flax import nnx

from mtm_jax.configs import poyo as poyo_config, poyo_mtm as poyo_mtm_config
from mtm_jax.models import poyo, poyo_mtm, spike_perceiver, unit_tables

N_UNITS, N_SESSIONS = 7, 3

# nnx.state paths and shapes of each config's "tiny" model with 7 units and 3 sessions,
# recorded before the shared parts moved out of models/poyo.py and models/poyo_mtm.py.
# W: the attention width, heads * head_dim, of a block.
ATTENTION_FFN = """
attn/key/kernel 32,W
attn/out/bias 32
attn/out/kernel W,32
attn/query/kernel 32,W
attn/value/kernel 32,W
ffn/down/bias 32
ffn/down/kernel 128,32
ffn/up/bias 256
ffn/up/kernel 32,256
norm_ffn/bias 32
norm_ffn/scale 32
"""
CROSS_NORMS = "norm_context/bias 32, norm_context/scale 32, norm_query/bias 32, norm_query/scale 32"
SELF_NORMS = "norm_attn/bias 32, norm_attn/scale 32"
TABLES = "latent_emb/embedding 2,32, session_emb/embedding 4,32, token_type_emb/embedding 4,32, unit_emb/embedding 8,32"
POYO_OWN = "readout/hand_velocity/bias 2, readout/hand_velocity/kernel 32,2"
POYO_MTM_OWN = "prompt_emb/embedding 5,32, query_emb 32, readout/bias 1, readout/kernel 32,1, unit_readout/kernel 32,32"


def _entries(text: str, prefix: str = "", width: int = 0) -> dict[str, tuple[int, ...]]:
  """{prefix + path: shape} of "path d0,d1" entries (lines or ", "-separated), W = width."""
  rows = (entry.split() for entry in text.replace(", ", "\n").strip().splitlines())
  return {prefix + path: tuple(int(n) for n in shape.replace("W", str(width)).split(",")) for path, shape in rows}


def _expected(own: str, cross_width: int, self_width: int) -> dict[str, tuple[int, ...]]:
  """A tiny model's entries: its own, the tables, encoder and decoder, one self-attention block."""
  blocks = {}
  for prefix, norms, width in (
    ("encoder/", CROSS_NORMS, cross_width),
    ("decoder/", CROSS_NORMS, cross_width),
    ("processor/0/", SELF_NORMS, self_width),
  ):
    blocks |= _entries(ATTENTION_FFN, prefix, width) | _entries(norms, prefix)
  return _entries(own) | _entries(TABLES) | blocks


def _paths(model) -> dict[str, tuple[int, ...]]:
  """{"a/b/c": shape} of every entry of nnx.state(model)."""
  flat = nnx.to_flat_state(nnx.state(model))
  return {"/".join(map(str, path)): tuple(v.get_value().shape) for path, v in flat}


@pytest.mark.parametrize(
  "family,config,expected",
  [(poyo, poyo_config, (POYO_OWN, 64, 128)), (poyo_mtm, poyo_mtm_config, (POYO_MTM_OWN, 16, 32))],
  ids=["poyo", "poyo_mtm"],
)
def test_tiny_parameter_paths_and_shapes_are_unchanged(family, config, expected):
  model = nnx.eval_shape(lambda: family.from_config(config.get_config("tiny"), N_UNITS, N_SESSIONS, rngs=nnx.Rngs(0)))
  assert _paths(model) == _expected(*expected)


def test_poyo_task_table_is_the_only_addition_of_several_tasks():
  hp = poyo.Hparams.from_config(poyo_config.get_config("tiny").model)
  two = nnx.eval_shape(lambda: poyo.POYO(N_UNITS, N_SESSIONS, hp, tasks={"a": 2, "b": 3}, rngs=nnx.Rngs(0)))
  one = {k: v for k, v in _expected(POYO_OWN, 64, 128).items() if not k.startswith("readout/")}
  readouts = {"readout/a/bias": (2,), "readout/a/kernel": (32, 2), "readout/b/bias": (3,), "readout/b/kernel": (32, 3)}
  assert _paths(two) == {**one, **readouts, "task_emb/embedding": (2, 32)}


def test_both_models_draw_their_shared_tables_alike():
  """Same seed, same sizes: the unit, session, token-type and latent tables (drawn first,
  in that order) are equal in both models; row 0 of the unit and session tables is zero."""
  mtm_hp = poyo_mtm.Hparams.from_config(poyo_mtm_config.get_config("tiny").model)
  poyo_hp = poyo.Hparams.from_config(poyo_config.get_config("tiny").model)
  a = poyo.POYO(N_UNITS, N_SESSIONS, poyo_hp, rngs=nnx.Rngs(3))
  b = poyo_mtm.PoyoMtM(N_UNITS, N_SESSIONS, mtm_hp, rngs=nnx.Rngs(3))
  for name in ("unit_emb", "session_emb", "token_type_emb", "latent_emb"):
    np.testing.assert_array_equal(getattr(a, name).embedding[...], getattr(b, name).embedding[...], err_msg=name)
  assert not np.any(a.unit_emb.embedding[...][0]) and not np.any(b.session_emb.embedding[...][0])


def test_latent_timestamps_are_step_centres():
  times = spike_perceiver.latent_timestamps(1.0, 0.25, 2, offset=1.0)
  np.testing.assert_array_equal(times, np.float32([1.125, 1.125, 1.375, 1.375, 1.625, 1.625, 1.875, 1.875]))
  assert spike_perceiver.n_latent_steps(1.0, 0.3) == 4 and spike_perceiver.n_latent_steps(0.9, 0.3) == 3


def test_grow_keeps_a_poyo_mtm_and_its_old_rows():
  hp = poyo_mtm.Hparams.from_config(poyo_mtm_config.get_config("tiny").model)
  model = poyo_mtm.PoyoMtM(N_UNITS, N_SESSIONS, hp, rngs=nnx.Rngs(0))
  grown = unit_tables.grow(model, 2, 1, jax.random.key(1), init_scale=0.02, where="test")
  assert isinstance(grown, poyo_mtm.PoyoMtM) and (grown.n_units, grown.n_sessions) == (N_UNITS + 2, N_SESSIONS + 1)
  old, new = nnx.to_pure_dict(nnx.state(model)), nnx.to_pure_dict(nnx.state(grown))
  np.testing.assert_array_equal(new["unit_emb"]["embedding"][: N_UNITS + 1], old["unit_emb"]["embedding"])
  assert new["session_emb"]["embedding"].shape == (N_SESSIONS + 2, 32)
  np.testing.assert_array_equal(new["query_emb"], old["query_emb"])
  assert unit_tables.count_params(grown) - unit_tables.count_params(model) == 3 * 32
  assert unit_tables.count_params(grown, embeddings=False) == unit_tables.count_params(model, embeddings=False)
  with pytest.raises(ValueError, match="test: n_new_units and n_new_sessions must be >= 0"):
    unit_tables.grow(model, -1, 0, jax.random.key(1), init_scale=0.02, where="test")
