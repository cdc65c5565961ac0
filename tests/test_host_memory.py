"""The programs' re-run with glibc's huge-page tunable (mtm_jax/training/host_memory.py)."""

import os
import re
import subprocess
import sys
import textwrap

import pytest

from mtm_jax.training import host_memory

GLIBC = (2, 36)


def test_environment_adds_the_tunable_once():
  env = host_memory.huge_page_environment({"PATH": "/bin"}, "madvise", GLIBC)
  assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1", host_memory.RERUN_MARK: str(os.getpid())}
  assert host_memory.huge_page_environment(env, "madvise", GLIBC) is None  # a re-run does not re-run


def test_environment_keeps_other_tunables_and_a_users_choice():
  env = host_memory.huge_page_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "madvise", GLIBC)
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
  # The user's own value wins, whatever it is.
  assert host_memory.huge_page_environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise", GLIBC) is None


@pytest.mark.parametrize(
  "environ, mode, glibc",
  [
    ({host_memory.OPT_OUT: "0"}, "madvise", GLIBC),  # opted out
    ({}, "always", GLIBC),  # every mapping gets huge pages already
    ({}, "never", GLIBC),  # advice would be ignored
    ({}, None, GLIBC),  # no THP (not Linux)
    ({}, "madvise", None),  # not glibc
    ({}, "madvise", (2, 34)),  # glibc without the tunable
  ],
)
def test_environment_is_none_when_a_rerun_changes_nothing(environ, mode, glibc):
  assert host_memory.huge_page_environment(environ, mode, glibc) is None


def test_no_rerun_with_an_accelerator():
  assert host_memory.huge_page_environment({}, "madvise", GLIBC, on_cpu=False) is None
  gpu = lambda path: path == "/dev/nvidiactl"  # noqa: E731
  assert not host_memory.runs_on_cpu({}, exists=gpu)
  assert host_memory.runs_on_cpu({"JAX_PLATFORMS": "cpu"}, exists=gpu)  # the user asked for the CPU
  assert not host_memory.runs_on_cpu({"JAX_PLATFORMS": "cuda,cpu"}, exists=lambda path: False)
  assert host_memory.runs_on_cpu({}, exists=lambda path: False)


@pytest.mark.parametrize(
  "argv, started",
  [
    (["python", "-m", "experiments.pretrain", "--workdir=w"], True),
    (["python", "-u", "-X", "importtime", "-m", "experiments.demo"], True),
    (["python", "-mexperiments.evaluate"], True),
    (["python", "-m", "pytest", "tests"], False),
    (["python", "-m", "experimentsx.pretrain"], False),
    (["python", "experiments/pretrain.py"], False),
    (["python", "-c", "import experiments", "-m", "experiments.pretrain"], False),
    (["python"], False),
  ],
)
def test_started_as_module_of_a_package(argv, started):
  assert host_memory.started_as_module(argv, "experiments") == started


@pytest.mark.skipif(
  host_memory.huge_page_environment(
    {}, host_memory.thp_mode(), host_memory.glibc_version(), host_memory.runs_on_cpu(os.environ)
  )
  is None,
  reason="no re-run on this machine (THP mode, glibc or an accelerator)",
)
def test_a_program_started_with_dash_m_reruns_before_its_imports():
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", host_memory.OPT_OUT)}
  out = subprocess.run(
    [sys.executable, "-X", "importtime", "-m", "experiments.evaluate", "--helpshort"],
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert "--workdir" in out.stdout, out.stderr[-2000:]  # absl's help (its exit status is 1)
  jax_imports = [line for line in out.stderr.splitlines() if re.search(r"\|\s+jax$", line.rstrip())]
  # Re-run when the experiments package was imported: JAX is imported once, by the re-run.
  assert len(jax_imports) == 1, out.stderr[-2000:]


def test_thp_mode_reads_the_bracketed_word(tmp_path):
  path = tmp_path / "enabled"
  path.write_text("always [madvise] never\n")
  assert host_memory.thp_mode(str(path)) == "madvise"
  path.write_text("[always] madvise never\n")
  assert host_memory.thp_mode(str(path)) == "always"
  path.write_text("garbage\n")
  assert host_memory.thp_mode(str(path)) is None
  assert host_memory.thp_mode(str(tmp_path / "missing")) is None


@pytest.mark.skipif((host_memory.glibc_version() or (0, 0)) < host_memory.MIN_GLIBC, reason="needs glibc >= 2.35")
@pytest.mark.parametrize("opt_out", [False, True])
def test_program_reruns_itself_once_with_the_same_arguments(tmp_path, opt_out):
  mode_file = tmp_path / "enabled"
  mode_file.write_text("always [madvise] never\n")
  script = tmp_path / "program.py"
  script.write_text(
    textwrap.dedent(f"""
      import os, sys
      from mtm_jax.training import host_memory
      print("run", os.environ.get("GLIBC_TUNABLES"), sys.argv[1:], flush=True)
      if __name__ == "__main__":
        host_memory.use_huge_pages({str(mode_file)!r})
        print("main", flush=True)
  """)
  )
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", host_memory.OPT_OUT)}
  env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
  if opt_out:
    env[host_memory.OPT_OUT] = "0"
  out = subprocess.run(
    [sys.executable, "-u", str(script), "--flag=1", "x"],
    env=env,
    capture_output=True,
    text=True,
    check=True,
    timeout=120,
  ).stdout.splitlines()
  if opt_out:
    assert out == ["run None ['--flag=1', 'x']", "main"]
  else:
    assert out == ["run None ['--flag=1', 'x']", "run glibc.malloc.hugetlb=1 ['--flag=1', 'x']", "main"]
