"""Scalars to a JSON-lines log (metrics.jsonl) and TensorBoard event files in the workdir (process 0 only).

Both go through etils.epath, the path layer orbax and tfds use, so a gs://bucket/run workdir works. The
TensorBoard events are written here (TFRecord framing of `Event` protos with `simple_value` scalars, which
TensorBoard reads as its scalars plugin) instead of by `tf.summary`, whose writer goes through TensorFlow's
own file system layer and could not share the workdir's path layer.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from typing import Dict

from absl import logging
from etils import epath


def _crc32c_table():
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    table.append(crc)
  return table


_CRC32C = _crc32c_table()


def _masked_crc32c(data: bytes) -> int:
  """TFRecord's checksum: CRC-32C (Castagnoli), rotated and offset. Pure Python: a record is ~100 bytes."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  crc ^= 0xFFFFFFFF
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
  """One TFRecord: length, its masked CRC, the data, its masked CRC."""
  length = struct.pack("<Q", len(data))
  return length + struct.pack("<I", _masked_crc32c(length)) + data + struct.pack("<I", _masked_crc32c(data))


class MetricWriter:
  def __init__(self, workdir, enabled: bool = True, tensorboard: bool = True):
    self.enabled = enabled
    self._jsonl = None
    self._events = None
    if not enabled:
      return
    workdir = epath.Path(workdir)
    self._jsonl = (workdir / "metrics.jsonl").open("a")
    if tensorboard:
      try:  # the Event protos come with TensorFlow, which is optional for training (the GPU machine lacks it)
        from tensorflow.core.util import event_pb2
        from tensorflow.core.framework import summary_pb2
        self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
      except Exception as error:
        logging.warning("no TensorBoard events (%s); metrics.jsonl only", error)
        return
      (workdir / "tensorboard").mkdir(parents=True, exist_ok=True)
      name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}"  # TensorBoard's file pattern
      self._events = (workdir / "tensorboard" / name).open("wb")
      self._write_event(self._event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

  def _write_event(self, event):
    self._events.write(tfrecord(event.SerializeToString()))
    self._events.flush()

  def write(self, step: int, scalars: Dict[str, float]):
    if not self.enabled:
      return
    record = {"step": int(step), "time": round(time.time(), 3)}
    record.update({k: float(v) for k, v in scalars.items()})
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    if self._events is not None:
      summary = self._summary_pb2.Summary(value=[self._summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                                                 for k, v in scalars.items()])
      self._write_event(self._event_pb2.Event(wall_time=record["time"], step=int(step), summary=summary))

  def close(self):
    if self._jsonl is not None:
      self._jsonl.close()
    if self._events is not None:
      self._events.close()


def read_jsonl(path):
  return [json.loads(line) for line in epath.Path(path).read_text().splitlines() if line.strip()]
