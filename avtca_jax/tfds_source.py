"""The `tfds` data source: a dataset's builder (`config.data.name`) through `avtca_jax.input_pipeline`.

Training batches of epoch e come from a pipeline seeded with (seed, e) that reads one epoch; a resumed run
rebuilds it and skips the batches already consumed, so the data position follows from the step alone.
Each process reads its own slice of every split (input_pipeline.host_split, balanced to one example), so
every process runs the steps of the shortest slice per epoch (`steps_per_epoch`): each epoch leaves out at
most one local batch plus one clip per process, a different random subset each epoch (the order is
shuffled). Evaluation reads every clip exactly once on any number of processes: each process pads its slice
with masked clips up to the longest slice's number of batches.

Importing this module is cheap: TensorFlow is imported when a `TfdsSource` is created. `DataError`, the
error of every data source, is defined here, below `avtca_jax.data_sources` (which re-exports it and
dispatches to this module), so the two modules do not import each other.
"""

from __future__ import annotations

import os

import numpy as np


class DataError(ValueError):
  """A dataset that is missing or does not fit the config (raised before any compilation)."""


class TfdsSource:
  def __init__(self, config, process_index: int = 0, process_count: int = 1):
    # TensorFlow's C++ start-up lines stay quiet unless the caller chose a log level.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from avtca_jax import input_pipeline

    self._pipeline = input_pipeline
    self.config = config
    self.process_index, self.process_count = process_index, process_count
    self.kwargs = dict(data_dir=config.data.data_dir or None, config_name=config.data.builder_config or None)
    builder_config = config.data.builder_config
    try:
      self.info = input_pipeline.dataset_info(config.data.name, **self.kwargs)
    except FileNotFoundError as error:
      if builder_config != "generated":
        raise DataError(f"dataset {config.data.name}/{builder_config} is not available: {error}") from error
      self._build_generated()
      self.info = input_pipeline.dataset_info(config.data.name, **self.kwargs)
    except Exception as error:  # an unknown builder or config name, an unreadable directory
      raise DataError(f"dataset {config.data.name!r} (config {builder_config!r}, data_dir "
                      f"{config.data.data_dir or 'tfds default'}): {error}") from error
    self._check_dataset()

  @property
  def class_names(self):
    """The dataset's class names, in label order (the built dataset's ClassLabel)."""
    return tuple(self.info["class_names"])

  def _check_dataset(self):
    """config.num_classes and config.data.protocol against the built dataset (one line each)."""
    names = self.info["class_names"]
    if self.config.num_classes != len(names):
      raise DataError(f"config.num_classes={self.config.num_classes} but dataset {self.config.data.name!r} has "
                      f"{len(names)} classes ({', '.join(names)}): set --config.num_classes={len(names)}")
    dataset, protocol = self.info["dataset"], self.config.data.protocol
    if not dataset.is_protocol(protocol):
      raise DataError(f"config.data.protocol={protocol!r} is not a protocol of dataset {dataset.name!r}: expected "
                      f"one of {dataset.protocols}, paper_random or inner_<protocol>_<1..4>")

  def _build_generated(self):
    """The generated dataset needs no download: build it on first use (about a minute)."""
    import tensorflow_datasets as tfds
    from avtca_jax import datasets
    datasets.get(self.config.data.name).builder()  # registers the builder
    from absl import logging
    logging.info("building the generated dataset %s/generated (first run only)", self.config.data.name)
    builder = tfds.builder(self.config.data.name, data_dir=self.kwargs["data_dir"],
                           config=self.kwargs["config_name"])
    from avtca_jax import console
    if not console.is_verbose():  # tfds draws two progress bars per split (52 here); --verbose shows them
      tfds.display_progress_bar(False)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))

  def _stored_name(self, split: str) -> str:
    return f"{self.config.data.protocol}_{split}"

  def split_name(self, split: str) -> str:
    """The tfds split read for `split`; with `config.data.train_on_validation` the training split is
    '<protocol>_train+<protocol>_validation' and the validation split is empty ('')."""
    if self.config.data.get("train_on_validation", False) and split in ("train", "validation"):
      validation = self._stored_name("validation")
      has_validation = self.info["num_examples"].get(validation, 0) > 0
      if split == "validation":
        return ""
      return self._stored_name("train") + (f"+{validation}" if has_validation else "")
    return self._stored_name(split)

  def num_examples(self, split: str) -> int:
    name = self.split_name(split)
    return sum(int(self.info["num_examples"].get(part, 0)) for part in name.split("+")) if name else 0

  def steps_per_epoch(self, global_batch: int) -> int:
    """Training steps per epoch on every process: the shortest host slice's full local batches."""
    return self._pipeline.num_batches(self.config.data.name, self.split_name("train"), batch_size=global_batch,
                                      train=True, process_count=self.process_count, **self.kwargs)

  def split_arrays(self, split: str):
    """The whole split decoded in host memory, in the stored order, on every process (`DeviceCache`)."""
    return self._pipeline.load_split(self.config.data.name, self.split_name(split), **self.kwargs)

  @property
  def has_frames(self) -> bool:
    return True

  def frame_shape(self):
    return (self.info["num_frames"], self.info["image_size"], self.info["image_size"], 3)

  def train_batches(self, epoch: int, skip: int, global_batch: int, seed: int):
    ds = self._pipeline.create_dataset(
        self.config.data.name, self.split_name("train"), batch_size=global_batch, train=True,
        seed=int(np.random.default_rng([seed, epoch]).integers(2**31)), num_epochs=1,
        cache=self.config.data.cache, process_index=self.process_index, process_count=self.process_count,
        **self.kwargs)
    return iter(ds.skip(skip).as_numpy_iterator())

  def eval_batches(self, split: str, global_batch: int):
    ds = self._pipeline.create_dataset(
        self.config.data.name, self.split_name(split), batch_size=global_batch, train=False,
        process_index=self.process_index, process_count=self.process_count, **self.kwargs)
    return ds.as_numpy_iterator()
