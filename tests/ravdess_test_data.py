"""Small datasets built with the 'ravdess' tfds builder, shared by test_dataset.py and test_input_pipeline.py.

Each helper builds into a folder under the pytest session's base temp dir and reuses it when already
prepared, so the two test modules build each dataset once per session (per xdist worker).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SHARED_RAVDESS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ravdess"

# Real clips used: three of Actor 05 (with the 48 kHz audio of their takes), the re-encoded Actor 01 clip
# with the odd `_1` suffix (its own AAC soundtrack), a fake video-only (02) copy of one Actor 05 take, and a
# file whose name does not parse (must be reported, not fatal).
ACTOR05_TAKES = ("01-01-01-01-02-01-05", "01-01-06-01-01-01-05", "01-01-08-01-02-01-05")
ACTOR01_CLIP = "01-01-07-02-02-01-01_1"
VIDEO_ONLY_COPY = "02-01-06-01-01-01-05"
BAD_NAME = "interview-take-3.mp4"


def tiny_generated_config():
  from data.ravdess import RavdessConfig
  return RavdessConfig(name="generated_tiny", source="generated", image_size=32, clips_per_class=1,
                       description="test: 24 actors x 8 classes x 1 clip, 32 px")


def build_generated(base: Path):
  """The tiny generated dataset (192 clips); returns its prepared builder."""
  import tensorflow_datasets as tfds
  from data.ravdess import Builder
  builder = Builder(config=tiny_generated_config(), data_dir=str(base / "tfds_generated"))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder


def make_manual_dir(root: Path) -> Path:
  """A RAVDESS folder in the official layout (Actor_XX/ with .mp4 and audio side by side), as symlinks."""
  manual = root / "ravdess_manual"
  (manual / "Actor_05").mkdir(parents=True, exist_ok=True)
  (manual / "Actor_01").mkdir(parents=True, exist_ok=True)

  def link(target: Path, name: Path):
    if not name.exists():
      name.symlink_to(target)

  for stem in ACTOR05_TAKES:
    link(SHARED_RAVDESS / "video_actor05" / f"{stem}.mp4", manual / "Actor_05" / f"{stem}.mp4")
    audio = "03" + stem[2:]
    link(SHARED_RAVDESS / "audio_speech_48k_actor05" / f"{audio}.flac", manual / "Actor_05" / f"{audio}.flac")
  link(SHARED_RAVDESS / "video_actor05" / f"01{VIDEO_ONLY_COPY[2:]}.mp4", manual / "Actor_05" / f"{VIDEO_ONLY_COPY}.mp4")
  link(SHARED_RAVDESS / "video_other" / f"{ACTOR01_CLIP}.mp4", manual / "Actor_01" / f"{ACTOR01_CLIP}.mp4")
  link(SHARED_RAVDESS / "video_actor05" / f"{ACTOR05_TAKES[0]}.mp4", manual / "Actor_05" / BAD_NAME)
  return manual


def build_real(base: Path, config_name: str = "av"):
  """The real-clip dataset for `config_name` ('av' or 'av_with_video_only'); one shared preprocessing cache."""
  import tensorflow_datasets as tfds
  from data.ravdess import Builder
  manual = make_manual_dir(base)
  builder = Builder(config=config_name, data_dir=str(base / "tfds_real"),
                    preprocess_cache_dir=str(base / "preprocess_cache"), preprocess_workers=2)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual), try_download_gcs=False))
  return builder
