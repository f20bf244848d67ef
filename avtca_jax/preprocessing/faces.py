"""Face crops: 15 frames evenly spread over the 3.6 s audio window, MTCNN's largest face, 224x224 RGB uint8.

Alignment (docs/preprocessing.md has the reasoning): the window is [start, start + 3.6 s) on the recording's
time axis, where `start` is the audio's centre-crop offset (0 for clips shorter than 3.6 s, whose audio is
zero padded at the end). Frame i is the video frame shown at the centre of the i-th of 15 equal segments,
t_i = start + (i + 0.5) * 3.6 / 15, that is frame floor(t_i * fps) with the video's real fps. So frame i and
the MFCC frames around t_i describe the same instant. Positions past the last frame (the audio there is
padding) repeat the last frame, or are black with `past_end='zeros'` (the original's behaviour).

Speed, compared with the plain pass (decode every frame to BGR, MTCNN once per full-resolution frame):
frames are grabbed without colour conversion and only the needed ones retrieved; detection runs on frames
downscaled to `detect_max_side`, all frames of a clip in one batched MTCNN call; boxes are scaled back and
the crop is cut from the full-resolution frame. Frames the downscaled pass misses are retried at full
resolution before any filling, so no face the full-resolution pass finds is lost.

This module imports torch (on first detection) but never tensorflow: with the CUDA torch build, importing
torchvision after tensorflow in one process segfaults (inside triton).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from pathlib import Path

import cv2
import numpy as np

from avtca_jax.preprocessing.config import PreprocessConfig


class VideoError(ValueError):
  """A video that cannot be decoded; the message starts with the file name."""


class NoFaceError(ValueError):
  """No face in any frame of a clip; the message starts with the file name."""


def frame_times(window_start: float, config: PreprocessConfig = PreprocessConfig()) -> np.ndarray:
  """Seconds of the `num_frames` sample points: centres of equal segments of the window."""
  seg = config.clip_seconds / config.num_frames
  return window_start + (np.arange(config.num_frames) + 0.5) * seg


def frame_indices(window_start: float, fps: float, config: PreprocessConfig = PreprocessConfig()) -> np.ndarray:
  """Video frame shown at each sample time (frame k is on screen during [k/fps, (k+1)/fps))."""
  # The small epsilon keeps t * fps that is an integer up to rounding on the frame it names.
  return np.floor(frame_times(window_start, config) * fps + 1e-6).astype(np.int64)


def read_frames(path: str | os.PathLike, indices_for_fps) -> tuple[np.ndarray, dict[int, np.ndarray], float, int]:
  """Decode the frames a clip needs, in one sequential pass.

  `indices_for_fps(fps)` gives the wanted frame indices once the real fps is known. Returns (wanted indices,
  {index: RGB frame} for the wanted frames that exist plus the last frame of the video, fps, number of
  decoded frames). Frames are grab()bed without colour conversion and only the needed ones retrieve()d;
  sequential decoding is frame-accurate, unlike seeking in H.264. Raises VideoError naming the file for a file
  OpenCV cannot open, or whose decoding stops before the frame count its header declares.
  """
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: video file not found")
  cap = cv2.VideoCapture(str(path))
  try:
    if not cap.isOpened():
      raise VideoError(f"{path}: cannot open the video (truncated, corrupt or not a video file)")
    fps = cap.get(cv2.CAP_PROP_FPS)
    declared = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    if not fps or not math.isfinite(fps) or fps <= 0:
      raise VideoError(f"{path}: the video reports no frame rate (truncated, corrupt or not a video file)")
    wanted = np.asarray(indices_for_fps(fps), np.int64)
    wanted_set = set(int(i) for i in wanted)
    # Every frame from here on is retrieved, so the last frame is at hand for positions past the end.
    tail_from = declared - 3 if declared > 0 else 0
    frames: dict[int, np.ndarray] = {}
    last = None
    index = 0
    while cap.grab():
      if index in wanted_set or index >= tail_from:
        ok, bgr = cap.retrieve()
        if not ok or bgr is None:
          raise VideoError(f"{path}: frame {index} could not be decoded (corrupt file)")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if index in wanted_set:
          frames[index] = rgb
        last = (index, rgb)
      index += 1
    decoded = index
  finally:
    cap.release()
  if decoded == 0:
    raise VideoError(f"{path}: no frame could be decoded (truncated, corrupt or not a video file)")
  if declared > 0 and decoded < declared - 2:
    raise VideoError(f"{path}: decoding stopped after {decoded} of the {declared} frames the file declares "
                     "(truncated or corrupt file)")
  if last is None or last[0] != decoded - 1:
    raise VideoError(f"{path}: the last frame could not be decoded (corrupt file)")
  frames[last[0]] = last[1]
  return wanted, frames, float(fps), decoded


def _torch_device(device: str | None) -> str:
  import torch
  if device:
    return device
  return "cuda" if torch.cuda.is_available() else "cpu"


@functools.lru_cache(maxsize=4)
def _mtcnn(min_face_size: int, thresholds: tuple, scale_factor: float, device: str):
  from facenet_pytorch import MTCNN  # bundled pnet/rnet/onet weights: no download
  return MTCNN(min_face_size=min_face_size, thresholds=list(thresholds), factor=scale_factor,
               select_largest=True, keep_all=True, device=device)


def _largest_boxes(mtcnn, images) -> list[np.ndarray | None]:
  """Largest box (x1, y1, x2, y2) per image of one size, or None. One batched MTCNN call."""
  batch = np.ascontiguousarray(np.stack(images))
  boxes, _ = mtcnn.detect(batch)
  out = []
  for b in boxes:  # object array: None or (n, 4)
    if b is None:
      out.append(None)
      continue
    b = np.asarray(b, dtype=float).reshape(-1, 4)
    if len(b) == 0:
      out.append(None)
      continue
    areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    out.append(b[int(np.argmax(areas))])
  return out


def detect_largest_faces(frames: list[np.ndarray], config: PreprocessConfig = PreprocessConfig()
                         ) -> list[np.ndarray | None]:
  """Largest-face box in full-resolution pixel coordinates for each RGB frame (all of one size), or None."""
  if not frames:
    return []
  device = _torch_device(config.device)
  h, w = frames[0].shape[:2]
  scale = 1.0
  if config.detect_max_side and max(h, w) > config.detect_max_side:
    scale = config.detect_max_side / max(h, w)
  if scale < 1.0:
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames]
    boxes = _largest_boxes(_mtcnn(config.min_face_size, config.thresholds, config.scale_factor, device), small)
    sx, sy = w / size[0], h / size[1]
    boxes = [None if b is None else b * np.array([sx, sy, sx, sy]) for b in boxes]
  else:
    boxes = _largest_boxes(_mtcnn(config.min_face_size, config.thresholds, config.scale_factor, device), frames)
  missed = [i for i, b in enumerate(boxes) if b is None]
  if missed and scale < 1.0 and config.full_resolution_retry:
    retry = _largest_boxes(_mtcnn(20, (0.6, 0.7, 0.7), 0.709, device), [frames[i] for i in missed])
    for i, b in zip(missed, retry):
      boxes[i] = b
  return boxes


def crop_box(box, frame_shape, margin: float = 0.0) -> tuple[int, int, int, int]:
  """Integer (x1, y1, x2, y2) with `margin` (fraction of the box size per side), clipped to the frame."""
  h, w = frame_shape[:2]
  x1, y1, x2, y2 = (float(v) for v in box)
  mx, my = margin * (x2 - x1), margin * (y2 - y1)
  x1, y1, x2, y2 = x1 - mx, y1 - my, x2 + mx, y2 + my
  x1, y1 = int(np.clip(round(x1), 0, w - 1)), int(np.clip(round(y1), 0, h - 1))
  x2, y2 = int(np.clip(round(x2), x1 + 1, w)), int(np.clip(round(y2), y1 + 1, h))
  return x1, y1, x2, y2


@dataclasses.dataclass
class FaceCrops:
  face_crops: np.ndarray  # (num_frames, crop, crop, 3) uint8 RGB
  frame_indices: np.ndarray  # (num_frames,) int64, video frame used (clamped to the last frame when past end)
  boxes: np.ndarray  # (num_frames, 4) int32 crop boxes in full-resolution pixels (-1 where filled/black)
  face_found: np.ndarray  # (num_frames,) bool, a face was detected in this frame itself
  filled_frames: int  # frames with no face, filled from the nearest frame of the same clip with one
  frames_past_end: int  # window positions after the last video frame
  fps: float
  video_frames: int


def extract_faces(video_path: str | os.PathLike, window_start: float = 0.0,
                  config: PreprocessConfig = PreprocessConfig()) -> FaceCrops:
  """Face crops for the window [window_start, window_start + clip_seconds) of a video.

  A frame without a face gets the crop of the nearest frame (by position; the earlier one on a tie) of the
  same clip that has one; a clip without any face raises NoFaceError naming the file.
  """
  video_path = Path(video_path)
  size = config.crop_size
  wanted, frames, fps, decoded = read_frames(video_path, lambda fps: frame_indices(window_start, fps, config))
  past_end = wanted >= decoded
  used = np.minimum(wanted, decoded - 1)
  # Detect once per distinct frame that will be shown.
  shown = sorted(set(int(i) for i, p in zip(used, past_end) if not (p and config.past_end == "zeros")))
  if not shown:
    raise NoFaceError(f"{video_path}: the window starting at {window_start:.3f} s has no video frame")
  boxes_by_frame = dict(zip(shown, detect_largest_faces([frames[i] for i in shown], config)))

  n = config.num_frames
  crops = np.zeros((n, size, size, 3), np.uint8)
  boxes = np.full((n, 4), -1, np.int32)
  found = np.zeros(n, bool)
  black = past_end & (config.past_end == "zeros")
  for k in range(n):
    if black[k]:
      continue
    box = boxes_by_frame[int(used[k])]
    if box is None:
      continue
    frame = frames[int(used[k])]
    x1, y1, x2, y2 = crop_box(box, frame.shape, config.margin)
    crops[k] = cv2.resize(frame[y1:y2, x1:x2], (size, size), interpolation=cv2.INTER_LINEAR)
    boxes[k] = (x1, y1, x2, y2)
    found[k] = True
  if not found.any():
    raise NoFaceError(f"{video_path}: no face found in any of the {len(shown)} frames sampled from the "
                      f"{config.clip_seconds} s window (frames {shown[0]}..{shown[-1]})")
  have = np.flatnonzero(found)
  filled = 0
  for k in range(n):
    if found[k] or black[k]:
      continue
    nearest = have[np.argmin(np.abs(have - k))]  # argmin takes the first (earlier) on a tie
    crops[k] = crops[nearest]
    filled += 1
  return FaceCrops(crops, used.astype(np.int64), boxes, found, filled, int(past_end.sum()), float(fps), int(decoded))
