"""Build the dataset of a CSV manifest of your own clips (docs/data.md "Your own clips"):

    python -m data.manifest.build --manifest ~/my_clips/clips.csv --data_dir ~/tensorflow_datasets
    python -m data.manifest.build --manifest clips.csv --labels labels.txt --name my_clips --num_folds 5 \\
        --image_size 224 --workers 8

Options: --manifest (the CSV), --labels (a file, one class per line, found from the current folder or
the CSV's, or names separated by commas; default labels.txt beside the CSV, else the CSV's labels sorted),
--name (default: the CSV's folder name), --num_folds (speaker-independent folds when the CSV has no fold
column; default 5), --image_size (stored face crops, default 224), --frame_encoding (jpeg or raw), --workers
(face-detection processes). Every other flag is tfds build's (--data_dir, --overwrite,
--beam_pipeline_options for Apache Beam: docs/data.md "Large datasets"), with one-line errors as
data/ravdess/build.py. The dataset lands in <data_dir>/manifest/<name>/1.0.0; the last line printed is the
command that trains on it.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def parse(argv):
  parser = argparse.ArgumentParser(prog="python -m data.manifest.build", add_help=True,
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--manifest", required=True, help="the CSV: video, label, speaker[, audio][, fold]")
  parser.add_argument("--labels", default="", help="the label list: a file or comma-separated names")
  parser.add_argument("--name", default="", help="the dataset's name (default: the CSV's folder name)")
  parser.add_argument("--num_folds", type=int, default=5)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--frame_encoding", default="jpeg", choices=("jpeg", "raw"))
  parser.add_argument("--workers", type=int, default=0, help="face-detection processes (default: one per core)")
  return parser.parse_known_args(argv)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else list(argv)
  args, rest = parse(argv)
  from avtca_jax import console, tfds_builder
  from . import manifest_dataset_builder as builder_lib  # registers 'manifest' with tfds
  from pathlib import Path

  manifest = Path(args.manifest).expanduser().resolve()
  name = args.name or builder_lib.config_name(manifest)
  if args.workers:
    os.environ["AVTCA_PREPROCESS_WORKERS"] = str(args.workers)
  labels = args.labels
  if labels and Path(labels).expanduser().is_file():  # a file named from here; else relative to the CSV's folder
    labels = str(Path(labels).expanduser().resolve())
  config = dict(name=name, manifest=str(manifest), labels=labels, num_folds=args.num_folds,
                image_size=args.image_size, frame_encoding=args.frame_encoding,
                description=f"the clips of {manifest}")
  tfds_args = [builder_lib.DATASET_NAME, "--config", json.dumps(config), "--manual_dir", str(manifest.parent)]
  tfds_builder.build_command(tfds_args + rest, os.path.dirname(os.path.abspath(__file__)), "the CSV's folder")
  folder = builder_lib.manifest_lib.built_folder(manifest, _flag(rest, "--data_dir"), name)
  if not (folder / "dataset_info.json").exists():
    console.exit_on_user_error(FileNotFoundError(f"no dataset in {folder} after the build: see the messages above"))
  print(f"built {folder}\ntrain: python -m avtca_jax.train --config=configs/manifest.py:{folder} "
        f"--workdir=runs/{name}")


def _flag(argv, name):
  for i, a in enumerate(argv):
    if a == name and i + 1 < len(argv):
      return argv[i + 1]
    if a.startswith(name + "="):
      return a.split("=", 1)[1]
  return None


if __name__ == "__main__":
  main()
