"""`tfds build` for this builder, with one-line errors:

    python -m data.ravdess.build data/ravdess --config av --manual_dir ~/RAVDESS --data_dir ~/tensorflow_datasets
    python -m data.ravdess.build data/ravdess --config generated
    python -m data.ravdess.build --config av --manual_dir ~/RAVDESS --data_dir gs://BUCKET/tfds \
        --beam_pipeline_options=runner=DataflowRunner,project=P,region=R,temp_location=gs://BUCKET/tmp

It runs tfds's own `build` command (the same flags as `tfds build data/ravdess ...`, which works as well):
what it adds is this folder as the default dataset, a one-line error instead of a traceback for a user
error (a missing --manual_dir says what it must hold), and `--verbose` to keep library logs and tracebacks.
With --beam_pipeline_options the clips are preprocessed on Apache Beam (docs/data.md "Large datasets").
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv=None):
  from avtca_jax import tfds_builder
  tfds_builder.build_main(argv, __file__, "the folder of the official RAVDESS zips unpacked into Actor_XX/ folders")


if __name__ == "__main__":
  main()
