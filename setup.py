"""mtm_jax: foundation models of neural spiking data (MtM, POYO) in JAX/Flax."""

import setuptools

setuptools.setup(
  name="mtm_jax",
  version="0.1.0",
  description=(
    "Multi-task masking (MtM) and POYO foundation models of neural spiking"
    " data in JAX/Flax, from a laptop CPU to accelerator clusters."
  ),
  long_description=open("README.md", encoding="utf-8").read(),
  long_description_content_type="text/markdown",
  python_requires=">=3.12",
  packages=setuptools.find_packages(include=["mtm_jax*", "experiments*", "data_builders*", "benchmarks*"]),
  package_data={"experiments": ["flags/*.flags"]},
  install_requires=[
    "jax>=0.11",
    "flax>=0.12.9",
    "optax>=0.2.5",
    "orbax-checkpoint>=0.11",
    "chex>=0.1.90",
    "numpy>=2.0",
    "scipy>=1.11",
    "scikit-learn>=1.4",
    "tensorflow-datasets>=4.9.9",
    "array_record>=0.8",
    "importlib_resources",  # tensorflow-datasets needs it to prepare data sets
    "grain>=0.2.12",
    "absl-py>=2.1",
    "ml_collections>=1.0",
    "tensorboardX>=2.6",
    "tqdm",
    "filelock>=3.12",  # one build of a data set at a time, one run per workdir
    "matplotlib>=3.8",  # scaling curves and raster figures
    "pynwb>=3.0",  # Neural Latents Benchmark NWB files (spike_events builder)
    "ONE-api>=3.0",  # IBL sessions: a local ONE cache read offline (mtm_jax.datasets.ibl)
    "iblatlas>=0.7",  # IBL sessions: Allen atlas ids -> region acronyms (tables ship with it)
    "safetensors>=0.4",  # BrainWideBench submission and ground-truth files (mtm_jax.bwb), numpy only
    "temporaldata>=0.1.6",  # BrainWideBench session files (torch_brain's Data layout; numpy and h5py, no torch)
  ],
  extras_require={
    # ruff pinned: `make lint` checks the exact format of one version.
    "test": ["pytest>=8", "hypothesis>=6.100", "pytest-xdist>=3.6", "ruff==0.17.6"],
  },
)
