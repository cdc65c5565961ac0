"""--datasets, the data sets of a run (as config.data.datasets), in pretrain, finetune and evaluate.

Their earlier names stay accepted as aliases of it, with one warning line when used:
pretrain's and evaluate's --sessions, finetune's --dataset (and --sessions).
"""

from absl import flags, logging


def aliases(*old: str) -> None:
  """Accept each of `old` as --datasets (the program's earlier names for it)."""
  for name in old:
    flags.DEFINE_alias(name, "datasets")


def warn_old_names(*old: str) -> None:
  """One warning line per earlier name given on the command line."""
  for name in old:
    if flags.FLAGS[name].present:
      logging.warning("--%s is deprecated: use --datasets (the same flag)", name)
