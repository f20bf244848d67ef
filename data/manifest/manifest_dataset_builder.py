"""tfds builder for a person's own clips, listed in a CSV manifest (docs/data.md "Your own clips").

    python -m data.manifest.build --manifest ~/my_clips/clips.csv --data_dir ~/tensorflow_datasets

From Python:

    from data.manifest import build_dataset
    folder = build_dataset("~/my_clips/clips.csv", data_dir=DATA_DIR)   # <data_dir>/manifest/<name>/1.0.0
    # or, as a tfds builder:
    from data.manifest import Builder, ManifestConfig
    builder = Builder(config=ManifestConfig(name="my_clips", manifest="/abs/clips.csv"), data_dir=DATA_DIR)
    builder.download_and_prepare()

The CSV's format and checks are `data/manifest/manifest.py`'s. The builder writes the same features and
splits as RAVDESS and CREMA-D (`avtca_jax.tfds_builder.ClipBuilder`: one stored split per speaker,
'speaker<id>', plus paper_random), and stores the dataset's own facts in the built dataset: the label's
ClassLabel names (the label list, in order) and `info.metadata['dataset']` (classes, speaker ids and names,
folds, the manifest's path and hash), from which `avtca_jax.datasets.from_info(builder.info)` makes its
`Dataset`. Read it back with `tfds.builder_from_directory(folder)` or `input_pipeline.create_dataset(folder,
'fold1_train', ...)`; configs/manifest.py trains on it.

Every manifest error (unknown label, missing file, duplicate row, a speaker in two folds, a class without
training clips) is raised before any face detection.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Optional

import tensorflow_datasets as tfds

from avtca_jax import datasets, tfds_builder

from . import manifest as manifest_lib
from .manifest import DATASET_NAME, SPLIT_FORMAT, VERSION, ManifestError, config_name

@dataclasses.dataclass
class ManifestConfig(tfds.core.BuilderConfig):
  """manifest: the CSV (absolute, or relative to manual_dir). labels: the label list (a file, one class per
  line, absolute or relative to the CSV's folder; or names separated by commas; '' = labels.txt beside the
  CSV if present, else the CSV's labels sorted). num_folds: speaker-independent folds made when the CSV has no
  fold column (fewer when there are fewer speakers). image_size: the stored face crops' size. frame_encoding:
  'jpeg' or 'raw'."""

  manifest: str = "manifest.csv"
  labels: str = ""
  num_folds: int = manifest_lib.DEFAULT_NUM_FOLDS
  image_size: int = 224
  frame_encoding: str = "jpeg"
  source: str = "manifest"
  clips_per_class: int = 0  # unused (ClipBuilder's generated configs only)
  seed: int = 0


BUILDER_CONFIGS = [
    ManifestConfig(name="default", description="manual_dir/manifest.csv (and manual_dir/labels.txt when present); "
                                               "224 px face crops, JPEG frames."),
]


class _ManualDir:
  """The download manager with `manual_dir` = the CSV's folder (tfds's own needs a manual_dir argument)."""

  def __init__(self, dl_manager, folder: Path):
    self._dl_manager, self.manual_dir = dl_manager, folder

  def __getattr__(self, name):
    return getattr(self._dl_manager, name)


class Builder(tfds_builder.ClipBuilder):
  """A CSV manifest of clips: face crops, MFCCs, the manifest's label, speaker id, clip name."""

  # The class names, speakers and folds are the manifest's: set per build (`_split_generators`) and read back
  # from the built dataset by `datasets.from_info`. Until then the ClassLabel has no names.
  UNREAD = datasets.Dataset(name=DATASET_NAME, class_names=None, groups=(), split_format=SPLIT_FORMAT, folds=((),),
                            package="manifest")
  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = {"1.0.0": "A CSV manifest: per-speaker splits, JPEG frames, MFCCs from avtca_jax.preprocessing."}
  BUILDER_CONFIGS = BUILDER_CONFIGS
  DEFAULT_CONFIG_NAME = "default"
  MODALITY_DOC = "1: a video with its audio (the manifest's audio file, or the video's own soundtrack)"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  A CSV with a header row and one row per clip: video, label, speaker (any grouping key), and optionally
  audio and fold; relative paths are relative to the CSV's folder (docs/data.md "Your own clips"). Give its
  path as the config's `manifest` (python -m data.manifest.build --manifest CSV), or put it in manual_dir as
  manifest.csv.
  """

  @property
  def DATASET(self) -> datasets.Dataset:  # noqa: N802 (ClipBuilder's name)
    return self.__dict__.get("_dataset") or self.UNREAD

  def as_dataset(self, *args, **kwargs):
    if "_dataset" not in self.__dict__ and self.is_prepared():
      self._dataset = datasets.from_info(self.info)
    return super().as_dataset(*args, **kwargs)

  def manifest_path(self, manual_dir=None) -> Path:
    path = Path(self.builder_config.manifest).expanduser()
    if path.is_absolute():
      return path
    if manual_dir is None:
      raise ManifestError(f"the manifest {path} is relative but no manual_dir was given: give the CSV's absolute "
                          "path (--manifest) or its folder as --manual_dir")
    return Path(manual_dir).expanduser() / path

  def read_manifest(self, manual_dir=None) -> manifest_lib.Manifest:
    """The checked manifest (ManifestError, one line naming the row, on bad input)."""
    config = self.builder_config
    return manifest_lib.read_manifest(self.manifest_path(manual_dir), labels=config.labels,
                                      num_folds=config.num_folds)

  def download_and_prepare(self, **kwargs):
    """As tfds's; a dataset already built from another manifest (or label list) is refused, not reused."""
    download_config = kwargs.get("download_config") or tfds.download.DownloadConfig()
    mode = tfds.download.GenerateMode(download_config.download_mode)
    if self.is_prepared() and mode == tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS:
      manifest = self.read_manifest(download_config.manual_dir)
      stored = dict((self.info.metadata or {}).get("dataset") or {})
      if stored.get("manifest_sha1") != manifest.sha1:
        raise ManifestError(
            f"{self.data_dir} was built from another manifest or label list ({stored.get('manifest', '?')}): "
            f"rebuild it (--overwrite, or download_mode=REUSE_CACHE_IF_EXISTS; face crops already made are "
            f"reused) or choose another --name")
    return super().download_and_prepare(**kwargs)

  def _split_generators(self, dl_manager):
    manual_dir = None
    if not Path(self.builder_config.manifest).expanduser().is_absolute():
      manual_dir = dl_manager.manual_dir
    manifest = self.read_manifest(manual_dir)  # every check, before any face detection
    self._manifest = manifest
    self._dataset = manifest.dataset()
    label = self.info.features["label"]
    if getattr(label, "_int2str", None) not in (None, list(manifest.class_names)):
      label._int2str = None  # a rebuild (overwrite) with another label list: tfds lets names be set only once
    label.names = list(manifest.class_names)
    self.info.metadata["dataset"] = manifest.metadata()
    self.info.metadata["dataset"]["image_size"] = self.builder_config.image_size
    return super()._split_generators(_ManualDir(dl_manager, manifest.path.parent))

  def _download_records(self, manual_dir: Path, cache_dir: Path):
    manifest = self._manifest
    if self.builder_config.source != "manifest":
      raise ValueError(f"unknown source {self.builder_config.source!r}")
    out_dir, report = run_preprocessing(manifest, Path(cache_dir) / self.builder_config.name,
                                        image_size=self.builder_config.image_size, workers=self._preprocess_workers)
    from avtca_jax.preprocessing.clips import cache_path, load_clip
    done = set(report["written"]) | set(report["cached"])
    filled = report.get("filled_frames_by_clip", {})
    records = [dict(stem=r.stem, label=r.label, actor=r.group, modality=1, filled_frames=int(filled.get(r.stem, 0)),
                    load=lambda path=cache_path(out_dir, r.stem): load_clip(path))
               for r in manifest.rows if r.stem in done]
    _check_training_clips(manifest, {r["stem"] for r in records}, report)
    report["manifest"] = str(manifest.path)
    return records, report

  def _download_sources(self, manual_dir: Path):
    if self.builder_config.source != "manifest":
      raise ValueError(f"unknown source {self.builder_config.source!r}")
    sources = [dict(stem=r.stem, label=r.label, actor=r.group, modality=1, video=str(r.video),
                    audio=None if r.audio is None else str(r.audio)) for r in self._manifest.rows]
    return sources, dict(source="manifest", manifest=str(self._manifest.path), skipped=[])

  def _checked_beam_report(self, report: dict) -> dict:
    """The skipped clips with their CSV line, as on the local path; every class keeps training clips."""
    lines = {str(r.video): r.line for r in self._manifest.rows}
    report["skipped"] = [dict(s, line=lines.get(s["path"])) for s in report.get("skipped", [])]
    _check_training_clips(self._manifest, set(report["written"]), report)
    return report

  def generated_stem(self, label: int, actor: int, index: int) -> str:
    raise ValueError("the manifest builder has no generated config")


def _check_training_clips(manifest: manifest_lib.Manifest, kept: set, report: dict) -> None:
  """After the preprocessing skipped clips (no face, unreadable): every class still has training clips in
  every fold; otherwise a one-line error naming the skipped rows of that class."""
  from avtca_jax import splits
  rows = [r for r in manifest.rows if r.stem in kept]
  skipped = {s["line"]: s["reason"] for s in report.get("skipped", [])}
  for k in range(1, len(manifest.folds) + 1):
    train = set(splits.table_parts(manifest.folds, k)["train"])
    for i, name in enumerate(manifest.class_names):
      if not any(r.label == i and r.group in train for r in rows):
        lost = [r.line for r in manifest.rows if r.label == i and r.group in train and r.line in skipped]
        why = "; ".join(f"line {line}: {skipped[line][:160]}" for line in lost[:3])
        raise ManifestError(
            f"{manifest.path} line {lost[0] if lost else '?'}: class {name!r} has no usable training clip in "
            f"fold{k}: the preprocessing skipped its clips ({why}): replace those clips, or add {name!r} clips "
            "of other speakers")


_RUNNER = """
import importlib, sys
from avtca_jax import console
console.configure_logging(False)
importlib.import_module(sys.argv[1]).main(sys.argv[2])
"""


def run_preprocessing(manifest: manifest_lib.Manifest, cache_dir: Path, *, image_size: int,
                      workers: Optional[int] = None):
  """Face crops and MFCCs of every row, cached under `cache_dir/<settings hash>/` (only clips not done yet),
  in a clean process (data/manifest/preprocess.py); returns (clip folder, report)."""
  settings = tfds_builder.preprocess_config(image_size).to_json()
  out_dir = tfds_builder.preprocess_output_folder(cache_dir, settings)
  args_path = out_dir / "clips.json"
  args_path.write_text(json.dumps(dict(
      out_dir=str(out_dir), config=settings, workers=workers or tfds_builder.default_workers(),
      clips=[dict(line=r.line, stem=r.stem, video=str(r.video), audio=None if r.audio is None else str(r.audio))
             for r in manifest.rows])))
  package = __name__.rsplit(".", 1)[0]  # data.manifest, or avtca_jax.manifest_tfds in a wheel
  root = Path(__file__).resolve().parents[package.count(".") + 1]  # the folder holding the top package
  pythonpath = os.pathsep.join([str(root)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
  report = tfds_builder.run_in_clean_process(["-c", _RUNNER, f"{package}.preprocess", str(args_path)],
                                             manifest.path, out_dir, {"PYTHONPATH": pythonpath})
  return out_dir, report


def build_dataset(manifest, *, data_dir: Optional[str] = None, name: Optional[str] = None, labels: str = "",
                  num_folds: int = manifest_lib.DEFAULT_NUM_FOLDS, image_size: int = 224, frame_encoding: str = "jpeg",
                  overwrite: bool = False, preprocess_workers: Optional[int] = None,
                  preprocess_cache_dir: Optional[str] = None) -> Path:
  """Build the dataset of a manifest CSV; returns its folder (<data_dir>/manifest/<name>/1.0.0), which
  configs/manifest.py and `input_pipeline` take. `name` defaults to the CSV's folder name (`config_name`)."""
  path = Path(manifest).expanduser().resolve()
  config = ManifestConfig(name=name or config_name(path), manifest=str(path), labels=labels, num_folds=num_folds,
                          image_size=image_size, frame_encoding=frame_encoding,
                          description=f"the clips of {path}")
  data_dir = None if data_dir is None else str(Path(data_dir).expanduser())
  builder = Builder(config=config, data_dir=data_dir, preprocess_workers=preprocess_workers,
                    preprocess_cache_dir=preprocess_cache_dir)
  mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if overwrite
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(path.parent), try_download_gcs=False, download_mode=mode))
  return Path(builder.data_dir)
