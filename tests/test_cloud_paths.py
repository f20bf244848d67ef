"""A gs://bucket workdir works like a local folder: every file the trainer, checkpointing, the metric writers,
cross-validation and evaluation read or write goes through one path layer (etils.epath, which orbax uses).

Offline, gs:// is served from a local folder at each library's own gs:// entry point, nowhere else:
etils.epath's gs:// backend (which orbax's directories, our JSON/JSONL/TensorBoard/PNG files and the
listings go through), and orbax's TensorStore key-value spec for gs:// (the array data). A file that went
around the path layer (`open()`, `os.path`, `os.makedirs` on a gs:// string) would land in a local `gs:`
folder or fail; the guards below make such a call fail the test loudly instead, and the test checks that
no local `gs:` folder appeared.
"""

from __future__ import annotations

import builtins
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from config_overrides import ravdess_config

BUCKET = "gs://avtca-test-bucket"


class RouteError(AssertionError):
  """A gs:// path reached open()/os.path instead of the path layer."""


def _is_gs(value) -> bool:
  return isinstance(value, (str, bytes, os.PathLike)) and "gs:" in os.fsdecode(value)


def _guard_open(original):
  def guarded(file, *args, **kwargs):
    if _is_gs(file):  # the mapped backend opens local paths; a gs:// string here went around it
      raise RouteError(f"open({file!r}) on the gs:// route")
    return original(file, *args, **kwargs)
  return guarded


def _guard_os(name, original):
  """os.path / os functions called from the project's code with a gs:// path (libraries may use os.path on
  their own gs:// strings: orbax joins and normalises them before handing them to TensorStore)."""
  def guarded(*args, **kwargs):
    caller = sys._getframe(1).f_globals.get("__name__", "")
    if caller.startswith("avtca_jax") and any(_is_gs(a) for a in args):
      raise RouteError(f"{caller} called os {name}{args!r} on the gs:// route")
    return original(*args, **kwargs)
  return guarded


OS_PATH_FUNCTIONS = ("abspath", "exists", "isdir", "isfile", "join", "realpath", "expanduser", "dirname",
                     "basename", "normpath", "getsize")
OS_FUNCTIONS = ("makedirs", "mkdir", "listdir", "remove", "rename", "replace", "stat", "scandir", "walk")


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
  """gs://... served from tmp_path/gcs/..., with the open()/os guards on."""
  from etils.epath import backend as backend_lib, gpath
  from orbax.checkpoint._src.path import gcs_utils

  root = tmp_path / "gcs"
  root.mkdir()

  def to_local(path):
    text = os.fspath(path)
    return str(root / text[len("gs://"):]) if text.startswith("gs://") else path

  def to_gs(path):
    text = os.fspath(path)
    return "gs://" + os.path.relpath(text, root) if text.startswith(str(root)) else text

  class MappedBackend(backend_lib._OsPathBackend):  # the os backend, on local paths under root
    def open(self, path, mode):
      return super().open(to_local(path), mode)

    def exists(self, path):
      return super().exists(to_local(path))

    def isdir(self, path):
      return super().isdir(to_local(path))

    def listdir(self, path):
      return super().listdir(to_local(path))

    def glob(self, path):
      return [to_gs(p) for p in super().glob(to_local(path))]

    def walk(self, top, **kwargs):
      for dirpath, dirs, files in super().walk(to_local(top), **kwargs):
        yield to_gs(dirpath), dirs, files

    def makedirs(self, path, **kwargs):
      return super().makedirs(to_local(path), **kwargs)

    def mkdir(self, path, **kwargs):
      return super().mkdir(to_local(path), **kwargs)

    def rmtree(self, path):
      return super().rmtree(to_local(path))

    def remove(self, path):
      return super().remove(to_local(path))

    def rename(self, path, dst):
      return super().rename(to_local(path), to_local(dst))

    def replace(self, path, dst):
      return super().replace(to_local(path), to_local(dst))

    def copy(self, path, dst, *, overwrite):
      return super().copy(to_local(path), to_local(dst), overwrite=overwrite)

    def stat(self, path):
      return super().stat(to_local(path))

  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)  # else epath sends gs:// to tf.io.gfile
  monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, "gs", MappedBackend())
  monkeypatch.setattr(gcs_utils, "get_kvstore_for_gcs", lambda path: {"driver": "file", "path": to_local(path)})
  monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
  monkeypatch.setattr(builtins, "open", _guard_open(builtins.open))
  for name in OS_PATH_FUNCTIONS:
    monkeypatch.setattr(os.path, name, _guard_os(f"path.{name}", getattr(os.path, name)))
  for name in OS_FUNCTIONS:
    monkeypatch.setattr(os, name, _guard_os(name, getattr(os, name)))
  yield root
  assert not any(Path(d, "gs:").exists() for d in (Path.cwd(), tmp_path, Path("/"))), "a local gs: folder appeared"


def test_the_guards_catch_a_call_around_the_path_layer(fake_gcs):
  """The negative control: project code calling os.path or open() on a gs:// path fails the test."""
  scope = {"__name__": "avtca_jax.some_module", "os": os}
  with pytest.raises(RouteError):
    exec("os.path.join('gs://avtca-test-bucket/run', 'config.json')", scope)
  with pytest.raises(RouteError):
    exec("os.makedirs('gs://avtca-test-bucket/run', exist_ok=True)", scope)
  with pytest.raises(RouteError):
    open("gs://avtca-test-bucket/run/metrics.jsonl", "w")
  from etils import epath
  (epath.Path(BUCKET) / "x" / "y.txt").parent.mkdir(parents=True)
  (epath.Path(BUCKET) / "x" / "y.txt").write_text("through the path layer")
  assert (fake_gcs / "avtca-test-bucket" / "x" / "y.txt").read_text() == "through the path layer"


def _config(**overrides):
  return ravdess_config("smoke", **{"model": "audio", "data.source": "synthetic", "data.num_examples": 32,
                                    "batch_size": 8, "num_train_steps": -1, "num_epochs": 2, "progress_bar": False,
                                    **overrides})


def test_train_resume_evaluate_and_cross_validate_in_a_gs_workdir(fake_gcs):
  import orbax.checkpoint as ocp
  from etils import epath
  from avtca_jax import checkpointing, cross_validation, evaluate, metric_writers, train as train_lib

  # A converted checkpoint in the bucket, as `python -m avtca_jax.convert --output=gs://...` writes one.
  bias = np.linspace(-1, 1, 8).astype(np.float32)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(epath.Path(BUCKET) / "init", {"params": {"classifier": {"bias": bias}}})
  checkpointer.wait_until_finished()

  workdir = f"{BUCKET}/run"
  config = _config(init_checkpoint=f"{BUCKET}/init")
  summary = train_lib.train_and_evaluate(config, workdir)
  assert summary["status"] == "finished" and summary["test"]["count"] == 8
  local = fake_gcs / "avtca-test-bucket" / "run"
  assert {p.name for p in local.iterdir()} >= {"config.json", "model.json", "metrics.jsonl", "tensorboard",
                                                "checkpoints", "best", "test_metrics.json"}
  records = metric_writers.read_jsonl(f"{workdir}/metrics.jsonl")
  assert records[-1]["step"] == 8 and any("validation/accuracy" in r for r in records)
  assert json.loads((local / "test_metrics.json").read_text()) == summary["test"]
  events = list((local / "tensorboard").iterdir())
  assert len(events) == 1 and events[0].name.startswith("events.out.tfevents.")

  # Checkpoints in the bucket restore; a rerun finds the finished run there and only re-tests it.
  directory = checkpointing.checkpoint_dir(workdir)
  assert directory.startswith(f"{workdir}/checkpoints/") and checkpointing.read_meta(directory)["step"] == 8
  assert int(checkpointing.restore_numpy(directory)["step"]) == 8
  again = train_lib.train_and_evaluate(config, workdir)
  assert again["test"] == summary["test"]
  assert len(list((local / "tensorboard").iterdir())) == 2

  results = evaluate.evaluate(workdir, split="validation")
  assert results["both"]["count"] == 8
  assert {"validation_both.json", "validation_both_report.txt", "validation_both_confusion.png",
          "validation_summary.json"} <= {p.name for p in (local / "eval").iterdir()}
  assert (local / "eval" / "validation_both_confusion.png").read_bytes()[:4] == b"\x89PNG"

  report = cross_validation.run(_config(), f"{BUCKET}/cv", folds=(1,), removals=())
  seed = int(_config().seed)
  assert report["status"] == "finished" and report["runs"]["fold1"][seed]["both"]["count"] == 8
  cv = fake_gcs / "avtca-test-bucket" / "cv"
  assert {"cross_validation.json", "cross_validation.md", "fold1"} <= {p.name for p in cv.iterdir()}
  assert (cv / "fold1" / f"seed{seed}" / "test_metrics.json").exists()
