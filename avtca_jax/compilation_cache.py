"""JAX's persistent compilation cache, for every entry point (train, cross_validation, evaluate, predict,
benchmarks).

A compiled step is stored on disk keyed by its program, compile options, backend and jax version, so a second
process with the same configuration (the next fold or seed of `cross_validation`, a resumed run, `evaluate`
after training) loads the executable instead of compiling it again. Folds of one protocol have the same
number of training clips, so their steps are the same program.

Where: `config.compilation_cache_dir` (trainer) or `--compilation_cache` (other CLIs); empty means the
environment variable AVTCA_COMPILATION_CACHE, else `$XDG_CACHE_HOME/avtca_jax/jax` (default
`~/.cache/avtca_jax/jax`). 'none' switches it off. Any path JAX can write works, `gs://bucket/cache`
included. The cache is trusted code: do not share its folder with users you do not trust (JAX's warning).
"""

from __future__ import annotations

import os
from typing import Optional

ENV_VAR = "AVTCA_COMPILATION_CACHE"
DISABLED = ("none", "off", "false", "0")


def default_dir() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "avtca_jax", "jax")


def resolve(path: Optional[str] = None) -> Optional[str]:
  """The cache folder for a setting ('' or None: the environment variable, else the default), or None when
  switched off."""
  path = path or os.environ.get(ENV_VAR) or default_dir()
  if path.strip().lower() in DISABLED:
    return None
  return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def enable(path: Optional[str] = None) -> Optional[str]:
  """Points JAX's persistent compilation cache at `path` (see `resolve`) for this process; returns the folder.

  Takes effect for every compilation after the call. Programs that compile in under a second are not stored
  (JAX's default threshold), so only the steps, not the small helper computations, fill the folder.
  """
  import jax
  folder = resolve(path)
  if folder is None:
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", folder)
  return folder
