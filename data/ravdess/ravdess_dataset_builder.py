"""tfds builder for RAVDESS speech clips: 15 face crops + MFCCs per clip (docs/data.md).

    python -m data.ravdess.build data/ravdess --config av --manual_dir ~/RAVDESS --data_dir ~/tensorflow_datasets
    python -m data.ravdess.build data/ravdess --config generated      # synthetic, no download needed

(`tfds build data/ravdess ...` is the same command; data/ravdess/build.py adds one-line errors. Either takes
`--beam_pipeline_options=runner=...` to preprocess the clips on Apache Beam: docs/data.md "Large
datasets".) From Python:

    import data.ravdess  # registers 'ravdess'
    builder = tfds.builder('ravdess/av', data_dir=DATA_DIR)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=RAVDESS_DIR, try_download_gcs=False))
    ds = builder.as_dataset(split='fold1_train')

Stored splits are one per actor ('actor01' .. 'actor24') plus 'paper_random_train' / 'paper_random_test';
protocol splits ('fold1_train', 'original_test', 'released_validation', ...) are unions of actor splits,
resolved by `resolve_split` (and by `Builder.as_dataset`, so `tfds.load('ravdess', split='fold3_test')`
works). Each clip is written twice (its actor split, one paper_random split); protocols add no copies.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable, List, Optional

import tensorflow_datasets as tfds

from avtca_jax import datasets, tfds_builder
from avtca_jax.tfds_builder import FRAME_ENCODINGS, JPEG_QUALITY  # noqa: F401 (this builder's settings)

DATASET = datasets.RAVDESS
EMOTIONS = DATASET.class_names
SPLIT_PARTS = datasets.PARTS


@dataclasses.dataclass
class RavdessConfig(tfds.core.BuilderConfig):
  """include_video_only: also store the video-only (02) copy of each take (same audio, duplicated utterance).
  frame_encoding: 'jpeg' (quality JPEG_QUALITY, per frame) or 'raw' (uint8 bytes). source: 'ravdess' reads
  manual_dir; 'generated' makes synthetic clips (avtca_jax.synthetic) with `clips_per_class` clips per class
  and actor, at `image_size`."""

  include_video_only: bool = False
  frame_encoding: str = "jpeg"
  image_size: int = 224
  source: str = "ravdess"
  clips_per_class: int = 2
  seed: int = 0


BUILDER_CONFIGS = [
    RavdessConfig(name="av", description="Audio-video (01) speech clips only; 224 px face crops, JPEG frames."),
    RavdessConfig(name="av_with_video_only", include_video_only=True,
                  description="Also the video-only (02) copies, as the original code used (each utterance twice)."),
    RavdessConfig(name="generated", source="generated", image_size=64, clips_per_class=2, version="1.1.0",
                  release_notes={"1.1.0": "A class-dependent noise band in the audio (avtca_jax.synthetic), the "
                                           "generator of the in-memory synthetic source too."},
                  description="Synthetic, learnable stand-in (24 actors x 8 classes x 2 clips, 64 px); "
                              "no download needed."),
]


def protocol_split_names() -> List[str]:
  """Every protocol split name `resolve_split` understands."""
  return DATASET.protocol_split_names()


def resolve_split(name: str, available: Optional[Iterable[str]] = None) -> str:
  """A protocol split name -> a tfds split string over the stored splits (`avtca_jax.datasets.Dataset`).

  'fold1_train' -> 'actor09+actor10+...+actor24'; 'original_test' -> 'actor01+...+actor04'; 'all' -> every
  actor split. Stored split names ('actor05', 'paper_random_test') and tfds split expressions
  ('actor05[:10]', 'a+b') pass through unchanged. `available` (the stored split names) drops actors that
  have no clips (a partial download); an error names the split when nothing is left.
  """
  return DATASET.resolve_split(name, available)


class Builder(tfds_builder.ClipBuilder):
  """RAVDESS speech: face crops, MFCCs, emotion label, actor, modality, file stem."""

  DATASET = DATASET
  BUILDER_CONFIGS = BUILDER_CONFIGS
  HOMEPAGE = "https://zenodo.org/record/1188976"
  CITATION = """@article{livingstone2018ravdess,
  title={The Ryerson Audio-Visual Database of Emotional Speech and Song (RAVDESS)},
  author={Livingstone, Steven R and Russo, Frank A}, journal={PLoS ONE}, volume={13}, number={5},
  pages={e0196391}, year={2018}}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download the RAVDESS speech videos (Video_Speech_Actor_01.zip .. Video_Speech_Actor_24.zip) and the speech
  audio (Audio_Speech_Actors_01-24.zip) from https://zenodo.org/record/1188976 and unzip them all into one
  folder (manual_dir): Actor_01/ .. Actor_24/ holding the .mp4 files and the .wav files (the zips' own layout;
  .mp4 and .wav may share one Actor_XX folder or sit in separate trees, any depth). A video with no .wav of
  its take uses its own soundtrack (01 clips only). Skipped clips are listed in preprocessing_report.json
  next to the built dataset and in the dataset's metadata.
  """

  def _download_records(self, manual_dir: Path, cache_dir: Path):
    if self.builder_config.source != "ravdess":
      raise ValueError(f"unknown source {self.builder_config.source!r}")
    return tfds_builder.preprocessed_records(
        manual_dir, cache_dir, naming="ravdess", modalities=[1, 2] if self.builder_config.include_video_only else [1],
        image_size=self.builder_config.image_size, workers=self._preprocess_workers,
        missing_hint="download RAVDESS")

  def _download_sources(self, manual_dir: Path):
    if self.builder_config.source != "ravdess":
      raise ValueError(f"unknown source {self.builder_config.source!r}")
    return tfds_builder.listed_sources(
        manual_dir, naming="ravdess", modalities=[1, 2] if self.builder_config.include_video_only else [1],
        missing_hint="download RAVDESS")

  def generated_stem(self, label: int, actor: int, index: int) -> str:
    return f"generated-{label + 1:02d}-{index:02d}-{actor:02d}"
