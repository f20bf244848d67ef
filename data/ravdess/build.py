"""`tfds build` for this builder, runnable without apache_beam.

tensorflow-datasets 4.9.10's `tfds` command imports apache_beam at start-up (for its convert_format
command), so `tfds build data/ravdess ...` fails with "No module named 'apache_beam'" unless beam is
installed. This runs the same `build` command (same flags) directly:

    python -m data.ravdess.build data/ravdess --config av --manual_dir ~/RAVDESS --data_dir ~/tensorflow_datasets
    python -m data.ravdess.build data/ravdess --config generated
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  verbose = "--verbose" in argv  # ours, not tfds build's: library logs and full tracebacks
  argv = [a for a in argv if a != "--verbose"]
  from avtca_jax import console
  console.configure_logging(verbose)
  try:
    import simple_parsing
    import tensorflow_datasets as tfds
    from tensorflow_datasets.scripts.cli import build

    if not argv or argv[0].startswith("-"):  # default: this folder, as `tfds build` run inside it
      argv = [os.path.dirname(os.path.abspath(__file__))] + argv
    tfds.core.visibility.set_availables([tfds.core.visibility.DatasetType.TFDS_PUBLIC,
                                         tfds.core.visibility.DatasetType.COMMUNITY_PUBLIC])
    args = simple_parsing.parse(build.Args, args=argv)
    args.execute()
  except Exception as error:  # a user error is one line; a bug keeps its traceback
    if isinstance(error, AssertionError):  # tfds asserts on bad arguments (a missing manual_dir, for one)
      error = ValueError(str(error) or "tfds build refused the arguments")
    if "Manual directory" in str(error) and not verbose:  # tfds's own text points at download instructions
      error = ValueError(f"{str(error).split('. ')[0]}: give --manual_dir the folder of the official RAVDESS "
                         "zips unpacked into Actor_XX/ folders (docs/data.md)")
    console.exit_on_user_error(error, verbose)


if __name__ == "__main__":
  main()
