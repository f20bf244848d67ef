"""The configs and the tfds builders, from a checkout or from an installed wheel.

configs/<name>.py and data/<name>/ live at the repository's top level, where the README's commands name
them (`--config=configs/ravdess.py`, `python -m data.ravdess.build`). A wheel (`pip install .`) installs only
the `avtca_jax` package: pyproject.toml carries those folders inside it as `avtca_jax.configs` and
`avtca_jax.<name>_tfds`, so no top-level `configs` or `data` package lands in site-packages. The library
imports them through these functions only. The checkout's names come first: tests import `data.ravdess`,
and tfds must see one registration of each builder per process.
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


def config_module(name: str = "ravdess"):
  """The module of configs/<name>.py (get_config, VARIANTS)."""
  return _first_importable(f"configs.{name}", f"avtca_jax.configs.{name}")


def builder_package(name: str = "ravdess"):
  """The tfds builder package data/<name> (importing it registers the builder)."""
  return _first_importable(f"data.{name}", f"avtca_jax.{name}_tfds")


def ravdess_config():
  """The module of configs/ravdess.py (get_config, VARIANTS)."""
  return config_module("ravdess")

