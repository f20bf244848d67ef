"""Scalars to a JSON-lines log (metrics.jsonl) and TensorBoard event files in the workdir (process 0 only)."""

from __future__ import annotations

import json
import os
import time
from typing import Dict

from absl import logging


class MetricWriter:
  def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True):
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    if not enabled:
      return
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    if tensorboard:
      try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import tensorflow as tf
        tf.config.set_visible_devices([], "GPU")
        self._tf = tf
        from tensorflow.core.framework import summary_pb2
        self._metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")).SerializeToString()
        self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))
      except Exception as error:  # TensorFlow is optional for training (the GPU machine lacks it)
        logging.warning("no TensorBoard events (%s); metrics.jsonl only", error)

  def write(self, step: int, scalars: Dict[str, float]):
    if not self.enabled:
      return
    record = {"step": int(step), "time": round(time.time(), 3)}
    record.update({k: float(v) for k, v in scalars.items()})
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      with self._tb.as_default(step=int(step)):
        for k, v in scalars.items():
          # tf.summary.write with the scalars plugin's metadata = tf.summary.scalar, without needing the
          # tensorboard package (not a dependency of tensorflow-cpu).
          self._tf.summary.write(k, self._tf.constant(float(v), self._tf.float32), metadata=self._metadata)
      self._tb.flush()

  def close(self):
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def read_jsonl(path: str):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
