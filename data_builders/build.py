"""Builds TFDS data sets of this project (array_record, no TensorFlow).

  python -m data_builders.build --dataset=ibl_binned/synthetic_000 --data_dir=data/tfds
  python -m data_builders.build --dataset=ibl_binned/synthetic_000,ibl_binned/synthetic_001 ...
  python -m data_builders.build --dataset=spike_events/reaching_000 --data_dir=data/tfds
  python -m data_builders.build --dataset=spike_events/nlb_mc_maze --manual_dir=data/raw/000128
"""

from absl import app, flags

from data_builders import prepare

_DATASET = flags.DEFINE_list("dataset", None, "Data sets to build, NAME/CONFIG, comma-separated.")
_DATA_DIR = flags.DEFINE_string("data_dir", "data/tfds", "TFDS data directory.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Folder of NWB files for spike_events NWB configs "
                                  "(default <data_dir>/downloads/manual).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _DATASET.value:
    raise app.UsageError("--dataset is required, e.g. --dataset=ibl_binned/synthetic_000")
  for path in prepare.build(_DATASET.value, _DATA_DIR.value, _MANUAL_DIR.value):
    print(path)


if __name__ == "__main__":
  app.run(main)
