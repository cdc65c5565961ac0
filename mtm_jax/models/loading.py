"""Merging pretrained parameters into a fresh model's (the models' `load`, big_vision-like)."""

from __future__ import annotations

from collections.abc import Callable

import jax

from mtm_jax.parallel import sharding


def merge(init_params, pretrained_params, *, where: str, keep_fresh: Callable[[str], bool] = lambda name: False):
  """`init_params` with every parameter taken from `pretrained_params` except those whose
  name ('layers/0/attn/query/kernel', `sharding.path_name`) `keep_fresh` selects.

  Both are parameter trees (nnx.State or pure dicts); the result has the structure of
  `init_params`. Raises ValueError, prefixed by `where`, naming the parameter when the
  pretrained one is missing or has another shape (a different architecture)."""
  source = {sharding.path_name(p): v for p, v in jax.tree_util.tree_flatten_with_path(pretrained_params)[0]}

  def take(path, fresh):
    name = sharding.path_name(path)
    if keep_fresh(name):
      return fresh
    if name not in source:
      raise ValueError(f"{where}: has no parameter {name!r}; its architecture differs (compare config.model)")
    if source[name].shape != fresh.shape:
      raise ValueError(
        f"{where}: parameter {name!r} has shape {source[name].shape}, this model needs "
        f"{fresh.shape}; its architecture differs (compare config.model)"
      )
    return source[name]

  return jax.tree_util.tree_map_with_path(take, init_params)
