"""Shared pytest setup.

With the CUDA build of torch installed here, importing torchvision after tensorflow segfaults (inside triton;
see ../shared/conventions.md). pytest imports every test module before running any, so one module that
imports tensorflow at the top (tfds, tf.data) would crash a later one that uses facenet-pytorch's MTCNN.
Importing torchvision first, here, makes the order safe for the whole session.

Real-data configs (configs/ravdess.py:audio_only) read AVTCA_RAVDESS_DIR; tests default it to
../shared/data/ravdess beside the repository (subprocesses inherit it).
"""

import os
from pathlib import Path

os.environ.setdefault("AVTCA_RAVDESS_DIR", str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ravdess"))

try:
  import torch  # noqa: F401
  import torchvision  # noqa: F401
except ImportError:  # the tests that need them skip or fail on their own
  pass


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def small_avtca_workdir(tmp_path_factory):
  """An untrained 32 px AVT-CA run on generated data (step-0 checkpoint), shared by the predict, export and
  bad-input tests: they need the real path from a clip to probabilities, not a good model."""
  from test_evaluate import _config, write_untrained_workdir
  config = _config(**{"data.source": "synthetic", "data.num_examples": 16, "image_size": 32})
  return write_untrained_workdir(tmp_path_factory.mktemp("small_avtca"), config)
