"""Test set-up: 8 fake CPU devices (before any JAX op) and a small built data set.

The tests' models are tiny, so XLA's compile time, not the run time, dominates the suite:
the tests (and the programs they start, which inherit the environment) compile with
XLA's backend optimisation level 0 (about 4x faster compiles on this CPU). Programs and
benchmarks run at XLA's default level."""

import os

os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0"]))

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

import pytest  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from data_builders import prepare  # noqa: E402

pytest_plugins = ["ibl_alf"]  # the IBL tests' fixtures: ibl_cache, ibl_data_dir, no_network

DATASET = "ibl_binned/synthetic_000"  # 114 neurons in 4 regions, 537 trials

tfds.disable_progress_bar()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """A TFDS data_dir holding DATASET, built once per test session."""
  path = str(tmp_path_factory.mktemp("tfds"))
  prepare.build([DATASET], path)
  return path


STUDY_DATASETS = ("ibl_binned/synthetic_007", "ibl_binned/synthetic_027")  # 134 and 138 neurons


@pytest.fixture(scope="session")
def study_data_dir(data_dir):
  """data_dir with two more small sessions, for multi-session runs and the mini study."""
  prepare.build(list(STUDY_DATASETS), data_dir)
  return data_dir
