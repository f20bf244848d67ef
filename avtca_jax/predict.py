"""Emotion probabilities for any clip or folder of clips: `python -m avtca_jax.predict MODEL CLIP [AUDIO]`.

MODEL is any checkpoint kind of avtca_jax.checkpoint_kinds (a training workdir, a checkpoint step, a
converted checkpoint, the original's PyTorch .pth, converted on the fly) or an export folder
(`python -m avtca_jax.export`; then only jax, numpy and the preprocessing libraries are needed). The classes
are the model's own, in its label order: a workdir's model.json (the trainer writes its dataset's names:
RAVDESS's eight, CREMA-D's six, a manifest's list), an export's export.json; RAVDESS's for a model that
carries none (the original's checkpoints, workdirs written before class names were stored).

CLIP is a video of any name and any container the decoders open (its label is shown only when the name is
a name of the model's dataset: RAVDESS or CREMA-D), or a folder: every video under it (symlinks followed) is
predicted, with a progress bar, one line per clip, the accuracy per class when the names carry labels, and
`--output FILE.csv|.json` for the per-clip probabilities. What a file is comes from probing it (PyAV, else
OpenCV): a video stream makes it a video (flv, mpg, 3gp, ts, ...), an audio stream alone an audio file;
the usual names (VIDEO_SUFFIXES, AUDIO_SUFFIXES) are taken by name without probing, so a damaged .mp4 still
gets the decoder's own error. A video uses its own soundtrack unless an audio file is paired with it:
AUDIO (a file of the same take, or a folder of them) given as the second argument, or, for a single file as
in a folder, an audio file with the video's name (`clip.mp4` + `clip.wav` / `clip.flac`) or, for RAVDESS
names, the take's audio-only (03) file. Each result line says which audio was used. An audio-only model
takes audio files (or a video's soundtrack).

Warnings (on stderr, and in the --output rows): a soundtrack or audio file that is digital silence (every
sample 0, like RAVDESS's video-only 02 files: the answer then rests on the faces alone), and a video with
fewer frames than the model samples (its frames are repeated).

Each clip goes through the dataset's preprocessing (avtca_jax.preprocessing.clips.clip_features: MTCNN
face crops over the 3.6 s window, the original's MFCCs). This module never imports TensorFlow (face
detection uses torch, which must not follow TensorFlow into a process).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from avtca_jax import console
from avtca_jax.preprocessing.names import EMOTIONS  # noqa: F401  (RAVDESS's names; the model's are Model.class_names)
# Taken by name, without probing (see the module docstring); any other file is probed.
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".avi", ".webm")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".m4a")
# Demuxers that open still images (or text) as one-frame "videos": not clips.
_NOT_CLIP_FORMATS = ("image2", "gif", "apng", "tty", "webp")
# Datasets whose file names carry the label, by the model's class names: naming (preprocessing.names), title.
_NAMED_DATASETS = {"ravdess": "RAVDESS", "crema_d": "CREMA-D"}


@dataclasses.dataclass
class Model:
  """What prediction needs from a checkpoint or an export."""
  name: str
  audio_only: bool
  num_classes: int
  logits: Callable  # (mfcc (1, 156, 10) float32, frames (1, 15, 224, 224, 3) uint8 or None) -> (1, C)
  warnings: List[str]
  class_names: Tuple[str, ...] = ()  # label order; logit i is class_names[i]

  def __post_init__(self):
    if not self.class_names:
      from avtca_jax.checkpoint_kinds import fallback_class_names
      self.class_names = fallback_class_names(self.num_classes)


def load_model(path: str) -> Model:
  """A checkpoint of any kind (jit-compiled forward) or an export folder (jax.export, no training stack)."""
  from avtca_jax import export
  if export.is_export(path):
    exported = export.load(path)
    return Model(path, exported.audio_only, exported.num_classes, exported.logits, exported.warnings,
                 exported.class_names)
  import jax
  from avtca_jax import checkpoint_kinds
  loaded = checkpoint_kinds.load(path)
  forward = jax.jit(loaded.forward())
  logits = (lambda mfcc, frames=None: forward(mfcc)) if loaded.audio_only else forward
  return Model(path, loaded.audio_only, loaded.config.num_classes, logits, loaded.warnings(), loaded.class_names)


# ---- Inputs --------------------------------------------------------------------------------------------


def naming_of(class_names: Sequence[str]) -> Optional[str]:
  """'ravdess' or 'crema_d' when the classes are that dataset's (its file names carry the label), else None."""
  from avtca_jax import datasets
  for name in _NAMED_DATASETS:
    if tuple(class_names) == tuple(datasets.get(name).class_names):
      return name
  return None


def label_of(path: str, naming: Optional[str] = "ravdess") -> Optional[int]:
  """The label id when the file name is a name of `naming` (RAVDESS: any modality; CREMA-D), else None: the
  label is never guessed."""
  from avtca_jax.preprocessing.names import NAMINGS
  if naming is None:
    return None
  try:
    return NAMINGS[naming](path).label
  except ValueError:
    return None


def probe(path: str) -> Optional[str]:
  """'video' (a decodable video stream, cover art aside), 'audio' (audio streams only) or None: what the
  decoders make of the file's content, whatever its name. PyAV first, then OpenCV's FFmpeg backend."""
  try:
    import av
  except ImportError:
    av = None
  if av is not None:
    try:
      with av.open(path) as container:
        fmt = container.format.name
        if any(f in fmt.split(",") for f in _NOT_CLIP_FORMATS) or fmt.endswith("_pipe"):
          return None
        videos = [s for s in container.streams.video
                  if s.codec_context is not None and not (s.disposition & av.stream.Disposition.attached_pic)]
        if videos:
          return "video"
        if container.streams.audio:
          return "audio"
        return None
    except Exception:  # PyAV's errors (InvalidDataError, ...): try OpenCV's own FFmpeg
      pass
  try:
    import cv2
  except ImportError:
    return None
  level = cv2.utils.logging.getLogLevel()
  cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # a file it cannot open is an answer here
  capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
  try:
    if capture.isOpened() and capture.get(cv2.CAP_PROP_FRAME_COUNT) > 1:
      return "video"
  finally:
    capture.release()
    cv2.utils.logging.setLogLevel(level)
  return None


def media_kind(path: str) -> Optional[str]:
  """'video', 'audio' or None: the usual names by name, anything else by probing the file."""
  lower = path.lower()
  if lower.endswith(VIDEO_SUFFIXES):
    return "video"
  if lower.endswith(AUDIO_SUFFIXES):
    return "audio"
  return probe(path)


def _files(folder: str) -> List[str]:
  out, seen = [], set()
  for dirpath, dirnames, files in os.walk(folder, followlinks=True):
    real = os.path.realpath(dirpath)
    if real in seen:  # a symlink loop
      dirnames[:] = []
      continue
    seen.add(real)
    out += [os.path.join(dirpath, f) for f in files if not f.startswith(".")]
  return sorted(out)


def _stem(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


def _pairing(audios: Sequence[str]) -> Tuple[dict, dict]:
  """({stem: audio file}, {RAVDESS take: its audio-only (03) file}) of some audio files."""
  from avtca_jax.preprocessing.names import parse_name
  audio_by_stem = {_stem(a): a for a in audios}
  audio_by_take = {}
  for a in audios:
    try:
      name = parse_name(a)
    except ValueError:
      continue
    if name.modality == 3:
      audio_by_take.setdefault(name.take_key, a)
  return audio_by_stem, audio_by_take


def _partner(video: str, audio_by_stem: dict, audio_by_take: dict) -> Optional[str]:
  from avtca_jax.preprocessing.names import parse_name
  stem = _stem(video)
  if stem in audio_by_stem:
    return audio_by_stem[stem]
  try:
    return audio_by_take.get(parse_name(video).take_key)
  except ValueError:
    return None


def partner_beside(video: str) -> Optional[str]:
  """The audio file a folder would pair with `video` among the files beside it (same name, or for a RAVDESS
  name the take's 03 file), so that one file and a folder give the same answer."""
  from avtca_jax.preprocessing.names import parse_name
  folder = os.path.dirname(video) or "."
  try:
    take = parse_name(video).take_key
  except ValueError:
    take = None
  candidates = []
  for entry in sorted(os.listdir(folder)):
    path = os.path.join(folder, entry)
    if entry.startswith(".") or not os.path.isfile(path) or os.path.realpath(path) == os.path.realpath(video):
      continue
    if _stem(path) != _stem(video):
      try:
        name = parse_name(path)
      except ValueError:
        continue
      if take is None or name.modality != 3 or name.take_key != take:
        continue
    if media_kind(path) == "audio":
      candidates.append(path)
  return _partner(video, *_pairing(candidates))


def find_inputs(clip: str, audio: Optional[str], audio_only: bool) -> List[Tuple[str, Optional[str]]]:
  """[(clip, audio or None for the clip's own soundtrack)] for a file or a folder (see the module docstring)."""
  if not os.path.exists(clip):
    raise FileNotFoundError(f"{clip}: no such file or folder")
  if audio is not None and not os.path.exists(audio):
    raise FileNotFoundError(f"{audio}: no such audio file or folder")
  if os.path.isfile(clip):
    if audio is not None and os.path.isdir(audio):
      raise ValueError(f"{audio} is a folder: give the audio file of {clip}")
    kind = media_kind(clip)
    if kind is None:
      raise ValueError(f"{clip}: not a video or audio file (neither PyAV nor OpenCV finds a video or audio stream "
                       "in it)")
    if not audio_only and kind == "audio":
      raise ValueError(f"{clip} is an audio file but the model needs the video too: give the video, and this "
                       "file as the second argument")
    if audio is None and kind == "video":
      audio = partner_beside(clip)
    return [(clip, audio)]
  files = _files(clip) + (_files(audio) if audio is not None and os.path.isdir(audio) else [])
  kinds = {f: media_kind(f) for f in files}
  videos = [f for f in files if kinds[f] == "video"]
  audios = [f for f in files if kinds[f] == "audio"]
  audio_by_stem, audio_by_take = _pairing(audios)
  if audio_only:  # every audio file, and the soundtrack of videos that have none beside them
    pairs = [(a, None) for a in audios]
    pairs += [(v, None) for v in videos if _partner(v, audio_by_stem, audio_by_take) is None]
  else:
    pairs = [(v, _partner(v, audio_by_stem, audio_by_take)) for v in videos]
  if not pairs:
    raise FileNotFoundError(f"{clip}: no {'audio or video' if audio_only else 'video'} files in this folder "
                            "(none that PyAV or OpenCV opens as one)")
  return sorted(pairs)


def audio_used(clip: str, audio: Optional[str], given: Optional[str], audio_only: bool) -> str:
  """Which audio a clip's prediction used, for its result line."""
  if audio is None:
    return "this file" if audio_only and media_kind(clip) == "audio" else "the video's soundtrack"
  if given is not None and os.path.isfile(given):
    return audio
  return os.path.basename(audio)


@dataclasses.dataclass
class ClipInputs:
  """One clip's model inputs and what a user should know about them."""
  mfcc: np.ndarray  # (156, 10) raw MFCCs
  crops: Optional[np.ndarray]  # (15, 224, 224, 3) uint8 RGB, None for an audio-only model
  warnings: List[str]


def _silent(path) -> bool:
  """Digital silence: every decoded sample is 0 (a track present, but nothing recorded on it)."""
  from avtca_jax.preprocessing import audio as audio_lib
  return not np.any(audio_lib.load_audio(path))


def clip_inputs(clip: str, audio: Optional[str], audio_only: bool) -> ClipInputs:
  """The model inputs of one clip, with warnings for a silent soundtrack and for a video shorter (in frames)
  than the frames the model samples."""
  from avtca_jax.preprocessing import audio as audio_lib
  warnings = []
  source = audio or clip
  if audio_only:
    mfcc, crops = audio_lib.audio_features(source)[0], None
  else:
    try:  # torch (face detection) must be imported before anything that imports tensorflow
      import torch  # noqa: F401
    except ImportError:
      pass
    from avtca_jax.preprocessing.clips import clip_features
    try:
      result = clip_features(clip, audio)
    except audio_lib.AudioError as error:
      if audio is None and "no audio stream" in str(error):
        raise audio_lib.AudioError(f"{clip}: the video has no soundtrack: give its audio file as the second "
                                   f"argument (python -m avtca_jax.predict MODEL {clip} AUDIO.wav)") from None
      raise
    mfcc, crops = result["mfcc"], result["face_crops"]
    sampled, frames = len(result["frame_indices"]), int(result["video_frames"])
    if frames < sampled:
      warnings.append(f"{clip}: the video has {frames} frame{'s' * (frames != 1)}, fewer than the {sampled} the "
                      f"model samples: they are repeated, so it sees {len(set(result['frame_indices'].tolist()))} "
                      f"distinct frames")
  if _silent(source):
    if audio is None and not audio_only:
      warnings.append(f"{clip}: its soundtrack is digital silence (every sample 0, like RAVDESS's video-only 02 "
                      "files): the answer rests on the faces alone; give the clip's audio file as the second "
                      "argument, or put it beside the clip under the clip's name")
    else:
      warnings.append(f"{source}: the audio is digital silence (every sample 0): "
                      + ("the answer means nothing" if audio_only else "the answer rests on the faces alone"))
  return ClipInputs(mfcc, crops, warnings)


def features(clip: str, audio: Optional[str], audio_only: bool):
  """(mfcc (156, 10) raw, face crops (15, 224, 224, 3) uint8 RGB or None) of one clip."""
  inputs = clip_inputs(clip, audio, audio_only)
  return inputs.mfcc, inputs.crops


def _softmax_of(model: Model, inputs: ClipInputs) -> np.ndarray:
  crops = None if inputs.crops is None else np.asarray(inputs.crops, np.uint8)[None]
  logits = np.asarray(model.logits(np.asarray(inputs.mfcc, np.float32)[None], crops), np.float64)[0]
  e = np.exp(logits - logits.max())
  return e / e.sum()


def predict_clip(model: Model, clip: str, audio: Optional[str] = None) -> Tuple[np.ndarray, List[str]]:
  """(softmax over the model's classes (C,), warnings) for one clip."""
  inputs = clip_inputs(clip, audio, model.audio_only)
  return _softmax_of(model, inputs), inputs.warnings


def probabilities(model: Model, clip: str, audio: Optional[str] = None) -> np.ndarray:
  """Softmax over the classes (C,) for one clip."""
  return predict_clip(model, clip, audio)[0]


# ---- Output --------------------------------------------------------------------------------------------


def per_class_accuracy(rows: Sequence[dict], class_names: Sequence[str]) -> List[Tuple[str, int, int]]:
  """[(class, correct, clips)] over the rows with a known label, classes that have clips only."""
  out = []
  for name in class_names:
    labelled = [r for r in rows if r["label"] == name]
    if labelled:
      out.append((name, sum(r["predicted"] == r["label"] for r in labelled), len(labelled)))
  return out


def write_rows(path: str, rows: Sequence[dict], class_names: Sequence[str]) -> None:
  """Per-clip probabilities as CSV (one row per clip) or JSON (a list of objects), by the file's suffix."""
  from etils import epath
  out = epath.Path(path)
  if path.lower().endswith(".json"):
    out.write_text(json.dumps(list(rows), indent=1) + "\n")
    return
  if not path.lower().endswith(".csv"):
    raise ValueError(f"--output {path}: expected a .csv or .json file name")
  import csv
  import io
  columns = (["clip", "audio", "audio_used", "label", "predicted", "error", "warnings"]
             + [f"p_{c}" for c in class_names])
  text = io.StringIO()
  writer = csv.DictWriter(text, columns, extrasaction="ignore")
  writer.writeheader()
  for r in rows:
    writer.writerow(dict(r, warnings=" | ".join(r.get("warnings", [])),
                         **{f"p_{c}": r.get("probabilities", {}).get(c, "") for c in class_names}))
  out.write_text(text.getvalue())


def _parse_args(argv) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m avtca_jax.predict", description=__doc__.split("\n\n")[0])
  parser.add_argument("model", help="training workdir, checkpoint step, converted checkpoint, PyTorch .pth or "
                      "export folder")
  parser.add_argument("clip", help="a video (any name, any container PyAV or OpenCV opens), an audio file for an "
                      "audio-only model, or a folder")
  parser.add_argument("audio", nargs="?", default=None, help="audio of the same take (a file, or a folder of "
                      "them for a folder of clips); default: an audio file of the video's name beside it, else "
                      "the video's own soundtrack")
  parser.add_argument("--output", default=None, help="write per-clip probabilities to FILE.csv or FILE.json")
  console.add_common_arguments(parser)
  return parser.parse_args(argv)


def _load_model_and_inputs(args: argparse.Namespace):
  """(model, [(clip, audio)]); a user error (a bad --output name, model or clip) exits with one line."""
  try:
    if args.output is not None and not args.output.lower().endswith((".csv", ".json")):
      raise ValueError(f"--output {args.output}: expected a .csv or .json file name")
    model = load_model(args.model)
    inputs = find_inputs(args.clip, args.audio, model.audio_only)
  except Exception as error:  # a user error is one line; a bug keeps its traceback
    console.exit_on_user_error(error, args.verbose)
  for warning in model.warnings:
    print(f"warning: {warning}", file=sys.stderr)
  return model, inputs


def _predict_row(model, clip: str, audio, args: argparse.Namespace, naming, many: bool, bar) -> dict:
  """One clip's result row, its line(s) printed; a user error skips the clip of a folder (exits for one clip)."""
  names = model.class_names
  say = bar.write if bar else print
  label = label_of(clip, naming)
  used = audio_used(clip, audio, args.audio, model.audio_only)
  row = dict(clip=clip, audio=audio or "", audio_used=used, label=None if label is None else names[label])
  try:
    p, warnings = predict_clip(model, clip, audio)
  except Exception as error:
    if not console.is_user_error(error):
      raise
    if not many:
      console.exit_on_user_error(error, args.verbose)
    row["error"] = console.user_error_line(error).removeprefix("error: ")
    say(f"skipped {row['error']}")
    return row
  for warning in warnings:
    (bar.write if bar else print)(f"warning: {warning}", file=sys.stderr)
  order = np.argsort(-p)
  row.update(predicted=names[order[0]], warnings=warnings,
             probabilities={names[i]: round(float(p[i]), 6) for i in range(len(p))})
  shown = f"{os.path.basename(clip)}: {names[order[0]]} ({p[order[0]]:.3f})"
  if label is not None:
    shown += f"; label {names[label]}"
  shown += f"; audio: {used}"
  width = max(10, max(len(n) for n in names))
  lines = [shown] if many else [shown] + [f"  {names[i]:<{width}} {p[i]:.4f}" for i in range(len(p))]
  say("\n".join(lines))
  return row


def _print_summary(rows: list[dict], names, naming) -> None:
  """A folder's totals: clips predicted and skipped, and the accuracy where clips carry a label."""
  done = [r for r in rows if "predicted" in r]
  labelled = [r for r in done if r["label"] is not None]
  print(f"{len(done)} of {len(rows)} clips predicted" + (f", {len(rows) - len(done)} skipped" if len(done) < len(rows) else ""))
  if labelled:
    correct = sum(r["predicted"] == r["label"] for r in labelled)
    print(f"accuracy {correct / len(labelled):.3f} ({correct}/{len(labelled)} clips with a "
          f"{_NAMED_DATASETS[naming]} label)")
    width = max(10, max(len(n) for n in names))
    for name, right, n in per_class_accuracy(labelled, names):
      print(f"  {name:<{width}} {right}/{n}")


def main(argv=None) -> int:
  args = _parse_args(argv)
  console.start(args)
  model, inputs = _load_model_and_inputs(args)
  names = model.class_names
  naming = naming_of(names)
  many = len(inputs) > 1 or os.path.isdir(args.clip)
  bar = None
  if many:
    from tqdm import tqdm
    bar = tqdm(total=len(inputs), unit="clip", desc="predict", dynamic_ncols=True, file=sys.stderr)
  rows = []
  for clip, audio in inputs:
    rows.append(_predict_row(model, clip, audio, args, naming, many, bar))
    if bar is not None:
      bar.update(1)
  if bar is not None:
    bar.close()
  if many:
    _print_summary(rows, names, naming)
  if args.output:
    try:
      write_rows(args.output, rows, names)
    except Exception as error:
      console.exit_on_user_error(error, args.verbose)
    print(f"written to {args.output}")
  return 0 if all("predicted" in r for r in rows) else 1

if __name__ == "__main__":
  sys.exit(main())
