"""CREMA-D as a tensorflow-datasets builder ('crema_d'); importing this package registers it.

See crema_d_dataset_builder.py and docs/data.md.
"""

from .crema_d_dataset_builder import BUILDER_CONFIGS, EMOTIONS, Builder, CremaDConfig, perceived_labels
