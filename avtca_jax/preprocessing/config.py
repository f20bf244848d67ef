"""Settings of one preprocessing run. Every field changes the stored result, so the cache keys on all of them."""

from __future__ import annotations

import dataclasses
import json

from avtca_jax.preprocessing.audio import CLIP_SECONDS, SAMPLE_RATE

NUM_FRAMES = 15  # face crops per clip, spread over the audio window (the original's)


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
  # Audio (the original's contract).
  sample_rate: int = SAMPLE_RATE
  clip_seconds: float = CLIP_SECONDS  # the window shared by audio and frames
  # Frames.
  num_frames: int = NUM_FRAMES
  crop_size: int = 224
  # Extra context around the detected box, as a fraction of the box's width/height added on each side.
  # 0.0 is the original (MTCNN's tight box, no margin), which its checkpoints were trained on.
  margin: float = 0.0
  # Window positions after the last frame of a short clip (RAVDESS speech clips are 3.0-3.3 s, the window
  # 3.6 s, and the audio there is zero padding): 'hold' repeats the last frame, 'zeros' stores black frames
  # as the original did (its frames 96 and 103 were past the end of most clips).
  past_end: str = "hold"
  # Face detection (facenet-pytorch MTCNN, largest face). Frames are downscaled so their longer side is
  # `detect_max_side` pixels for detection (None: full resolution, as the original) and the boxes are mapped
  # back to full resolution for the crop. min_face_size is in detection pixels.
  detect_max_side: int | None = 320
  min_face_size: int = 40
  thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
  scale_factor: float = 0.709
  # Frames where the downscaled pass found nothing are tried once more at full resolution (MTCNN defaults),
  # so the speed-up never costs a face the original's full-resolution pass would find.
  full_resolution_retry: bool = True
  device: str | None = None  # None: 'cuda' when torch sees a GPU, else 'cpu'

  def __post_init__(self):
    if self.past_end not in ("hold", "zeros"):
      raise ValueError(f"past_end must be 'hold' or 'zeros', got {self.past_end!r}")
    if self.margin < 0:
      raise ValueError(f"margin must be >= 0, got {self.margin}")
    if self.num_frames < 1:
      raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
    object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))

  def to_json(self) -> str:
    """Canonical JSON of the settings that define the result; the cache keys on it. The device is left out:
    the same detector on another device gives boxes that differ by floating-point rounding only, so a cache
    written on one device serves the other."""
    d = dataclasses.asdict(self)
    d.pop("device")
    return json.dumps(d, sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> "PreprocessConfig":
    return cls(**json.loads(text))
