"""Where training batches come from: `create_source(config)`, the one place a source is chosen.

Every source yields *process-local* numpy batches in the batch contract (`avtca_jax.batch`: 'mfcc',
'frames' (absent for audio-only data), 'label', 'actor', and in evaluation a bool 'mask' that is False for
the padding of the last batch), with b = global batch / process count. The order is a pure function of
(seed, epoch), so a resumed run re-creates its position from the step number alone. The dataset
(`config.data.name`, `avtca_jax.datasets`) gives the class names and resolves the protocol.

- `tfds`: the dataset's builder (real data or its 'generated' config) through `avtca_jax.input_pipeline`
  (`avtca_jax.tfds_source`, which imports TensorFlow only when such a source is created).
- `audio_folder`: real RAVDESS speech audio held in memory (`avtca_jax.audio_data`), audio-only models.
- `synthetic`: clips of `avtca_jax.synthetic` (the generator of the 'generated' configs) held in memory, with
  the dataset's classes and speakers (tests, benchmarks, machines without tfds).
"""

from __future__ import annotations

import os
from typing import Dict, Iterator

import numpy as np

from avtca_jax import batch as batch_lib
from avtca_jax import datasets, synthetic
from avtca_jax.tfds_source import DataError, TfdsSource

SPLITS = ("train", "validation", "test")


# The MFCC normalisation of an 'audio_folder' run (`ArraySource.mfcc_normalization`), which the trainer
# writes into the workdir and `avtca_jax.predict` applies to new clips.
NORMALIZATION_FILE = "mfcc_normalization.json"


def with_validation_in_train(parts: Dict[str, Dict[str, np.ndarray]]) -> Dict[str, Dict[str, np.ndarray]]:
  """`config.data.train_on_validation`: the validation split appended to the training split, which is left
  empty. Under the actor-independent protocols that trains on 20 actors; the test actors stay unseen."""
  train, validation = parts["train"], parts["validation"]
  return dict(parts, train={k: np.concatenate([train[k], validation[k]]) for k in train},
              validation={k: v[:0] for k, v in validation.items()})


def _shard_of_global(batch: Dict[str, np.ndarray], process_index: int, process_count: int):
  """Rows of this process in a global batch: contiguous blocks, process 0 first (matches the mesh)."""
  n = len(next(iter(batch.values()))) // process_count
  return {k: v[process_index * n:(process_index + 1) * n] for k, v in batch.items()}


def train_indices(num_examples: int, epoch: int, step: int, global_batch: int, seed: int,
                  process_count: int = 1) -> np.ndarray:
  """Example indices of training step `step` of `epoch` over a split held whole (in memory or on the devices):
  a permutation per (seed, epoch), the last partial global batch dropped. Each process's block of the batch
  is sorted (sorted reads are faster; the rows' order inside a batch does not matter to the loss), so
  `ArraySource` (one block per process) and `DeviceCache` (the whole batch) draw the same clips."""
  order = np.random.default_rng([seed, epoch]).permutation(num_examples)
  batch = order[step * global_batch:(step + 1) * global_batch].reshape(process_count, -1)
  return np.sort(batch, axis=1).reshape(-1)


class ArraySource:
  """Splits held as numpy arrays. Training order: `train_indices`. Evaluation: in order, the last batch padded."""

  def __init__(self, splits_arrays: Dict[str, Dict[str, np.ndarray]], process_index: int = 0,
               process_count: int = 1, class_names=datasets.RAVDESS.class_names):
    self.arrays = splits_arrays
    self.process_index, self.process_count = process_index, process_count
    self.class_names = tuple(class_names)  # label order (the dataset's)
    self.mfcc_normalization = {"mode": "none"}  # how 'mfcc' was normalised (audio_data.normalize_mfcc)

  def num_examples(self, split: str) -> int:
    return len(self.arrays[split]["label"]) if split in self.arrays else 0

  def steps_per_epoch(self, global_batch: int) -> int:
    """Training steps per epoch, the same on every process (they share one permutation)."""
    return self.num_examples("train") // global_batch

  def split_arrays(self, split: str) -> Dict[str, np.ndarray]:
    """The whole split (every process holds it), for `DeviceCache`."""
    return self.arrays[split]

  @property
  def has_frames(self) -> bool:
    return "frames" in self.arrays["train"]

  def frame_shape(self):
    return self.arrays["train"]["frames"].shape[1:] if self.has_frames else None

  def train_batches(self, epoch: int, skip: int, global_batch: int, seed: int) -> Iterator[Dict[str, np.ndarray]]:
    data = self.arrays["train"]
    n = len(data["label"])
    for step in range(skip, n // global_batch):
      index = train_indices(n, epoch, step, global_batch, seed, self.process_count)[self._local_slice(global_batch)]
      yield {k: v[index] for k, v in data.items()}

  def _local_slice(self, global_batch):
    n = global_batch // self.process_count
    return slice(self.process_index * n, (self.process_index + 1) * n)

  def eval_batches(self, split: str, global_batch: int) -> Iterator[Dict[str, np.ndarray]]:
    data = self.arrays[split]
    total = len(data["label"])
    for start in range(0, total, global_batch):
      index = np.arange(start, start + global_batch)
      mask = batch_lib.padding_mask(total - start, global_batch)
      index = np.minimum(index, total - 1)[self._local_slice(global_batch)]
      batch = {k: v[index] for k, v in data.items()}
      batch["mask"] = mask[self._local_slice(global_batch)]
      yield batch


class DeviceCache:
  """The whole training split decoded and replicated on every device (`config.data.device_cache`): each step
  gathers its global batch on the devices (`train_indices`, the same order as `ArraySource`), sharded over
  `data`, so no clip crosses the host-device link after the first copy and the host does no decoding.

  Every process loads the whole split (`source.split_arrays('train')`), so the order and the steps per epoch
  do not depend on the process count. Memory per device: the split's bytes (`nbytes`), e.g. 1,920 RAVDESS
  training clips of 15 frames at 224 px are 4.3 GB as uint8.
  """

  def __init__(self, arrays: Dict[str, np.ndarray], mesh, keys=("mfcc", "frames", "label")):
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    self.num_examples = len(arrays["label"])
    self.nbytes = sum(arrays[k].nbytes for k in keys if k in arrays)
    replicated = NamedSharding(mesh, P())
    # Every process passes the same host arrays, so the callback gives each local device the whole split.
    self.arrays = {k: jax.make_array_from_callback(arrays[k].shape, replicated, lambda index, v=arrays[k]: v[index])
                   for k in keys if k in arrays}
    self._gather = jax.jit(lambda arrays, index: {k: v[index] for k, v in arrays.items()},
                           out_shardings=NamedSharding(mesh, P("data")))
    self._replicated = replicated

  def steps_per_epoch(self, global_batch: int) -> int:
    return self.num_examples // global_batch

  def train_batches(self, epoch: int, skip: int, global_batch: int, seed: int):
    """Global device batches of `epoch` from step `skip` on (dicts of jax.Array sharded over `data`)."""
    import jax
    for step in range(skip, self.steps_per_epoch(global_batch)):
      index = train_indices(self.num_examples, epoch, step, global_batch, seed).astype(np.int32)
      index = jax.make_array_from_callback(index.shape, self._replicated, lambda i, v=index: v[i])
      yield self._gather(self.arrays, index)


def dataset_of(config) -> datasets.Dataset:
  """The registered dataset of `config.data.name`; DataError for an unknown name."""
  try:
    return datasets.get(config.data.name)
  except KeyError as error:
    raise DataError(f"config.data.name={config.data.name!r}: {error.args[0]}") from error


def check_classes(config, class_names) -> None:
  """config.num_classes against the dataset's classes (one line naming both)."""
  if config.num_classes != len(class_names):
    raise DataError(f"config.num_classes={config.num_classes} but dataset {config.data.name!r} has "
                    f"{len(class_names)} classes ({', '.join(class_names)}): set --config.num_classes="
                    f"{len(class_names)}")


def check_protocol(config, dataset: datasets.Dataset) -> None:
  if not dataset.is_protocol(config.data.protocol):
    raise DataError(f"config.data.protocol={config.data.protocol!r} is not a protocol of {dataset.name}: "
                    f"expected one of {dataset.protocols}, {datasets.RANDOM_PROTOCOL} or "
                    "inner_<protocol>_<1..4>")


def _synthetic_source(config, process_index, process_count):
  dataset = dataset_of(config)
  check_classes(config, dataset.class_names)
  n = config.data.num_examples or 128
  arrays = {split: synthetic.make_split(n if split == "train" else max(n // 4, 8), config.image_size,
                                        dataset.num_classes, dataset.groups, seed=1000 * i + 7)
            for i, split in enumerate(SPLITS)}
  if config.model == "audio":
    arrays = {s: {k: v for k, v in a.items() if k != "frames"} for s, a in arrays.items()}
  if config.data.get("train_on_validation", False):
    arrays = with_validation_in_train(arrays)
  return ArraySource(arrays, process_index, process_count, dataset.class_names)


def _audio_folder_source(config, process_index, process_count):
  from avtca_jax import audio_data

  if not config.data.path:
    raise DataError("config.data.path is empty: set AVTCA_RAVDESS_DIR to the folder that holds "
                    "audio_speech_22k/ (the RAVDESS speech audio as Actor_XX/*.flac or .wav), or pass "
                    "--config.data.path=<that audio folder>")
  path = os.path.abspath(config.data.path)
  if not os.path.isdir(path):
    raise DataError(f"audio folder {path!r} does not exist: set --config.data.path (or AVTCA_RAVDESS_DIR) to "
                    "the RAVDESS speech audio")
  try:
    data = audio_data.load_ravdess_audio(path)
  except ValueError as error:
    raise DataError(f"audio folder {path!r}: {error}") from error
  if len(data["label"]) == 0:
    raise DataError(f"audio folder {path!r} holds no RAVDESS audio files")
  check_classes(config, datasets.RAVDESS.class_names)
  parts = audio_data.split_by_protocol(data, config.data.protocol, dataset_of(config))
  if config.data.get("train_on_validation", False):
    parts = with_validation_in_train(parts)  # before normalising: 'train' statistics cover the 20 actors
  normalize = config.data.get("normalize", "none")
  try:
    mfcc, stats = audio_data.normalize_mfcc(parts, normalize)  # 'train': statistics of the train actors
  except ValueError as error:
    raise DataError(f"config.data.{error}") from error
  arrays = {name: dict({k: v for k, v in part.items() if k != "stem"}, mfcc=mfcc[name])
            for name, part in parts.items()}
  source = ArraySource(arrays, process_index, process_count)
  source.mfcc_normalization = dict(mode=normalize, **stats)  # the trainer saves it for predict
  return source


def create_source(config, process_index: int = 0, process_count: int = 1):
  """The data source of `config.data.source`; raises DataError for a missing dataset, a protocol the dataset
  does not have, or a config.num_classes that is not the dataset's (no compilation)."""
  kind = config.data.source
  if kind in ("synthetic", "audio_folder"):
    check_protocol(config, dataset_of(config))
  if kind == "synthetic":
    return _synthetic_source(config, process_index, process_count)
  if kind == "audio_folder":
    return _audio_folder_source(config, process_index, process_count)
  if kind == "tfds":
    return TfdsSource(config, process_index, process_count)
  raise DataError(f"unknown data source {kind!r}; expected 'tfds', 'audio_folder' or 'synthetic'")
