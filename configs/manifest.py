"""Training configs for AVT-CA on your own clips (a CSV manifest): `--config=configs/manifest.py:DATASET[,VARIANT]`.

DATASET is the built dataset: the folder `python -m data.manifest.build` printed
(<data_dir>/manifest/<name>/1.0.0), or the manifest CSV itself (its dataset in the default data_dir,
$TFDS_DATA_DIR or ~/tensorflow_datasets, under the default name), or, when the config string names no
dataset, the environment variable AVTCA_MANIFEST. The dataset's name, location, class count and stored image
size come from the built dataset (its metadata.json), so nothing is set by hand:

    python -m data.manifest.build --manifest ~/my_clips/clips.csv
    python -m avtca_jax.train --config=configs/manifest.py:~/my_clips/clips.csv --workdir=runs/my_clips
    AVTCA_MANIFEST=~/my_clips/clips.csv python -m avtca_jax.train --config=configs/manifest.py:smoke --workdir=runs/s

VARIANT: `default` (fold1 with the original's recipe), `smoke` (two steps at 32 px: checks the whole loop),
`fold1` .. `fold6` (another fold; or `--config.data.protocol=foldK`). The base is configs/ravdess.py's (the
same keys); `_default` and `_smoke` say what each sets.
"""

import json
import os
from pathlib import Path

from avtca_jax import bundled

MANIFEST_VARIABLE = "AVTCA_MANIFEST"
# fold1 .. fold6: the protocols the trainer's config validation accepts (avtca_jax.splits.PROTOCOLS).
VARIANTS = ("default", "smoke") + tuple(f"fold{k}" for k in range(1, 7))
# data.name when no dataset is given: the data source's error then shows what to do.
NO_DATASET = f"(no manifest dataset: give --config=configs/manifest.py:FOLDER_OR_CSV or set {MANIFEST_VARIABLE})"


def split_arg(arg):
  """'PATH,smoke' -> ('PATH', 'smoke'); 'smoke' -> ('', 'smoke'); 'PATH' -> ('PATH', 'default')."""
  arg = (arg or "").strip()
  if arg in VARIANTS:
    return "", arg
  head, comma, tail = arg.rpartition(",")
  if comma and tail.strip() in VARIANTS:
    return head.strip(), tail.strip()
  return arg, "default"


def dataset_folder(path: str) -> Path:
  """The built dataset's version folder for PATH: that folder, its parent (the newest version), or a
  manifest CSV (where the build command puts its dataset). ValueError (one line) when there is none."""
  given = Path(path).expanduser()
  if given.suffix.lower() == ".csv":
    folder = bundled.builder_package("manifest").built_folder(given)
    if not (folder / "dataset_info.json").is_file():
      raise ValueError(f"configs/manifest.py: {given} has no built dataset in {folder}: build it first with "
                       f"`python -m data.manifest.build --manifest {given}` (or give the folder the build printed)")
    return folder
  if (given / "dataset_info.json").is_file():
    return given.resolve()
  versions = sorted((p for p in given.glob("*") if (p / "dataset_info.json").is_file()),
                    key=lambda p: [int(x) if x.isdigit() else 0 for x in p.name.split(".")])
  if versions:
    return versions[-1].resolve()
  raise ValueError(f"configs/manifest.py: {given} is not a built manifest dataset (no dataset_info.json): give "
                   "the folder `python -m data.manifest.build` printed, or the manifest CSV")


def dataset_facts(folder: Path) -> dict:
  """The built dataset's own facts (metadata.json's 'dataset': classes, groups, folds, image_size, ...)."""
  try:
    facts = json.loads((folder / "metadata.json").read_text())["dataset"]
    facts["classes"] = list(facts["classes"])
  except (OSError, ValueError, KeyError) as error:
    raise ValueError(f"configs/manifest.py: {folder} was not built by data/manifest (metadata.json has no "
                     f"dataset classes: {error})") from error
  return facts


def get_config(arg=None):
  path, variant = split_arg(arg)
  path = path or os.environ.get(MANIFEST_VARIABLE, "")
  if variant not in VARIANTS:
    raise ValueError(f"unknown config variant {variant!r}; expected one of {VARIANTS}")
  config = bundled.ravdess_config().get_config("default")
  config.variant = f"manifest:{variant}"  # config_validation.default_config reads it back (no path in it)
  if path:
    folder = dataset_folder(path)
    facts = dataset_facts(folder)
    config.data.name = str(folder)
    config.num_classes = len(facts["classes"])
    stored_size = int(facts.get("image_size", 224))
  else:  # the keys only (config_validation), or a run that stops at the data source with NO_DATASET
    config.data.name = NO_DATASET
    stored_size = 224
  _default(config, stored_size)
  if variant == "smoke":
    _smoke(config, stored_size)
  elif variant.startswith("fold"):
    config.data.protocol = variant
  return config


def _default(config, stored_size):
  """fold1 of the manifest's speaker-independent folds (test fold 1, validation fold 2, train the rest), with
  the original's recipe (docs/original.md#recipe): SGD lr 0.06, softhard modality dropout, 100 epochs, 224 px
  (or the stored crops' size when smaller), the best-validation checkpoint tested at the end.

      python -m avtca_jax.train --config=configs/manifest.py:DATASET --workdir=runs/mine

  Expected: speaker-independent accuracy on your classes. Needs a GPU or TPU at 224 px.
  """
  config.data.source = "tfds"
  config.data.builder_config = ""
  config.data.data_dir = ""
  config.data.protocol = "fold1"
  config.image_size = min(224, stored_size)
  config.modality_dropout = "softhard"
  config.learning_rate = 0.06
  config.num_epochs = 100
  config.log_every_steps = 50


def _smoke(config, stored_size):
  """Two steps at batch 4 and 32 px (or the stored size when smaller), then validation and test: checks the
  whole loop on your data in minutes on a CPU.

      python -m avtca_jax.train --config=configs/manifest.py:DATASET,smoke --workdir=runs/mine_smoke
  """
  config.image_size = min(32, stored_size)
  config.modality_dropout = "none"
  config.batch_size = 4
  config.num_train_steps = 2
  config.log_every_steps = 1
