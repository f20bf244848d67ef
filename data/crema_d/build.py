"""`tfds build` for the CREMA-D builder, runnable without apache_beam (as data/ravdess/build.py):

    python -m data.crema_d.build --config av --manual_dir ~/CREMA-D --data_dir ~/tensorflow_datasets
    python -m data.crema_d.build --config generated
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv=None):
  from avtca_jax import tfds_builder
  tfds_builder.build_main(argv, __file__, "the CREMA-D folder holding VideoFlash/ (and AudioWAV/, processedResults/)")


if __name__ == "__main__":
  main()
