"""A person's own clips, listed in a CSV manifest, as a tensorflow-datasets builder ('manifest').

Importing this package is TensorFlow-free (the manifest reader, `read_manifest`, and the preprocessing workers
use it); `Builder`, `ManifestConfig` and `build` import the builder module, which registers 'manifest' with tfds,
on first use. See manifest.py (the CSV), manifest_dataset_builder.py (the builder) and docs/data.md "Your own
clips".
"""

from .manifest import (DATASET_NAME, LABELS_FILE, VERSION, Manifest, ManifestError, balanced_folds, built_folder,
                       config_name, read_label_list, read_manifest)

_BUILDER_NAMES = ("Builder", "ManifestConfig", "BUILDER_CONFIGS", "build_dataset", "run_preprocessing")


def __getattr__(name):
  if name in _BUILDER_NAMES:
    from . import manifest_dataset_builder
    return getattr(manifest_dataset_builder, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
