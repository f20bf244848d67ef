"""`tfds build` for the CREMA-D builder, with one-line errors (as data/ravdess/build.py):

    python -m data.crema_d.build --config av --manual_dir ~/CREMA-D --data_dir ~/tensorflow_datasets
    python -m data.crema_d.build --config generated
    python -m data.crema_d.build --config av --manual_dir ~/CREMA-D --beam_pipeline_options=runner=DirectRunner

`tfds build data/crema_d ...` takes the same flags.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv=None):
  from avtca_jax import tfds_builder
  tfds_builder.build_main(argv, __file__, "the CREMA-D folder holding VideoFlash/ (and AudioWAV/, processedResults/)")


if __name__ == "__main__":
  main()
