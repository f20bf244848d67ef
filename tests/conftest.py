"""Shared pytest setup.

With the CUDA build of torch installed here, importing torchvision after tensorflow segfaults (inside triton;
see ../shared/conventions.md). pytest imports every test module before running any, so one module that
imports tensorflow at the top (tfds, tf.data) would crash a later one that uses facenet-pytorch's MTCNN.
Importing torchvision first, here, makes the order safe for the whole session.
"""

try:
  import torch  # noqa: F401
  import torchvision  # noqa: F401
except ImportError:  # the tests that need them skip or fail on their own
  pass
