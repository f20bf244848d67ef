"""RAVDESS as a tensorflow-datasets builder ('ravdess'); importing this package registers it.

See ravdess_dataset_builder.py and docs/data.md.
"""

from .ravdess_dataset_builder import (BUILDER_CONFIGS, EMOTIONS, Builder, RavdessConfig,
                                    protocol_split_names, resolve_split)
