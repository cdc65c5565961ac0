"""The packages' layering (docs/architecture.md): lower layers never import higher ones.

mtm_jax/training/ (trainer, step, optimiser, checkpoints, config checks) knows no model family: it imports
neither mtm_jax.models nor mtm_jax.tasks (a family's checks, optimiser recipe and row tables live in its task);
mtm_jax/evaluation/ imports neither training nor tasks. Imports are read with ast, at any depth (function-level
imports too), relative ones resolved against the module's package.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
RULES = {  # package folder -> the packages its modules must not import
  "mtm_jax/training": ("mtm_jax.models", "mtm_jax.tasks"),
  "mtm_jax/evaluation": ("mtm_jax.training", "mtm_jax.tasks"),
}


def imported(source: str, package: str) -> list[str]:
  """Every module or module attribute `source` (a module of `package`, e.g. "mtm_jax.training")
  imports, absolute: "mtm_jax.models.ndt1" for `from mtm_jax.models import ndt1`, "mtm_jax.tasks"
  for `from .. import tasks`."""
  out = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      out += [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      parts = package.split(".")
      base = ".".join(parts[: len(parts) - node.level + 1] if node.level else [])
      module = ".".join(p for p in (base, node.module or "") if p)
      out += [module] + [f"{module}.{alias.name}" for alias in node.names]
  return out


def forbidden(source: str, package: str, banned: tuple[str, ...]) -> list[str]:
  """The imports of `source` that are, or are inside, a package of `banned`."""
  return sorted({m for m in imported(source, package) for b in banned if m == b or m.startswith(b + ".")})


@pytest.mark.parametrize("folder", sorted(RULES))
def test_lower_layers_import_no_higher_ones(folder):
  files = sorted((ROOT / folder).glob("*.py"))
  assert files, f"{folder}: no modules found"
  package = folder.replace("/", ".")
  bad = {
    str(f.relative_to(ROOT)): found
    for f in files
    if (found := forbidden(f.read_text(encoding="utf-8"), package, RULES[folder]))
  }
  assert not bad, f"{folder} must not import {RULES[folder]}: {bad}"


def test_every_form_of_import_is_caught():
  banned = RULES["mtm_jax/training"]
  package = "mtm_jax.training"
  for source in (
    "from mtm_jax.models import ndt1",
    "import mtm_jax.tasks.base as base",
    "from mtm_jax import tasks",
    "from mtm_jax.tasks.base import Pretrained",
    "from ..models import poyo",
    "from .. import tasks",
    "def f():\n  from mtm_jax.models import poyo_mtm\n  return poyo_mtm",
  ):
    assert forbidden(source, package, banned), source
  for source in ("from mtm_jax.training import rows", "from . import checkpoint", "import mtm_jax.modelsx"):
    assert not forbidden(source, package, banned), source
