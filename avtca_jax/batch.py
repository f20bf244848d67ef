"""The batch contract: what every data source yields and the train and evaluation steps take.

A batch is a dict of process-local numpy arrays (b = global batch / process count):

| key | dtype | shape | |
| --- | --- | --- | --- |
| mfcc | float32 | (b, 156, 10) | (time, coefficient) MFCCs, raw or normalised by the source |
| frames | uint8 | (b, T, S, S, 3) | RGB face crops; absent for audio-only data |
| label | int32 | (b,) | index into the dataset's class names |
| actor | int32 | (b,) | the speaker (the dataset's group id) |
| mask | bool | (b,) | False only for the padding of the last evaluation batch; absent in training |

Sources build batches with these dtypes (`DTYPES`); `check` tests one, naming every key that differs.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional

import numpy as np

from avtca_jax.preprocessing.audio import MFCC_SHAPE

DTYPES: Dict[str, np.dtype] = {"mfcc": np.dtype(np.float32), "frames": np.dtype(np.uint8),
                               "label": np.dtype(np.int32), "actor": np.dtype(np.int32),
                               "mask": np.dtype(np.bool_)}
REQUIRED = ("mfcc", "label")


def example_shapes(num_frames: int, image_size: int) -> Dict[str, tuple]:
  """Per-example shape of each key."""
  return {"mfcc": MFCC_SHAPE, "frames": (num_frames, image_size, image_size, 3), "label": (), "actor": (),
          "mask": ()}


def padding_mask(num_real: int, size: int) -> np.ndarray:
  """(size,) bool: True for the first `num_real` rows."""
  return np.arange(size) < num_real


def check(batch: Mapping[str, np.ndarray], num_frames: Optional[int] = None,
          image_size: Optional[int] = None) -> None:
  """ValueError naming each key whose dtype or per-example shape breaks the contract (frame shape checked
  when `num_frames` and `image_size` are given)."""
  problems = [f"{k} missing" for k in REQUIRED if k not in batch]
  unknown = sorted(set(batch) - set(DTYPES))
  problems += [f"unknown key {k}" for k in unknown]
  shapes = example_shapes(num_frames or 0, image_size or 0)
  sizes = {len(v) for v in batch.values()}
  if len(sizes) > 1:
    problems.append(f"batch sizes differ: { {k: len(v) for k, v in batch.items()} }")
  for key, value in batch.items():
    if key not in DTYPES:
      continue
    value = np.asarray(value)
    if value.dtype != DTYPES[key]:
      problems.append(f"{key} is {value.dtype}, expected {DTYPES[key]}")
    if key == "frames" and num_frames is None:
      if value.ndim != 5 or value.shape[-1] != 3:
        problems.append(f"frames shape {value.shape}, expected (b, T, S, S, 3)")
    elif tuple(value.shape[1:]) != shapes[key]:
      problems.append(f"{key} shape {value.shape[1:]} per example, expected {shapes[key]}")
  if problems:
    raise ValueError("batch contract (avtca_jax/batch.py): " + "; ".join(problems))
