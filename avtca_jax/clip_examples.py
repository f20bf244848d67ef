"""One clip -> one tfds example, on both generation paths of the clip builders (`avtca_jax.tfds_builder`).

Local (the default): the builder preprocesses every clip into its .npz cache in a clean process, then
writes `clip_example(record, cached clip)` for each. Apache Beam (when the build is given beam options:
`tfds build ... --beam_pipeline_options=runner=...`): `beam_split_transforms` gives tfds one transform per
split; the workers preprocess the clips and call the same `clip_example`, so both paths write the same
examples under the same keys (the clip's stem) into the same splits.

On Beam, face detection runs in a clean Python process per worker (`CleanPreprocessor`, started on the
worker's first real clip and kept for the next): a Beam worker may have TensorFlow loaded (the direct runner
runs inside the builder's process, and tfds's example writer uses it), and with the CUDA build of torch,
importing torchvision after tensorflow segfaults. The process loads MTCNN once and serves every clip of its
worker. A clip that cannot be used (no face, unreadable) is skipped and listed in preprocessing_report.json,
as on the local path; the paper_random split is drawn over the clips kept, as on the local path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from avtca_jax import datasets, splits
from avtca_jax.preprocessing.config import NUM_FRAMES

JPEG_QUALITY = 90
REPORT_NAME = "preprocessing_report.json"  # beside the built dataset


def clip_example(record: dict, clip: dict, frame_encoding: str, image_size: int) -> Tuple[str, dict]:
  """(key, example) of one clip: its record (stem, label, actor, modality) and its preprocessed clip
  (face_crops, mfcc, filled_frames). Both generation paths make every example here."""
  crops = np.asarray(clip["face_crops"], np.uint8)
  expected = (NUM_FRAMES, image_size, image_size, 3)
  if crops.shape != expected:
    raise ValueError(f"{record['stem']}: face crops {crops.shape}, expected {expected}")
  frames = encode_jpeg_frames(crops) if frame_encoding == "jpeg" else crops
  return record["stem"], {
      "frames": frames,
      "mfcc": np.asarray(clip["mfcc"], np.float32),
      "label": int(record["label"]),
      "actor": int(record["actor"]),
      "modality": int(record["modality"]),
      "stem": record["stem"],
      "filled_frames": int(clip.get("filled_frames", record.get("filled_frames", 0))),
  }


def encode_jpeg_frames(crops: np.ndarray) -> List[bytes]:
  import cv2
  out = []
  for frame in crops:
    ok, buf = cv2.imencode(".jpg", frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
      raise ValueError("JPEG encoding failed")
    out.append(buf.tobytes())
  return out


def generated_clip(record: dict, image_size: int, seed: int) -> dict:
  """The synthetic clip (avtca_jax.synthetic) of a generated config's record: its `generated` is
  (label, actor, index)."""
  from avtca_jax import synthetic
  return synthetic.make_clip(*record["generated"], image_size, seed)


def paper_random_assignment(stems: Sequence[str]) -> Dict[str, str]:
  """{stem: 'train' or 'test'}: the paper's random 80/20 clip split over the usable clips in stem order."""
  ordered = sorted(stems)
  return dict(zip(ordered, (str(p) for p in splits.paper_random(len(ordered)))))


# ---- face detection and MFCCs in a clean process ------------------------------------------------------------

_SERVER = """
import json, os, sys
replies = os.fdopen(os.dup(1), "w")  # the replies' own channel; anything a library prints goes to stderr
os.dup2(2, 1)
from avtca_jax.preprocessing import clips
from avtca_jax.preprocessing.config import PreprocessConfig
clips._init_worker()  # one torch and OpenCV thread, as the local build's worker processes
for line in sys.stdin:
  task = json.loads(line)
  config = PreprocessConfig.from_json(task["config"])
  try:
    clips.save_clip(task["out"], clips.clip_features(task["video"], task["audio"], config), config)
    reply = {"ok": True}
  except Exception as error:  # the clip is skipped with its reason, as on the local path
    reply = {"ok": False, "reason": clips.failure_reason(error)}
  replies.write(json.dumps(reply) + "\\n")
  replies.flush()
"""


class CleanPreprocessor:
  """A Python process that never imports tensorflow and computes `clips.clip_features` of one clip at a time
  (the local build's per-clip function); its MTCNN is made on the first clip and kept."""

  def __init__(self):
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    self._folder = tempfile.TemporaryDirectory(prefix="avtca_clip_")
    self._process = subprocess.Popen([sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, text=True)

  def clip(self, video: str, audio: Optional[str], config_json: str) -> Tuple[Optional[dict], str]:
    """(clip, '') or (None, why it was skipped)."""
    from avtca_jax.preprocessing.clips import load_clip
    out = Path(self._folder.name) / "clip.npz"
    self._process.stdin.write(json.dumps(dict(video=video, audio=audio, config=config_json, out=str(out))) + "\n")
    self._process.stdin.flush()
    line = self._process.stdout.readline()
    if not line:  # the process died (out of memory, a crash): fail the bundle, which Beam retries
      raise RuntimeError(f"the preprocessing process stopped (exit status {self._process.wait()}) on {video}")
    reply = json.loads(line)
    if not reply["ok"]:
      return None, reply["reason"]
    clip = load_clip(out)
    out.unlink()
    return clip, ""

  def close(self) -> None:
    if self._process.poll() is None:
      self._process.stdin.close()
      self._process.wait()
    self._folder.cleanup()


# ---- the Beam pipeline -------------------------------------------------------------------------------------


def beam_split_transforms(sources: List[dict], names: List[str], settings: dict, report: dict,
                          report_path: str) -> Dict[str, object]:
  """{split name: a Beam transform of its (key, example)s} for tfds, over one shared pipeline part.

  sources: one per clip (stem, label, actor, modality, split: its speaker split, and video/audio, or
  `generated`). names: every split (the speaker splits, then paper_random_train/test). settings:
  frame_encoding, image_size, seed, preprocess (PreprocessConfig JSON). report: the listing's report,
  completed by the pipeline (clips written, skipped) and written to report_path.
  """
  import apache_beam as beam

  class ClipExamples(beam.DoFn):
    """A source -> (speaker split, key, example), or a skipped clip on the 'skipped' output."""

    def __init__(self, settings):
      self._settings = settings
      self._preprocessor = None

    def setup(self):
      self._preprocessor = None  # started on the first real clip: a generated config needs none

    def process(self, source):
      s = self._settings
      if "generated" in source:
        clip = generated_clip(source, s["image_size"], s["seed"])
      else:
        if self._preprocessor is None:
          self._preprocessor = CleanPreprocessor()
        clip, reason = self._preprocessor.clip(source["video"], source.get("audio"), s["preprocess"])
        if clip is None:
          yield beam.pvalue.TaggedOutput("skipped", dict(path=source["video"], reason=reason))
          return
      key, example = clip_example(source, clip, s["frame_encoding"], s["image_size"])
      yield source["split"], key, example

    def teardown(self):
      if self._preprocessor is not None:
        self._preprocessor.close()

  index = {name: i for i, name in enumerate(names)}
  shared = {}

  def routed(pipeline):
    """The examples, each as (split index, (key, example)) for its speaker split and its paper_random split;
    built on the first split's transform and shared by the others."""
    if "routed" not in shared:
      clips = (pipeline | "ListClips" >> beam.Create(sources)
               | "SpreadClips" >> beam.Reshuffle())  # spread the clips over the workers
      results = clips | "Preprocess" >> beam.ParDo(ClipExamples(settings)).with_outputs("skipped", main="examples")
      written = results.examples | "Keys" >> beam.Map(lambda e: e[1]) | "AllKeys" >> beam.combiners.ToList()
      parts = written | "PaperRandom" >> beam.Map(paper_random_assignment)
      shared["routed"] = (results.examples | "Route" >> beam.FlatMap(_route, beam.pvalue.AsSingleton(parts), index)
                          | "BySplit" >> beam.Partition(lambda item, n: item[0], len(names)))
      _ = ((results.skipped | "AllSkipped" >> beam.combiners.ToList())
           | "Report" >> beam.Map(_write_report, beam.pvalue.AsSingleton(written), report, report_path))
    return shared["routed"]

  class Split(beam.PTransform):
    def __init__(self, name):
      super().__init__()
      self._name = name

    def expand(self, pbegin):
      return routed(pbegin.pipeline)[index[self._name]] | "Examples" >> beam.Map(lambda item: item[1])

  return {name: Split(name) for name in names}


def _route(example, parts: Dict[str, str], index: Dict[str, int]):
  split, key, value = example
  yield index[split], (key, value)
  yield index[f"{datasets.RANDOM_PROTOCOL}_{parts[key]}"], (key, value)


def _write_report(skipped: List[dict], written: List[str], report: dict, path: str) -> None:
  """The build's preprocessing_report.json: the listing's report, the clips written and those skipped."""
  from etils import epath
  report = dict(report, written=sorted(written), clips_written=len(written),
                skipped=list(report.get("skipped", [])) + sorted(skipped, key=lambda s: s["path"]))
  report["clips_skipped"] = len(report["skipped"])
  epath.Path(path).write_text(json.dumps(report, indent=1, default=str))
