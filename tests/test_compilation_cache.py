"""The persistent compilation cache that every entry point turns on (avtca_jax/compilation_cache.py)."""

import json
import os
import subprocess
import sys

from avtca_jax import compilation_cache

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROGRAM = r"""
import json, sys
import jax, jax.numpy as jnp
from avtca_jax import compilation_cache
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
folder = compilation_cache.enable(sys.argv[1] if len(sys.argv) > 1 else None)
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
f(jnp.ones((64, 64))).block_until_ready()
print(json.dumps({"folder": folder, "hits": events.count("/jax/compilation_cache/cache_hits"),
                  "misses": events.count("/jax/compilation_cache/cache_misses")}))
"""


def _run(tmp_path, *args, env=None):
  env = dict(os.environ, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **(env or {}))
  out = subprocess.run([sys.executable, "-c", PROGRAM, *args], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_resolve(monkeypatch, tmp_path):
  monkeypatch.delenv(compilation_cache.ENV_VAR, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert compilation_cache.resolve("") == os.path.join(str(tmp_path), "avtca_jax", "jax")
  monkeypatch.setenv(compilation_cache.ENV_VAR, str(tmp_path / "env"))
  assert compilation_cache.resolve(None) == str(tmp_path / "env")
  assert compilation_cache.resolve(str(tmp_path / "flag")) == str(tmp_path / "flag")  # a setting beats the env
  assert compilation_cache.resolve("none") is None and compilation_cache.resolve("OFF") is None
  assert compilation_cache.resolve("gs://bucket/cache") == "gs://bucket/cache"


def test_second_process_loads_instead_of_compiling(tmp_path):
  folder = tmp_path / "cache"
  first = _run(tmp_path, str(folder))
  assert first["folder"] == str(folder) and first["misses"] >= 1 and first["hits"] == 0
  assert any(folder.iterdir())  # something was stored
  second = _run(tmp_path, env={compilation_cache.ENV_VAR: str(folder)})  # the same folder, through the env
  assert second["hits"] >= 1 and second["misses"] == 0


def test_none_switches_it_off(tmp_path):
  off = _run(tmp_path, "none")
  assert off["folder"] is None and off["hits"] == 0 and off["misses"] == 0
