"""What every clip builder shares (data/<name>/ subclasses `ClipBuilder`; docs/data.md "Adding a dataset").

A builder only says which clips a download holds (`_download_records`: one record per clip with stem, label,
actor, modality, filled_frames and load()) and which configs it has. This module writes them: the features
(JPEG or raw face crops, MFCCs, label, actor, modality, stem, filled_frames), one stored split per speaker
(`Dataset.group_split`) plus the paper_random clip split, the preprocessing report, the `generated`
configs (clips from `avtca_jax.synthetic`, the one generator), and an `as_dataset` that takes protocol
split names ('fold1_train'), resolved by the dataset (`avtca_jax.datasets`).

Face detection and MFCCs run in a separate, clean Python process (`run_preprocessing`): the builder's
process has TensorFlow loaded, and with the CUDA build of torch, tensorflow imported before torchvision
segfaults (inside triton). The per-clip .npz cache lives under `<cache_dir>/<settings hash>/`, so an
interrupted build, or a build of another config, reuses every clip already done.

Given beam options (`tfds build ... --beam_pipeline_options=...`, or `DownloadConfig(beam_options=...)`),
the build runs on Apache Beam instead: the builder only lists the clips (`_download_sources`), and the
workers preprocess them (`avtca_jax.clip_examples`, without the cache). Both paths make each example with
`clip_examples.clip_example` and write the same splits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow_datasets as tfds

from avtca_jax import datasets, splits
from avtca_jax.clip_examples import (JPEG_QUALITY, REPORT_NAME, clip_example,  # noqa: F401 (JPEG_QUALITY: API)
                                     generated_clip, paper_random_assignment)
from avtca_jax.preprocessing.audio import MFCC_SHAPE
from avtca_jax.preprocessing.config import NUM_FRAMES

FRAME_ENCODINGS = ("jpeg", "raw")


class ClipBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Face crops + MFCCs per clip, one split per speaker. Subclasses set DATASET, BUILDER_CONFIGS, HOMEPAGE,
  CITATION (VERSION, RELEASE_NOTES and DEFAULT_CONFIG_NAME where theirs differ from the defaults here) and
  define `_download_records` (local builds), `_download_sources` (Beam builds) and `generated_stem`. Configs need the fields `source` ('generated' or the
  download), `frame_encoding`, `image_size`, `clips_per_class`, `seed`."""

  DATASET: datasets.Dataset
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Per-actor splits, JPEG frames, MFCCs from avtca_jax.preprocessing."}
  DEFAULT_CONFIG_NAME = "av"
  HOMEPAGE = ""
  CITATION = ""
  MODALITY_DOC = "1 audio-video, 2 video-only"

  def __init__(self, *, preprocess_cache_dir: Optional[str] = None, preprocess_workers: Optional[int] = None,
               **kwargs):
    """preprocess_cache_dir: where per-clip preprocessing results are cached (default:
    <download_dir>/<name>_preprocessed); an interrupted build resumes from it. preprocess_workers: worker
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
            "label": tfds.features.ClassLabel(names=self.DATASET.class_names),
            "actor": tfds.features.Scalar(dtype=np.int32, doc=self.DATASET.group_doc),
            "modality": tfds.features.Scalar(dtype=np.int32, doc=self.MODALITY_DOC),
            "stem": tfds.features.Text(doc="source file name without extension"),
            "filled_frames": tfds.features.Scalar(
                dtype=np.int32, doc="frames with no face found, filled from the nearest frame with one"),
        }),
        supervised_keys=None,
        homepage=self.HOMEPAGE,
        citation=self.CITATION,
        metadata=tfds.core.MetadataDict(),
    )

  # ---- what a subclass defines ----------------------------------------------------------------------------

  def _download_records(self, manual_dir: Path, cache_dir: Path) -> Tuple[List[dict], dict]:
    """(records, report) of the download in manual_dir, preprocessed through the cache in cache_dir."""
    raise NotImplementedError

  def generated_stem(self, label: int, actor: int, index: int) -> str:
    """The file stem of generated clip `index` of (label, actor)."""
    raise NotImplementedError

  def generated_groups(self) -> Sequence[int]:
    """The speakers of the generated config."""
    return self.DATASET.groups

  # ---- generation -------------------------------------------------------------------------------------

  def _generate_splits(self, dl_manager, download_config):
    # tfds runs Beam when a split generator is a Beam object; beam options (`tfds build
    # --beam_pipeline_options=...`, or DownloadConfig(beam_options=...) / beam_runner) choose that path here.
    self._use_beam = download_config.beam_options is not None or download_config.beam_runner is not None
    try:
      return super()._generate_splits(dl_manager, download_config)
    except Exception as error:  # tfds's Beam writer refuses an empty split, deep inside the runner's traceback
      empty = re.search(r"generated examples is 0 for split (\w+)", str(error))
      if not (self._use_beam and empty):
        raise
      raise ValueError(
          f"split {empty.group(1)} would be empty: the Beam workers skipped every clip of it (no face, an "
          "unreadable file), and tfds cannot write an empty split on Beam: remove or replace those clips, or "
          "build without --beam_pipeline_options (a local build leaves the split out)") from None

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    if getattr(self, "_use_beam", False):
      return self._beam_split_generators(dl_manager)
    config = self.builder_config
    if config.source == "generated":
      # Each clip is made once here and written twice (its speaker's split and a paper_random split).
      records = [dict(r, load=lambda clip=generated_clip(r, config.image_size, config.seed): clip)
                 for r in self._generated_records()]
      report = {"source": "generated", "clips_written": len(records), "skipped": []}
    else:
      cache_dir = Path(self._preprocess_cache_dir or
                       (Path(dl_manager.download_dir) / f"{self.DATASET.name}_preprocessed"))
      records, report = self._download_records(Path(dl_manager.manual_dir), cache_dir)
    if not records:
      raise ValueError(f"no usable clips (report: {json.dumps(report)[:2000]})")
    records.sort(key=lambda r: r["stem"])
    self.info.metadata["preprocessing"] = report_summary(report)
    Path(self.data_path).mkdir(parents=True, exist_ok=True)
    (Path(self.data_path) / REPORT_NAME).write_text(json.dumps(report, indent=1, default=str))

    by_split: Dict[str, List[dict]] = {}
    for r in sorted(records, key=lambda r: r["actor"]):
      by_split.setdefault(self.DATASET.group_split(r["actor"]), []).append(r)
    parts = paper_random_assignment([r["stem"] for r in records])
    for part in ("train", "test"):
      chosen = [r for r in records if parts[r["stem"]] == part]
      if chosen:
        by_split[f"{datasets.RANDOM_PROTOCOL}_{part}"] = chosen
    return {name: self._generate_examples(rs) for name, rs in by_split.items()}

  def _generate_examples(self, records: List[dict]):
    config = self.builder_config
    for r in records:
      yield clip_example(r, r["load"](), config.frame_encoding, config.image_size)

  def _generated_records(self) -> List[dict]:
    """The synthetic clips (avtca_jax.synthetic) of the generated config, as records whose `generated`
    (label, actor, index) makes the clip (`generated_clip`)."""
    return [dict(stem=self.generated_stem(label, actor, index), label=label, actor=actor, modality=1,
                 filled_frames=0, generated=(label, actor, index))
            for actor in self.generated_groups() for label in range(self.DATASET.num_classes)
            for index in range(self.builder_config.clips_per_class)]

  # ---- generation on Apache Beam ------------------------------------------------------------------------

  def _download_sources(self, manual_dir: Path) -> Tuple[List[dict], dict]:
    """For a Beam build: one source per clip (stem, label, actor, modality, video, audio: None for the
    video's own soundtrack) found in manual_dir, and the listing's report; nothing is preprocessed here."""
    raise NotImplementedError(f"{type(self).__name__} has no Beam build")

  def _beam_split_generators(self, dl_manager) -> Dict[str, object]:
    """The same splits as the local path, as Beam transforms: the clips are listed here and preprocessed
    by the Beam workers (`beam_clips`)."""
    config = self.builder_config
    if config.source == "generated":
      sources, report = self._generated_records(), {"source": "generated", "skipped": []}
    else:
      sources, report = self._download_sources(Path(dl_manager.manual_dir))
    if not sources:
      raise ValueError(f"no usable clips (report: {json.dumps(report)[:2000]})")
    sources = sorted(sources, key=lambda s: s["stem"])
    actors = sorted({s["actor"] for s in sources})
    names = [self.DATASET.group_split(a) for a in actors]
    names += [f"{datasets.RANDOM_PROTOCOL}_{part}" for part in ("train", "test")
              if part in set(splits.paper_random(len(sources)))]
    sources = [dict(s, split=self.DATASET.group_split(s["actor"])) for s in sources]
    report = dict(report, runner="beam", clips_found=len(sources) + len(report.get("skipped", [])))
    settings = dict(frame_encoding=config.frame_encoding, image_size=config.image_size, seed=config.seed,
                    preprocess=preprocess_config(config.image_size).to_json())
    self._beam_report_path = os.fspath(tfds.core.Path(self.data_path) / REPORT_NAME)
    from avtca_jax import clip_examples
    return clip_examples.beam_split_transforms(sources, names, settings, report, self._beam_report_path)

  def _process_pipeline_result(self, pipeline_result):
    """After the Beam pipeline: its preprocessing report into the dataset's metadata (as the local path)."""
    super()._process_pipeline_result(pipeline_result)
    path = tfds.core.Path(self._beam_report_path)
    report = self._checked_beam_report(json.loads(path.read_text()))
    path.write_text(json.dumps(report, indent=1, default=str))
    self.info.metadata["preprocessing"] = report_summary(report)

  def _checked_beam_report(self, report: dict) -> dict:
    """A subclass's additions to the Beam build's report, and its checks of the clips the workers kept
    (report['written']), e.g. no class left without training clips (ValueError)."""
    return report

  # ---- reading ------------------------------------------------------------------------------------------

  def as_dataset(self, split=None, *args, **kwargs):
    """As tfds's, with protocol split names ('fold1_train', 'original_test', ...) resolved first."""
    available = list(self.info.splits.keys())
    resolve = lambda s: self.DATASET.resolve_split(s, available) if isinstance(s, str) else s
    if isinstance(split, (list, tuple)):
      split = type(split)(resolve(s) for s in split)
    elif isinstance(split, dict):
      split = {k: resolve(v) for k, v in split.items()}
    else:
      split = resolve(split)
    return super().as_dataset(split, *args, **kwargs)


def report_summary(report: dict) -> dict:
  """The part of the preprocessing report kept in the dataset's metadata.json (small, JSON-safe)."""
  keep = {k: v for k, v in report.items() if isinstance(v, (int, float, str, bool))}
  skipped = report.get("skipped", [])
  keep["num_skipped"] = len(skipped)
  keep["skipped"] = skipped[:200]
  return json.loads(json.dumps(keep, default=str))


# ---- the preprocessing, in a clean process ---------------------------------------------------------------

_RUNNER = """
import json, sys
from avtca_jax.preprocessing.clips import preprocess_directory
from avtca_jax.preprocessing.config import PreprocessConfig
from avtca_jax import console
args = json.loads(sys.argv[1])
console.configure_logging(False)
config = PreprocessConfig.from_json(args["config"])
try:
  preprocess_directory(args["root"], args["out_dir"], args["workers"], config,
                       modalities=tuple(args["modalities"]), progress=True, naming=args["naming"])
except Exception as error:  # one line (e.g. no usable clip in manual_dir), then the builder's own error
  console.exit_on_user_error(error)
"""


def default_workers() -> int:
  """One worker per core (each runs one torch thread), as `python -m avtca_jax.preprocess`."""
  return os.cpu_count() or 1


def preprocess_config(image_size: int):
  from avtca_jax.preprocessing.config import PreprocessConfig
  return PreprocessConfig(crop_size=image_size)


def preprocess_output_folder(cache_dir: Path, settings: str) -> Path:
  """`<cache_dir>/<settings hash>/`, created, without a previous run's report.json."""
  out_dir = Path(cache_dir) / hashlib.sha1(settings.encode()).hexdigest()[:12]
  out_dir.mkdir(parents=True, exist_ok=True)
  report_path = out_dir / "report.json"
  if report_path.exists():
    report_path.unlink()  # never read a previous run's report as this one's
  return out_dir


def run_in_clean_process(python_args: Sequence[str], what, out_dir: Path,
                         env_updates: Optional[Dict[str, str]] = None) -> dict:
  """`python <python_args>` (TF_CPP_MIN_LOG_LEVEL 3 unless set) preprocessing `what` into `out_dir`; returns
  the report.json it writes. Raises ValueError when it fails."""
  env = dict(os.environ)
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  env.update(env_updates or {})
  result = subprocess.run([sys.executable, *python_args], env=env)
  report_path = out_dir / "report.json"
  if result.returncode != 0 or not report_path.exists():
    raise ValueError(f"preprocessing of {what} failed (exit status {result.returncode}, the reason is "
                     f"printed above); rerun to continue from the cache in {out_dir}")
  return json.loads(report_path.read_text())


def run_preprocessing(manual_dir: Path, cache_dir: Path, *, modalities: Sequence[int], image_size: int,
                      naming: str, workers: Optional[int] = None) -> Tuple[Path, dict]:
  """Preprocess `manual_dir` into the cache (only clips not cached yet); returns (clip folder, report)."""
  settings = preprocess_config(image_size).to_json()
  out_dir = preprocess_output_folder(cache_dir, settings)
  args = dict(root=str(manual_dir), out_dir=str(out_dir), workers=workers or default_workers(),
              config=settings, modalities=list(modalities), naming=naming)
  return out_dir, run_in_clean_process(["-c", _RUNNER, json.dumps(args)], manual_dir, out_dir)


def preprocessed_records(manual_dir: Path, cache_dir: Path, *, naming: str, modalities: Sequence[int] = (1,),
                         image_size: int, workers: Optional[int] = None,
                         missing_hint: str = "") -> Tuple[List[dict], dict]:
  """One record per usable clip (stem, label, actor, modality, filled_frames, load()), and the report."""
  from avtca_jax.preprocessing.clips import cache_path, load_clip
  from avtca_jax.preprocessing.names import NAMINGS
  manual_dir = Path(manual_dir)
  if not manual_dir.is_dir():
    raise FileNotFoundError(f"manual_dir {manual_dir} does not exist: {missing_hint or 'download the dataset'}"
                            " into it (docs/data.md)")
  out_dir, report = run_preprocessing(manual_dir, cache_dir, modalities=modalities, image_size=image_size,
                                      naming=naming, workers=workers)
  filled = report.get("filled_frames_by_clip", {})
  parse = NAMINGS[naming]
  out = []
  for stem in sorted(set(report.get("written", [])) | set(report.get("cached", []))):
    name = parse(stem)
    path = cache_path(out_dir, stem)
    out.append(dict(stem=stem, label=name.label, actor=name.actor, modality=name.modality,
                    filled_frames=int(filled.get(stem, 0)), load=lambda path=path: load_clip(path)))
  return out, report


def listed_sources(manual_dir: Path, *, naming: str, modalities: Sequence[int] = (1,),
                   missing_hint: str = "") -> Tuple[List[dict], dict]:
  """For a Beam build: one source per clip found in manual_dir, paired with its audio as the local
  preprocessing pairs them (stem, label, actor, modality, video, audio), and the listing's report (videos
  rejected by name, a second file with a stem already listed)."""
  from avtca_jax.preprocessing.names import VIDEO_EXTENSIONS, find_clips
  manual_dir = Path(manual_dir)
  if not manual_dir.is_dir():
    raise FileNotFoundError(f"manual_dir {manual_dir} does not exist: {missing_hint or 'download the dataset'}"
                            " into it (docs/data.md)")
  pairs, problems = find_clips(manual_dir, modalities=modalities, naming=naming)
  skipped = [dict(path=p.path, reason=p.reason) for p in problems if p.path.lower().endswith(VIDEO_EXTENSIONS)]
  sources, seen = [], {}
  for pair in pairs:
    name = pair.name
    if name.stem in seen:
      skipped.append(dict(path=str(pair.video), reason=f"same name as {seen[name.stem]}; only that one is used"))
      continue
    seen[name.stem] = pair.video
    sources.append(dict(stem=name.stem, label=name.label, actor=name.actor, modality=name.modality,
                        video=str(pair.video), audio=None if pair.audio is None else str(pair.audio)))
  return sources, dict(source=naming, input=str(manual_dir.resolve()), skipped=skipped)


# ---- `tfds build` with one-line errors ------------------------------------------------------------------------


def build_main(argv: Optional[Sequence[str]], build_script: str, manual_hint: str) -> None:
  """`build_command` for the builder beside `build_script` (a data/<name>/build.py); argv None: sys.argv[1:]."""
  build_command(sys.argv[1:] if argv is None else argv, os.path.dirname(os.path.abspath(build_script)), manual_hint)


def build_command(argv: Sequence[str], folder: str, manual_hint: str) -> None:
  """tfds's own `build` command (same flags as `tfds build`, --beam_pipeline_options included) for the builder
  in `folder` (the default dataset). A user error is one line where the `tfds` script prints a traceback;
  `--verbose` (ours) keeps library logs and tracebacks. `manual_hint` says what --manual_dir must hold."""
  argv = list(argv)
  verbose = "--verbose" in argv
  argv = [a for a in argv if a != "--verbose"]
  from avtca_jax import console
  console.configure_logging(verbose)
  try:
    if not verbose:  # tfds's build imports apache_beam, which logs a warning about GCP clients it lacks
      logging.disable(logging.WARNING)
      try:
        import apache_beam  # noqa: F401
      finally:
        logging.disable(logging.NOTSET)
    import simple_parsing
    from tensorflow_datasets.scripts.cli import build

    if not argv or argv[0].startswith("-"):  # default: this folder, as `tfds build` run inside it
      argv = [folder] + argv
    tfds.core.visibility.set_availables([tfds.core.visibility.DatasetType.TFDS_PUBLIC,
                                         tfds.core.visibility.DatasetType.COMMUNITY_PUBLIC])
    args = simple_parsing.parse(build.Args, args=argv)
    args.execute()
  except Exception as error:  # a user error is one line; a bug keeps its traceback
    if isinstance(error, AssertionError):  # tfds asserts on bad arguments (a missing manual_dir, for one)
      error = ValueError(str(error) or "tfds build refused the arguments")
    if "Manual directory" in str(error) and not verbose:  # tfds's own text points at download instructions
      error = ValueError(f"{str(error).split('. ')[0]}: give --manual_dir {manual_hint} (docs/data.md)")
    console.exit_on_user_error(error, verbose)
