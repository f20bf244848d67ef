"""The configs and the tfds builder, from a checkout or from an installed wheel.

configs/ravdess.py and data/ravdess/ live at the repository's top level, where the README's commands name
them (`--config=configs/ravdess.py`, `python -m data.ravdess.build`). A wheel (`pip install .`) installs only
the `avtca_jax` package: pyproject.toml carries those two folders inside it as `avtca_jax.configs` and
`avtca_jax.ravdess_tfds`, so no top-level `configs` or `data` package lands in site-packages. The library
imports them through these functions only. The checkout's names come first: tests import `data.ravdess`,
and tfds must see one registration of the 'ravdess' builder per process.
"""

from __future__ import annotations

import importlib


def _first_importable(*names: str):
  for name in names:
    try:
      return importlib.import_module(name)
    except ModuleNotFoundError as error:
      if error.name is None or not name.startswith(error.name):  # a missing dependency inside the module
        raise
  raise ModuleNotFoundError(f"none of {names} can be imported: run from the repository root, or install the "
                            "package with `pip install .`")


def ravdess_config():
  """The module of configs/ravdess.py (get_config, VARIANTS)."""
  return _first_importable("configs.ravdess", "avtca_jax.configs.ravdess")


def ravdess_builder():
  """The tfds builder package data/ravdess (importing it registers the 'ravdess' builder)."""
  return _first_importable("data.ravdess", "avtca_jax.ravdess_tfds")
