"""Every documented command runs: the `python -m experiments.* | data_builders.* |
benchmarks.*` commands of README.md (fenced blocks and inline code) and of the docstrings
of mtm_jax/configs/*.py, experiments/*.py and data_builders/build.py use only flags their program defines (read
from its absl FLAGS without running it: tests/program_flags.py), their flag files exist
(and are checked the same way), every --config=path:preset names a file and a preset its
get_config accepts, and every --config.a.b override a field of that config; README's
first chain (build, pretrain, evaluate) runs with tiny settings appended."""

import ast
import glob
import importlib
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMAND = re.compile(r"python -m ((?:experiments|data_builders|benchmarks)\.\w+)(.*)")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`]*python -m [^`]*)`")
TINY = [  # appended to a documented pretrain command to run it here
  "--config.train.steps=2",
  "--config.train.log_every=1",
  "--config.train.eval_every=2",
  "--config.train.checkpoint_every=2",
  "--config.eval.head_steps=0",
  "--config.mesh.data=1",
]


def _read(path: str) -> str:
  with open(os.path.join(ROOT, path), encoding="utf-8") as f:
    return f.read()


def documented_texts() -> list[tuple[str, str]]:
  """(where, text): README's fenced blocks and inline code spans, and the module docstrings."""
  readme = _read("README.md")
  out = [("README.md", block) for block in FENCE.findall(readme)]
  out += [("README.md", " ".join(span.split())) for span in INLINE.findall(FENCE.sub("", readme))]
  for path in sorted(
    glob.glob("mtm_jax/configs/*.py", root_dir=ROOT)
    + glob.glob("experiments/*.py", root_dir=ROOT)
    + ["data_builders/build.py"]
  ):
    doc = ast.get_docstring(ast.parse(_read(path)))
    if doc:
      out.append((path, doc))
  return out


def commands(text: str) -> list[tuple[str, list[str]]]:
  """(program, flags) of each command in `text`: its `--` arguments up to the first word
  that is not one (a trailing remark); `...` (elided arguments) is passed over."""
  out = []
  for line in text.replace("\\\n", " ").splitlines():
    match = COMMAND.search(line)
    if not match:
      continue
    rest = re.split(r"\s#", match.group(2))[0]
    args = []
    for word in shlex.split(rest.replace("'", "")):
      if word == "...":
        continue
      if not word.startswith("-"):
        break
      args.append(word)
    out.append((match.group(1), args))
  return out


def documented_commands() -> list[tuple[str, str, list[str]]]:
  return [(where, program, args) for where, text in documented_texts() for program, args in commands(text)]


@pytest.fixture(scope="module")
def program_flags():
  """{program: {"flags", "bool", "config"}} of every documented program (one process)."""
  programs = sorted({p for _, p, _ in documented_commands()})
  env = dict(os.environ, MTM_JAX_HUGE_PAGES="0")
  result = subprocess.run(
    [sys.executable, "-m", "tests.program_flags", *programs], cwd=ROOT, capture_output=True, text=True, env=env
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.splitlines()[-1])


def _expanded(args: list[str], problems: list[str]) -> list[str]:
  """args with each --flagfile's lines in its place (the file must exist)."""
  out = []
  for arg in args:
    if arg.startswith("--flagfile="):
      path = arg.split("=", 1)[1]
      if not os.path.isfile(os.path.join(ROOT, path)):
        problems.append(f"{arg}: no such file")
        continue
      lines = [line.strip() for line in _read(path).splitlines()]
      out += _expanded([line for line in lines if line and not line.startswith("#")], problems)
    else:
      out.append(arg)
  return out


def _config(value: str, problems: list[str]):
  """The ConfigDict of --config=path:preset, or None (a problem, or a placeholder)."""
  path, _, preset = value.partition(":")
  if "<" in value:
    return None
  if not os.path.isfile(os.path.join(ROOT, path)):
    problems.append(f"--config={value}: no file {path}")
    return None
  module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
  try:
    return module.get_config(preset) if preset else module.get_config()
  except ValueError as e:
    problems.append(f"--config={value}: {e}")
    return None


def check_command(program: str, args: list[str], known: dict) -> list[str]:
  """The problems of one documented command: unknown flags, missing files, presets, fields."""
  if program not in known:
    return [f"no program {program}"]
  problems = []
  args = _expanded(args, problems)
  config = None
  for arg in args:
    name, _, value = arg.lstrip("-").partition("=")
    if name in known[program]["config"]:
      config = _config(value, problems)
  for arg in args:
    name, _, value = arg.lstrip("-").partition("=")
    base, _, field = name.partition(".")
    if field:
      if base not in known[program]["config"]:
        problems.append(f"--{name}: {program} has no config flag --{base}")
      elif config is not None:
        node = config
        for part in field.split("."):
          if part not in node:
            problems.append(f"--{name}: no field {part!r} in that config")
            break
          node = node[part]
    elif name not in known[program]["flags"] and not (name.startswith("no") and name[2:] in known[program]["bool"]):
      problems.append(f"--{name}: not a flag of {program}")
    elif name in known[program]["alias"]:
      problems.append(f"--{name}: an earlier name of --{known[program]['alias'][name]}, use that")
  return problems


def test_commands_are_found_in_the_readme_and_the_docstrings():
  found = documented_commands()
  where = {w for w, _, _ in found}
  assert {"README.md", "mtm_jax/configs/poyo_mtm.py", "experiments/pretrain.py"} <= where
  assert {"experiments.pretrain", "experiments.finetune", "experiments.evaluate", "data_builders.build"} <= {
    p for _, p, _ in found
  }
  assert ("experiments.finetune", ["--mode=unit_id", "--pretrained=runs/x", "--datasets=a", "--workdir=w"]) in commands(
    "  python -m experiments.finetune --mode=unit_id \\\n      --pretrained=runs/x --datasets=a --workdir=w   (remark)"
  )


def test_every_documented_flag_file_and_preset_exists(program_flags):
  problems = [
    f"{where}: python -m {program} {' '.join(args)}\n    {problem}"
    for where, program, args in documented_commands()
    for problem in check_command(program, args, program_flags)
  ]
  assert not problems, "\n".join(problems)


def test_the_checks_catch_a_flag_a_program_lacks(program_flags):
  assert check_command(
    "experiments.finetune", ["--sesions=a", "--config=mtm_jax/configs/poyo_mtm.py:tiny"], program_flags
  )
  assert check_command("experiments.pretrain", ["--config=mtm_jax/configs/poyo_mtm.py:huge"], program_flags)
  assert check_command(
    "experiments.pretrain", ["--config=mtm_jax/configs/ndt1.py:demo", "--config.data.dataset=x"], program_flags
  )
  assert not check_command("experiments.evaluate", ["--workdir=w", "--nodecoding"], program_flags)


def test_the_readme_lists_every_config_file():
  row = next(line for line in _read("README.md").splitlines() if line.startswith("| `mtm_jax/configs/` |"))
  for path in glob.glob("mtm_jax/configs/*.py", root_dir=ROOT):
    name = os.path.basename(path)
    if name != "__init__.py":
      assert f"`{name}`" in row, f"README's config list lacks {name}"


def _run(program: str, args: list[str]) -> str:
  env = dict(os.environ, MTM_JAX_HUGE_PAGES="0")
  result = subprocess.run(
    [sys.executable, "-m", program, *args],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    timeout=600,
    env=env,
  )
  assert result.returncode == 0, f"python -m {program} {' '.join(args)}\n{result.stdout[-3000:]}"
  return result.stdout


def test_the_documented_build_runs(data_dir):
  """README's first command (the data set the test session has built already: a check of its flags, quick)."""
  block = FENCE.findall(_read("README.md").split("## Using it", 1)[1])[0]
  program, args = commands(block)[0]
  assert program == "data_builders.build"
  _run(program, [f"--data_dir={data_dir}" if a.startswith("--data_dir=") else a for a in args])


@pytest.mark.slow  # 2-5 min on 2 cores: scoring the demo model on the test split dominates
def test_the_readme_first_chain_runs(data_dir, tmp_path):
  """README's "Using it" block (build, pretrain, evaluate), as documented with the test's
  data and work folders and TINY appended to the pretraining."""
  block = FENCE.findall(_read("README.md").split("## Using it", 1)[1])[0]
  chain = commands(block)
  assert [p for p, _ in chain] == ["data_builders.build", "experiments.pretrain", "experiments.evaluate"]
  for program, args in chain:
    args = [
      f"--data_dir={data_dir}"
      if a.startswith("--data_dir=")
      else f"--workdir={tmp_path / a.split('=', 1)[1]}"
      if a.startswith("--workdir=")
      else a
      for a in args
    ]
    if program == "experiments.pretrain":
      args += [f"--config.data.data_dir={data_dir}", *TINY]
    out = _run(program, args)
  assert "co_smoothing" in out


def _sizing() -> dict[tuple[str, str], str]:
  """{(config file, preset): what README's sizing table says it is sized for}."""
  out = {}
  for line in _read("README.md").splitlines():
    cells = [c.strip() for c in line.strip("|").split("|")]
    if len(cells) == 4 and re.fullmatch(r"`\w+\.py`", cells[0]):
      presets = re.findall(r"`(\w+)`", cells[1])
      sized = [s.strip() for s in cells[2].split("/")]
      for preset, size in zip(presets, sized * len(presets) if len(sized) == 1 else sized):
        out[(cells[0].strip("`"), preset)] = size
  return out


def test_the_readme_says_what_every_preset_is_sized_for_and_starts_with_a_cpu_one():
  row = next(line for line in _read("README.md").splitlines() if line.startswith("| `mtm_jax/configs/` |"))
  listed = {
    (name, preset.strip())
    for name, presets in re.findall(r"`(\w+\.py)` \(`([^`]*)`\)", row)
    for preset in re.sub(r"\[[^\]]*\]", "", presets).split("\\|")
  }
  sizing = _sizing()
  assert listed and listed <= set(sizing), sorted(listed - set(sizing))
  block = FENCE.findall(_read("README.md").split("## Using it", 1)[1])[0]
  config = next(
    a for p, args in commands(block) if p == "experiments.pretrain" for a in args if a.startswith("--config=")
  )
  path, _, preset = config.removeprefix("--config=").partition(":")
  assert "GPU" not in sizing[(os.path.basename(path), preset.split(",")[0])], config
