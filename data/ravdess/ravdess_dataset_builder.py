"""tfds builder for RAVDESS speech clips: 15 face crops + MFCCs per clip (docs/data.md).

    python -m data.ravdess.build data/ravdess --config av --manual_dir ~/RAVDESS --data_dir ~/tensorflow_datasets
    python -m data.ravdess.build data/ravdess --config generated      # synthetic, no download needed

(`tfds build data/ravdess ...` takes the same flags, but tfds 4.9.10's `tfds` script needs apache_beam to
start; data/ravdess/build.py runs its build command without it.) From Python:

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
import json
import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import numpy as np
import tensorflow_datasets as tfds

from avtca_jax import splits as splits_lib
from avtca_jax.preprocessing.audio import MFCC_SHAPE
from avtca_jax.preprocessing.config import NUM_FRAMES
from avtca_jax.preprocessing.names import EMOTIONS

JPEG_QUALITY = 90
FRAME_ENCODINGS = ("jpeg", "raw")
SPLIT_PARTS = ("train", "validation", "test")


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
    RavdessConfig(name="generated", source="generated", image_size=64, clips_per_class=2,
                  description="Synthetic, learnable stand-in (24 actors x 8 classes x 2 clips, 64 px); "
                              "no download needed."),
]


def _actor_split(actor: int) -> str:
  return f"actor{actor:02d}"


def protocol_split_names() -> List[str]:
  """Every protocol split name `resolve_split` understands."""
  names = [f"{p}_{part}" for p in splits_lib.ACTOR_PROTOCOLS for part in SPLIT_PARTS]
  return names + ["paper_random_train", "paper_random_test", "all"]


def resolve_split(name: str, available: Optional[Iterable[str]] = None) -> str:
  """A protocol split name -> a tfds split string over the stored splits.

  'fold1_train' -> 'actor09+actor10+...+actor24'; 'original_test' -> 'actor01+...+actor04'; 'all' -> every
  actor split. Stored split names ('actor05', 'paper_random_test') and tfds split expressions
  ('actor05[:10]', 'a+b') pass through unchanged. `available` (the stored split names) drops actors that
  have no clips (a partial download); an error names the split when nothing is left.
  """
  available = None if available is None else set(available)
  if name == "all":
    actors = list(splits_lib.ACTORS)
  elif "_" in name and name.rsplit("_", 1)[0] != "paper_random" and splits_lib.is_protocol(name.rsplit("_", 1)[0]):
    protocol, part = name.rsplit("_", 1)
    if part not in SPLIT_PARTS:
      raise ValueError(f"unknown split {name!r}: part must be one of {SPLIT_PARTS}")
    actors = splits_lib.fold_actors(protocol)[part]
  else:
    return name
  stored = [_actor_split(a) for a in actors]
  if available is not None:
    stored = [s for s in stored if s in available]
    if not stored:
      raise ValueError(f"split {name!r} needs actors {actors}, none of which is in this dataset "
                       f"(stored splits: {sorted(available)})")
  return "+".join(stored)


class Builder(tfds.core.GeneratorBasedBuilder):
  """RAVDESS speech: face crops, MFCCs, emotion label, actor, modality, file stem."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Per-actor splits, JPEG frames, MFCCs from avtca_jax.preprocessing."}
  BUILDER_CONFIGS = BUILDER_CONFIGS
  DEFAULT_CONFIG_NAME = "av"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download the RAVDESS speech videos (Video_Speech_Actor_01.zip .. Video_Speech_Actor_24.zip) and the speech
  audio (Audio_Speech_Actors_01-24.zip) from https://zenodo.org/record/1188976 and unzip them all into one
  folder (manual_dir): Actor_01/ .. Actor_24/ holding the .mp4 files and the .wav files (the zips' own layout;
  .mp4 and .wav may share one Actor_XX folder or sit in separate trees, any depth). A video with no .wav of
  its take uses its own soundtrack (01 clips only). Skipped clips are listed in preprocessing_report.json
  next to the built dataset and in the dataset's metadata.
  """

  def __init__(self, *, preprocess_cache_dir: Optional[str] = None, preprocess_workers: Optional[int] = None,
               **kwargs):
    """preprocess_cache_dir: where per-clip preprocessing results are cached (default:
    <download_dir>/ravdess_preprocessed); an interrupted build resumes from it. preprocess_workers: worker
    processes for face detection (default: the preprocessing's own default). Both can also be set with the
    environment variables AVTCA_PREPROCESS_CACHE_DIR and AVTCA_PREPROCESS_WORKERS (for `tfds build`)."""
    self._preprocess_cache_dir = preprocess_cache_dir or os.environ.get("AVTCA_PREPROCESS_CACHE_DIR")
    workers = preprocess_workers or os.environ.get("AVTCA_PREPROCESS_WORKERS")
    self._preprocess_workers = int(workers) if workers else None
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    if config.frame_encoding not in FRAME_ENCODINGS:
      raise ValueError(f"frame_encoding must be one of {FRAME_ENCODINGS}, got {config.frame_encoding!r}")
    shape = (NUM_FRAMES, config.image_size, config.image_size, 3)
    if config.frame_encoding == "jpeg":
      frames = tfds.features.Video(shape=shape, encoding_format="jpeg", doc="RGB face crops, JPEG per frame")
    else:
      frames = tfds.features.Tensor(shape=shape, dtype=np.uint8, encoding=tfds.features.Encoding.BYTES,
                                    doc="RGB face crops, raw uint8")
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "frames": frames,
            "mfcc": tfds.features.Tensor(shape=MFCC_SHAPE, dtype=np.float32,
                                         doc="(time, coefficient) librosa MFCCs, 3.6 s at 22050 Hz"),
            "label": tfds.features.ClassLabel(names=EMOTIONS),
            "actor": tfds.features.Scalar(dtype=np.int32, doc="RAVDESS actor id, 1..24"),
            "modality": tfds.features.Scalar(dtype=np.int32, doc="1 audio-video, 2 video-only"),
            "stem": tfds.features.Text(doc="source file name without extension"),
            "filled_frames": tfds.features.Scalar(
                dtype=np.int32, doc="frames with no face found, filled from the nearest frame with one"),
        }),
        supervised_keys=None,
        homepage="https://zenodo.org/record/1188976",
        citation="""@article{livingstone2018ravdess,
  title={The Ryerson Audio-Visual Database of Emotional Speech and Song (RAVDESS)},
  author={Livingstone, Steven R and Russo, Frank A}, journal={PLoS ONE}, volume={13}, number={5},
  pages={e0196391}, year={2018}}""",
        metadata=tfds.core.MetadataDict(),
    )

  # ---- generation -------------------------------------------------------------------------------------

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config = self.builder_config
    if config.source == "generated":
      records = _generated_records(config)
      report = {"source": "generated", "clips_written": len(records), "skipped": []}
    elif config.source == "ravdess":
      cache_dir = Path(self._preprocess_cache_dir or (Path(dl_manager.download_dir) / "ravdess_preprocessed"))
      records, report = _ravdess_records(Path(dl_manager.manual_dir), cache_dir, config,
                                         self._preprocess_workers)
    else:
      raise ValueError(f"unknown source {config.source!r}")
    if not records:
      raise ValueError(f"no usable clips (report: {json.dumps(report)[:2000]})")
    records.sort(key=lambda r: r["stem"])
    self.info.metadata["preprocessing"] = _report_summary(report)
    Path(self.data_path).mkdir(parents=True, exist_ok=True)
    (Path(self.data_path) / "preprocessing_report.json").write_text(json.dumps(report, indent=1, default=str))

    by_actor: Dict[int, List[dict]] = {}
    for r in records:
      by_actor.setdefault(r["actor"], []).append(r)
    generators = {_actor_split(a): self._generate_examples(rs) for a, rs in sorted(by_actor.items())}
    # The paper's random 80/20 clip split, over the clips in canonical (stem) order.
    parts = splits_lib.assign_split("paper_random", [r["actor"] for r in records])
    for part in ("train", "test"):
      chosen = [r for r, p in zip(records, parts) if p == part]
      if chosen:
        generators[f"paper_random_{part}"] = self._generate_examples(chosen)
    return generators

  def _generate_examples(self, records: List[dict]):
    config = self.builder_config
    for r in records:
      clip = r["load"]()
      crops = np.asarray(clip["face_crops"], np.uint8)
      expected = (NUM_FRAMES, config.image_size, config.image_size, 3)
      if crops.shape != expected:
        raise ValueError(f"{r['stem']}: face crops {crops.shape}, expected {expected}")
      frames = _encode_jpeg_frames(crops) if config.frame_encoding == "jpeg" else crops
      yield r["stem"], {
          "frames": frames,
          "mfcc": np.asarray(clip["mfcc"], np.float32),
          "label": int(r["label"]),
          "actor": int(r["actor"]),
          "modality": int(r["modality"]),
          "stem": r["stem"],
          "filled_frames": int(r.get("filled_frames", 0)),
      }

  # ---- reading ------------------------------------------------------------------------------------------

  def as_dataset(self, split=None, *args, **kwargs):
    """As tfds's, with protocol split names ('fold1_train', 'original_test', ...) resolved first."""
    available = list(self.info.splits.keys())
    resolve = lambda s: resolve_split(s, available) if isinstance(s, str) else s
    if isinstance(split, (list, tuple)):
      split = type(split)(resolve(s) for s in split)
    elif isinstance(split, dict):
      split = {k: resolve(v) for k, v in split.items()}
    else:
      split = resolve(split)
    return super().as_dataset(split, *args, **kwargs)


def _encode_jpeg_frames(crops: np.ndarray) -> List[bytes]:
  import cv2
  out = []
  for frame in crops:
    ok, buf = cv2.imencode(".jpg", frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
      raise ValueError("JPEG encoding failed")
    out.append(buf.tobytes())
  return out


def _generated_records(config: RavdessConfig) -> List[dict]:
  """Synthetic clips, made once here (they are written twice: actor split and paper_random split)."""
  from avtca_jax import synthetic
  records = []
  for actor in splits_lib.ACTORS:
    for label in range(len(EMOTIONS)):
      for index in range(config.clips_per_class):
        clip = synthetic.make_clip(label, actor, index, config.image_size, config.seed)
        records.append(dict(stem=f"generated-{label + 1:02d}-{index:02d}-{actor:02d}", label=label, actor=actor,
                            modality=1, filled_frames=0, load=lambda clip=clip: clip))
  return records


def _ravdess_records(manual_dir: Path, cache_dir: Path, config: RavdessConfig, workers: Optional[int]):
  """Preprocess manual_dir through the resumable per-clip cache; (records, report)."""
  from . import preprocessed  # the package's sibling module (also when `tfds build` loads this file)
  return preprocessed.records(manual_dir, cache_dir, include_video_only=config.include_video_only,
                              image_size=config.image_size, workers=workers)


def _report_summary(report: dict) -> dict:
  """The part of the preprocessing report kept in the dataset's metadata.json (small, JSON-safe)."""
  keep = {k: v for k, v in report.items() if isinstance(v, (int, float, str, bool))}
  skipped = report.get("skipped", [])
  keep["num_skipped"] = len(skipped)
  keep["skipped"] = skipped[:200]
  return json.loads(json.dumps(keep, default=str))
