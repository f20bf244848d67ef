"""Emotion probabilities for any clip or folder of clips: `python -m avtca_jax.predict MODEL CLIP [AUDIO]`.

MODEL is any checkpoint kind of avtca_jax.checkpoint_kinds (a training workdir, a checkpoint step, a
converted checkpoint, the original's PyTorch .pth, converted on the fly) or an export folder
(`python -m avtca_jax.export`; then only jax, numpy and the preprocessing libraries are needed).

CLIP is a video of any name (its label is shown only when the name is a RAVDESS name), or a folder: every
video under it (symlinks followed) is predicted, with a progress bar, one line per clip, the accuracy per
class when the names carry labels, and `--output FILE.csv|.json` for the per-clip probabilities. A video uses
its own soundtrack; AUDIO (a .wav/.flac of the same take, or a folder of them) replaces it, which a video
without a soundtrack needs. In a folder, an audio file with the video's name (`clip.mp4` + `clip.wav`) or,
for RAVDESS names, the take's audio-only (03) file is used as its partner. An audio-only model takes
audio files (or a video's soundtrack).

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
from avtca_jax.preprocessing.names import EMOTIONS
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".avi", ".webm")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".m4a")


@dataclasses.dataclass
class Model:
  """What prediction needs from a checkpoint or an export."""
  name: str
  audio_only: bool
  num_classes: int
  logits: Callable  # (mfcc (1, 156, 10) float32, frames (1, 15, 224, 224, 3) uint8 or None) -> (1, C)
  warnings: List[str]


def load_model(path: str) -> Model:
  """A checkpoint of any kind (jit-compiled forward) or an export folder (jax.export, no training stack)."""
  from avtca_jax import export
  if export.is_export(path):
    exported = export.load(path)
    return Model(path, exported.audio_only, exported.num_classes, exported.logits, exported.warnings)
  import jax
  from avtca_jax import checkpoint_kinds
  loaded = checkpoint_kinds.load(path)
  forward = jax.jit(loaded.forward())
  logits = (lambda mfcc, frames=None: forward(mfcc)) if loaded.audio_only else forward
  return Model(path, loaded.audio_only, loaded.config.num_classes, logits, loaded.warnings())


# ---- Inputs --------------------------------------------------------------------------------------------


def label_of(path: str) -> Optional[int]:
  """0..7 when the file name is a RAVDESS name (any modality), else None: the label is never guessed."""
  from avtca_jax.preprocessing.names import parse_name
  try:
    return parse_name(path).label
  except ValueError:
    return None


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


def _partner(video: str, audio_by_stem: dict, audio_by_take: dict) -> Optional[str]:
  from avtca_jax.preprocessing.names import parse_name
  stem = os.path.splitext(os.path.basename(video))[0]
  if stem in audio_by_stem:
    return audio_by_stem[stem]
  try:
    return audio_by_take.get(parse_name(video).take_key)
  except ValueError:
    return None


def find_inputs(clip: str, audio: Optional[str], audio_only: bool) -> List[Tuple[str, Optional[str]]]:
  """[(clip, audio or None for the clip's own soundtrack)] for a file or a folder (see the module docstring)."""
  from avtca_jax.preprocessing.names import parse_name
  if not os.path.exists(clip):
    raise FileNotFoundError(f"{clip}: no such file or folder")
  if audio is not None and not os.path.exists(audio):
    raise FileNotFoundError(f"{audio}: no such audio file or folder")
  if os.path.isfile(clip):
    if audio is not None and os.path.isdir(audio):
      raise ValueError(f"{audio} is a folder: give the audio file of {clip}")
    if not clip.lower().endswith(VIDEO_SUFFIXES + AUDIO_SUFFIXES):
      raise ValueError(f"{clip}: not a video ({', '.join(VIDEO_SUFFIXES)}) or audio "
                       f"({', '.join(AUDIO_SUFFIXES)}) file")
    if not audio_only and clip.lower().endswith(AUDIO_SUFFIXES):
      raise ValueError(f"{clip} is an audio file but the model needs the video too: give the video, and this "
                       "file as the second argument")
    return [(clip, audio)]
  files = _files(clip) + (_files(audio) if audio is not None and os.path.isdir(audio) else [])
  videos = [f for f in files if f.lower().endswith(VIDEO_SUFFIXES)]
  audios = [f for f in files if f.lower().endswith(AUDIO_SUFFIXES)]
  audio_by_stem = {os.path.splitext(os.path.basename(a))[0]: a for a in audios}
  audio_by_take = {}
  for a in audios:
    try:
      name = parse_name(a)
    except ValueError:
      continue
    if name.modality == 3:
      audio_by_take.setdefault(name.take_key, a)
  if audio_only:  # every audio file, and the soundtrack of videos that have none beside them
    pairs = [(a, None) for a in audios]
    pairs += [(v, None) for v in videos if _partner(v, audio_by_stem, audio_by_take) is None]
  else:
    pairs = [(v, _partner(v, audio_by_stem, audio_by_take)) for v in videos]
  if not pairs:
    raise FileNotFoundError(f"{clip}: no {'audio or video' if audio_only else 'video'} files in this folder "
                            f"({', '.join(VIDEO_SUFFIXES + (AUDIO_SUFFIXES if audio_only else ()))})")
  return sorted(pairs)


def features(clip: str, audio: Optional[str], audio_only: bool):
  """(mfcc (156, 10) raw, face crops (15, 224, 224, 3) uint8 RGB or None) of one clip."""
  from avtca_jax.preprocessing import audio as audio_lib
  if audio_only:
    return audio_lib.audio_features(audio or clip)[0], None
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
  return result["mfcc"], result["face_crops"]


def probabilities(model: Model, clip: str, audio: Optional[str] = None) -> np.ndarray:
  """Softmax over the classes (C,) for one clip."""
  mfcc, crops = features(clip, audio, model.audio_only)
  logits = np.asarray(model.logits(np.asarray(mfcc, np.float32)[None],
                                   None if crops is None else np.asarray(crops, np.uint8)[None]), np.float64)[0]
  e = np.exp(logits - logits.max())
  return e / e.sum()


# ---- Output --------------------------------------------------------------------------------------------


def per_class_accuracy(rows: Sequence[dict], num_classes: int) -> List[Tuple[str, int, int]]:
  """[(emotion, correct, clips)] over the rows with a known label, classes that have clips only."""
  out = []
  for c in range(num_classes):
    labelled = [r for r in rows if r["label"] == EMOTIONS[c]]
    if labelled:
      out.append((EMOTIONS[c], sum(r["predicted"] == r["label"] for r in labelled), len(labelled)))
  return out


def write_rows(path: str, rows: Sequence[dict], num_classes: int) -> None:
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
  columns = ["clip", "audio", "label", "predicted", "error"] + [f"p_{e}" for e in EMOTIONS[:num_classes]]
  text = io.StringIO()
  writer = csv.DictWriter(text, columns, extrasaction="ignore")
  writer.writeheader()
  for r in rows:
    writer.writerow(dict(r, **{f"p_{e}": r.get("probabilities", {}).get(e, "") for e in EMOTIONS}))
  out.write_text(text.getvalue())


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m avtca_jax.predict", description=__doc__.split("\n\n")[0])
  parser.add_argument("model", help="training workdir, checkpoint step, converted checkpoint, PyTorch .pth or "
                      "export folder")
  parser.add_argument("clip", help="a video (any name), an audio file for an audio-only model, or a folder")
  parser.add_argument("audio", nargs="?", default=None, help="audio of the same take (a file, or a folder of "
                      "them for a folder of clips); default: the video's own soundtrack")
  parser.add_argument("--output", default=None, help="write per-clip probabilities to FILE.csv or FILE.json")
  console.add_common_arguments(parser)
  args = parser.parse_args(argv)
  console.start(args)
  try:
    if args.output is not None and not args.output.lower().endswith((".csv", ".json")):
      raise ValueError(f"--output {args.output}: expected a .csv or .json file name")
    model = load_model(args.model)
    inputs = find_inputs(args.clip, args.audio, model.audio_only)
  except Exception as error:  # a user error is one line; a bug keeps its traceback
    console.exit_on_user_error(error, args.verbose)
  for warning in model.warnings:
    print(f"warning: {warning}", file=sys.stderr)

  rows, many = [], len(inputs) > 1 or os.path.isdir(args.clip)
  bar = None
  if many:
    from tqdm import tqdm
    bar = tqdm(total=len(inputs), unit="clip", desc="predict", dynamic_ncols=True, file=sys.stderr)
  for clip, audio in inputs:
    label = label_of(clip)
    row = dict(clip=clip, audio=audio or "", label=None if label is None else EMOTIONS[label])
    try:
      p = probabilities(model, clip, audio)
    except Exception as error:
      if not console.is_user_error(error):
        raise
      if not many:
        console.exit_on_user_error(error, args.verbose)
      row["error"] = console.user_error_line(error).removeprefix("error: ")
      (bar.write if bar else print)(f"skipped {row['error']}")
    else:
      order = np.argsort(-p)
      row.update(predicted=EMOTIONS[order[0]],
                 probabilities={EMOTIONS[i]: round(float(p[i]), 6) for i in range(len(p))})
      shown = f"{os.path.basename(clip)}: {EMOTIONS[order[0]]} ({p[order[0]]:.3f})"
      if label is not None:
        shown += f"; label {EMOTIONS[label]}"
      lines = [shown] if many else [shown] + [f"  {EMOTIONS[i]:<10} {p[i]:.4f}" for i in range(len(p))]
      (bar.write if bar else print)("\n".join(lines))
    rows.append(row)
    if bar is not None:
      bar.update(1)
  if bar is not None:
    bar.close()

  done = [r for r in rows if "predicted" in r]
  labelled = [r for r in done if r["label"] is not None]
  if many:
    print(f"{len(done)} of {len(rows)} clips predicted" + (f", {len(rows) - len(done)} skipped" if len(done) < len(rows) else ""))
  if many and labelled:
    correct = sum(r["predicted"] == r["label"] for r in labelled)
    print(f"accuracy {correct / len(labelled):.3f} ({correct}/{len(labelled)} clips with a RAVDESS label)")
    for emotion, right, n in per_class_accuracy(labelled, model.num_classes):
      print(f"  {emotion:<10} {right}/{n}")
  if args.output:
    try:
      write_rows(args.output, rows, model.num_classes)
    except Exception as error:
      console.exit_on_user_error(error, args.verbose)
    print(f"written to {args.output}")
  return 0 if len(done) == len(rows) else 1


if __name__ == "__main__":
  sys.exit(main())
