"""tf.data input pipeline over a dataset's tfds shards: per-host numpy batches (the trainer places them).

The trainer's calls:

    info = dataset_info('ravdess', data_dir=..., config_name='generated')
    ds = create_dataset('ravdess', 'fold1_train', batch_size=32, train=True, seed=0, data_dir=...,
                        config_name='generated')
    for batch in ds.as_numpy_iterator():         # this host's rows; steps.prefetch_to_devices places them
      ...                                         # on the devices (a bounded double buffer)

A batch is the batch contract (`avtca_jax.batch`): {'mfcc': float32 (b, 156, 10), 'frames': uint8
(b, 15, S, S, 3) RGB, 'label': int32 (b,), 'actor': int32 (b,), 'mask': bool (b,)} with
b = batch_size // jax.process_count() per host (the global batch once placed on the devices). 'mask' is
False only for the padding that fills the last evaluation batch (train=False), so every host yields the same
number of full-size batches.

Order of operations: per-host slice of the split (`host_split`, balanced to one example) -> interleaved,
file-shuffled reads -> [cache of the decoded clips] -> shuffle -> repeat -> decode -> [host augmentation]
-> batch -> prefetch. With `deterministic=True` (default) the order, and the host augmentation, depend only
on `seed`; `deterministic=False` lets tf.data return elements as they are ready (faster).

`load_split` reads a whole split into host memory; `data_sources.DeviceCache` then holds it on the devices
(replicated) and draws batches there: the fastest epochs when the split fits (`config.data.device_cache`).
"""

from __future__ import annotations

import collections
import math
from typing import Dict, List, Optional

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

from avtca_jax import augment, batch as batch_lib, datasets

_tensorflow_on_host = False


def _keep_tensorflow_on_the_host() -> None:
  """TensorFlow only feeds the host pipeline: it never takes accelerator memory. Called before the first
  builder is opened (every pipeline starts with `get_builder`), once per process."""
  global _tensorflow_on_host
  if _tensorflow_on_host:
    return
  _tensorflow_on_host = True
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TensorFlow's devices are already initialised by the caller; they own that choice
    pass


def get_builder(builder_name_or_dir: str = "ravdess", *, data_dir: Optional[str] = None,
                config_name: Optional[str] = None) -> tfds.core.DatasetBuilder:
  """A prepared builder: a registered name ('ravdess', 'crema_d/generated') or a dataset version folder."""
  _keep_tensorflow_on_the_host()
  path = epath.Path(builder_name_or_dir).expanduser()  # a local folder or gs://..., as tfds reads both
  if (path / "dataset_info.json").exists():
    return tfds.builder_from_directory(str(path))
  dataset = datasets.get(builder_name_or_dir)
  dataset.builder()  # registers the builder
  builder = tfds.builder(builder_name_or_dir, data_dir=data_dir, config=config_name)
  if not builder.is_prepared():
    config = builder.builder_config.name if builder.builder_config else ""
    raise FileNotFoundError(
        f"{builder.name}/{config} is not prepared in {builder.data_dir}; build it first (docs/data.md), e.g. "
        f"`python -m data.{dataset.package}.build --config {config_name or config} "
        f"--data_dir {data_dir or '~/tensorflow_datasets'}" + ("" if config == "generated" else
                                                                " --manual_dir <your download>") + "`")
  return builder


def dataset_of(builder) -> datasets.Dataset:
  """The dataset (class names, protocols) of a prepared builder."""
  return datasets.from_info(builder.info)


def _resolve(builder, split: str) -> str:
  """A protocol split, or several joined by '+' ('fold1_train+fold1_validation'), as stored splits."""
  return dataset_of(builder).resolve_split(split, list(builder.info.splits.keys()))


def _host_slices(builder, split: str, process_count: int) -> List[List[tuple]]:
  """Per host, its (stored split, start, stop) slices of `split`. Each stored part is cut into contiguous
  slices whose sizes follow a round-robin over the concatenation of the parts (as if global example g went
  to host g % process_count), so the hosts' totals differ by at most one example whatever the part sizes,
  and every host still reads a slice of every actor.

  tfds.split_for_jax_process cuts each part on its own, which gives the first hosts every part's remainder:
  with 3 hosts and the tiny generated fold-1 training split (16 actors of 8 clips) that is 48/48/32 clips,
  and the shortest host sets every host's steps per epoch.
  """
  slices: List[List[tuple]] = [[] for _ in range(process_count)]
  offset = 0  # examples in the parts before this one
  for part in _resolve(builder, split).split("+"):
    n = builder.info.splits[part].num_examples
    start = 0
    for i in range(process_count):
      size = len(range((i - offset) % process_count, n, process_count))  # j in [0, n): (offset + j) % P == i
      if size:
        slices[i].append((part, start, start + size))
      start += size
    offset += n
  return slices


def host_split_sizes(builder, split: str, process_count: int) -> List[int]:
  """Examples each host reads from `split` (`host_split`): the floor or the ceiling of total / process_count."""
  return [sum(stop - start for _, start, stop in host) for host in _host_slices(builder, split, process_count)]


def host_split(builder, split: str, process_index: Optional[int] = None, process_count: Optional[int] = None):
  """This host's slice of `split` as a tfds split string ('actor09[0:3]+actor10[2:5]+...'), balanced to
  within one example across hosts (`_host_slices`)."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if process_count == 1:
    return _resolve(builder, split)
  host = _host_slices(builder, split, process_count)[process_index]
  if not host:
    raise ValueError(f"split {split!r} has fewer examples than the {process_count} processes")
  return "+".join(f"{part}[{start}:{stop}]" for part, start, stop in host)


def dataset_info(builder_name_or_dir: str = "ravdess", *, data_dir: Optional[str] = None,
                 config_name: Optional[str] = None) -> Dict:
  """{'num_examples': {split: n} for every stored and protocol split, 'image_size', 'num_frames',
  'num_classes', 'class_names', 'frame_encoding', 'config', 'dataset' (its `datasets.Dataset`)}."""
  builder = get_builder(builder_name_or_dir, data_dir=data_dir, config_name=config_name)
  stored = {name: info.num_examples for name, info in builder.info.splits.items()}
  counts = dict(stored)
  dataset = dataset_of(builder)
  for name in dataset.protocol_split_names():
    try:
      counts[name] = sum(stored[part] for part in _resolve(builder, name).split("+"))
    except (ValueError, KeyError):  # protocol needs actors this (partial) dataset lacks
      counts[name] = 0
  frames = builder.info.features["frames"]
  return dict(num_examples=counts, image_size=int(frames.shape[1]), num_frames=int(frames.shape[0]),
              num_classes=builder.info.features["label"].num_classes,
              class_names=list(builder.info.features["label"].names),
              frame_encoding="jpeg" if isinstance(frames, tfds.features.Video) else "raw",
              config=builder.builder_config.name if builder.builder_config else None, dataset=dataset)


def _decode_frames(frames_feature, encoded):
  if isinstance(frames_feature, tfds.features.Video):
    frames = tf.map_fn(lambda b: tf.io.decode_jpeg(b, channels=3), encoded, fn_output_signature=tf.uint8)
  else:
    frames = frames_feature.decode_example(encoded)
  return tf.ensure_shape(frames, frames_feature.shape)


def create_dataset(builder_name_or_dir: str = "ravdess", split: str = "fold1_train", *, batch_size: int,
                   train: bool, seed: int = 0, data_dir: Optional[str] = None, config_name: Optional[str] = None,
                   num_epochs: Optional[int] = None, cache: bool = False, host_augment: bool = False,
                   deterministic: bool = True, shuffle_buffer: Optional[int] = None,
                   process_index: Optional[int] = None, process_count: Optional[int] = None,
                   prefetch: int = 2) -> tf.data.Dataset:
  """Per-host batches of `split` as a tf.data.Dataset of dicts (module docstring has the format).

  batch_size: the global batch; each host yields batch_size // process_count. train: shuffle files and
  examples, repeat (`num_epochs`, None = forever), drop the last partial batch. Evaluation (train=False)
  reads in order, once unless `num_epochs` says otherwise, and pads to full batches with mask=False.
  cache: keep the decoded split in host memory after the first pass. host_augment: the flip + rotation
  on the host (augment.tf_random_flip_and_rotate) instead of on the device. shuffle_buffer: clips held
  for shuffling (default 2048 JPEG clips, about 0.4 GB at 224 px; 256 raw clips, about 0.6 GB).
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if batch_size % process_count:
    raise ValueError(f"global batch {batch_size} is not divisible by the process count {process_count}")
  local_batch = batch_size // process_count
  if num_epochs is None and not train:
    num_epochs = 1
  builder = get_builder(builder_name_or_dir, data_dir=data_dir, config_name=config_name)
  frames_feature = builder.info.features["frames"]
  if shuffle_buffer is None:
    shuffle_buffer = 2048 if isinstance(frames_feature, tfds.features.Video) else 256

  options = tf.data.Options()
  options.deterministic = deterministic
  options.experimental_optimization.map_parallelization = True
  read_config = tfds.ReadConfig(shuffle_seed=seed, options=options, try_autocache=False,
                                interleave_cycle_length=16, interleave_block_length=1)
  ds = builder.as_dataset(split=host_split(builder, split, process_index, process_count),
                          shuffle_files=train, read_config=read_config,
                          decoders={"frames": tfds.decode.SkipDecoding()})

  dtypes = batch_lib.DTYPES

  def select(example):
    return {"mfcc": tf.cast(example["mfcc"], dtypes["mfcc"]), "frames": example["frames"],
            "label": tf.cast(example["label"], dtypes["label"]), "actor": tf.cast(example["actor"], dtypes["actor"]),
            "mask": tf.constant(True, dtypes["mask"])}

  def decode(example):
    return dict(example, frames=_decode_frames(frames_feature, example["frames"]))

  ds = ds.map(select, num_parallel_calls=tf.data.AUTOTUNE)
  if cache:
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE).cache()
  if train:
    # Shuffle, then repeat: epochs stay whole (every clip once per epoch when the buffer holds the split).
    # Shuffling still-encoded clips keeps the buffer small (a JPEG clip is about 10x smaller than raw).
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.repeat(num_epochs)
  elif num_epochs != 1:
    ds = ds.repeat(num_epochs)
  if not cache:
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
  if host_augment:
    def random_transform(index, example):
      clip_seed = tf.stack([tf.cast(seed, tf.int64), index])
      return dict(example, frames=augment.tf_random_flip_and_rotate(example["frames"], clip_seed))
    ds = ds.enumerate().map(random_transform, num_parallel_calls=tf.data.AUTOTUNE)
  if not train and num_epochs == 1:
    ds = _pad_to_full_batches(ds, builder, split, local_batch, process_index, process_count)
  ds = ds.batch(local_batch, drop_remainder=True if train else num_epochs == 1,
                num_parallel_calls=tf.data.AUTOTUNE)
  return ds.prefetch(prefetch)


def _pad_to_full_batches(ds, builder, split, local_batch, process_index, process_count):
  """Append mask=False examples so every host yields the same number of full batches (one epoch)."""
  sizes = host_split_sizes(builder, split, process_count)
  steps = math.ceil(max(sizes) / local_batch)
  padding = steps * local_batch - sizes[process_index]
  if padding == 0:
    return ds
  spec = ds.element_spec
  blank = {k: tf.zeros(s.shape, s.dtype) for k, s in spec.items()}
  blank["mask"] = tf.constant(False)
  return ds.concatenate(tf.data.Dataset.from_tensors(blank).repeat(padding))


def num_batches(builder_name_or_dir: str, split: str, *, batch_size: int, train: bool,
                data_dir: Optional[str] = None, config_name: Optional[str] = None,
                process_count: Optional[int] = None) -> int:
  """Batches per epoch that `create_dataset` yields on every host (train drops the remainder)."""
  process_count = jax.process_count() if process_count is None else process_count
  builder = get_builder(builder_name_or_dir, data_dir=data_dir, config_name=config_name)
  sizes = host_split_sizes(builder, split, process_count)
  local_batch = batch_size // process_count
  return min(sizes) // local_batch if train else math.ceil(max(sizes) / local_batch)


# ---- the whole split in host memory (for data_sources.DeviceCache) -------------------------------------


def load_split(builder_name_or_dir: str, split: str, *, data_dir: Optional[str] = None,
               config_name: Optional[str] = None) -> Dict[str, np.ndarray]:
  """The whole split as host numpy arrays (decoded), in the stored order: {'mfcc', 'frames', 'label', 'actor'}."""
  ds = create_dataset(builder_name_or_dir, split, batch_size=64, train=False, num_epochs=1,
                      data_dir=data_dir, config_name=config_name, process_index=0, process_count=1)
  parts = collections.defaultdict(list)
  for batch in ds.as_numpy_iterator():
    for k, v in batch.items():
      parts[k].append(v[batch["mask"]])
  return {k: np.concatenate(v) for k, v in parts.items() if k != "mask"}
