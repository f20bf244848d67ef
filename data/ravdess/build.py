"""`tfds build` for this builder, runnable without apache_beam.

tensorflow-datasets 4.9.10's `tfds` command imports apache_beam at start-up (for its convert_format
command), so `tfds build data/ravdess ...` fails with "No module named 'apache_beam'" unless beam is
installed. This runs the same `build` command (same flags) directly:

    python -m data.ravdess.build data/ravdess --config av --manual_dir ~/RAVDESS --data_dir ~/tensorflow_datasets
    python -m data.ravdess.build data/ravdess --config generated
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv=None):
  from avtca_jax import tfds_builder
  tfds_builder.build_main(argv, __file__, "the folder of the official RAVDESS zips unpacked into Actor_XX/ folders")


if __name__ == "__main__":
  main()
