"""Dataset file names (RAVDESS, CREMA-D), and pairing each video with the audio of the same take.

RAVDESS: MM-VV-EE-II-SS-RR-AA (below). CREMA-D: ACTOR_SENTENCE_EMOTION_LEVEL, e.g. `1001_DFA_ANG_XX.flv`
(actor 1001..1091, one of 12 sentences, emotion ANG DIS FEA HAP NEU SAD, level LO MD HI XX), the videos in
VideoFlash/ and the audio of the same take, with the same name, in AudioWAV/ (`parse_crema_d_name`).
`NAMINGS` maps a dataset to its parser; pairing, the clip search and the preprocessing take `naming=`.

Fields: modality (01 audio-video, 02 video-only, 03 audio-only), vocal channel (01 speech, 02 song),
emotion (01..08), intensity (01 normal, 02 strong), statement (01/02), repetition (01/02), actor (01..24).

Copies made by hand or by download tools sometimes carry a suffix after the seven fields, such as
`01-01-07-02-02-01-01_1.mp4` (one of the shared test clips). A suffix of `_` followed by letters, digits, `-`
or `_` is accepted and kept in `RavdessName.suffix`; it is part of `stem` (so cache files of two copies never
collide) but not of `take_key` (so the copy still pairs with the audio of its take).
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

# Index = label = emotion field - 1 (the original's `make_dataset` subtracts 1).
EMOTIONS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
MODALITIES = {1: "audio-video", 2: "video-only", 3: "audio-only"}
VOCAL_CHANNELS = {1: "speech", 2: "song"}
VIDEO_EXTENSIONS = (".mp4", ".flv")
AUDIO_EXTENSIONS = (".wav", ".flac")
# CREMA-D's emotion codes in their file names, and the class names in label order (the codes' order).
CREMA_D_CODES = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
CREMA_D_EMOTIONS = ("anger", "disgust", "fear", "happy", "neutral", "sad")
CREMA_D_SENTENCES = ("DFA", "IEO", "IOM", "ITH", "ITS", "IWL", "IWW", "MTI", "TAI", "TIE", "TSI", "WSI")
CREMA_D_LEVELS = ("LO", "MD", "HI", "XX")

_NAME = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})(_[A-Za-z0-9_-]+)?$")


@dataclasses.dataclass(frozen=True)
class RavdessName:
  modality: int  # 1 audio-video, 2 video-only, 3 audio-only
  vocal_channel: int  # 1 speech, 2 song
  emotion: int  # 1..8, as in the file name
  intensity: int  # 1 normal, 2 strong
  statement: int
  repetition: int
  actor: int  # 1..24; odd male, even female
  suffix: str = ""  # e.g. "_1" for a renamed copy; "" for official names

  @property
  def label(self) -> int:
    """0..7, index into EMOTIONS."""
    return self.emotion - 1

  @property
  def emotion_name(self) -> str:
    return EMOTIONS[self.label]

  @property
  def modality_name(self) -> str:
    return MODALITIES[self.modality]

  @property
  def take_key(self) -> str:
    """Fields 2..7 ('01-05-02-01-01-05'): the same for the 01 video, the 02 video and the 03 audio of a take."""
    return "-".join(f"{v:02d}" for v in (self.vocal_channel, self.emotion, self.intensity,
                                            self.statement, self.repetition, self.actor))

  @property
  def stem(self) -> str:
    """The file name without its extension, suffix included: unique per file, used for cache file names."""
    return f"{self.modality:02d}-{self.take_key}{self.suffix}"

  @property
  def audio_stem(self) -> str:
    """Stem of the official audio-only (03) file of this take."""
    return f"03-{self.take_key}"

  def details(self) -> dict:
    """The name's other fields, for inspection (stored with each preprocessed clip)."""
    return dict(emotion=self.emotion, intensity=self.intensity, statement=self.statement,
                repetition=self.repetition, vocal_channel=self.vocal_channel)


def parse_name(path: str | os.PathLike) -> RavdessName:
  """Parse a RAVDESS file name (a path or a bare name, with or without extension).

  Raises ValueError naming the file when the name does not follow the convention or a field is out of range.
  """
  stem = Path(path).name
  for ext in VIDEO_EXTENSIONS + AUDIO_EXTENSIONS + (".npz", ".npy"):
    if stem.lower().endswith(ext):
      stem = stem[: -len(ext)]
      break
  match = _NAME.match(stem)
  if not match:
    raise ValueError(f"{path}: not a RAVDESS file name (expected MM-VV-EE-II-SS-RR-AA with two-digit fields, "
                     "optionally followed by a suffix such as '_1')")
  fields = [int(g) for g in match.groups()[:7]]
  name = RavdessName(*fields, suffix=match.group(8) or "")
  problems = []
  if name.modality not in MODALITIES:
    problems.append(f"modality {name.modality:02d} not in 01..03")
  if name.vocal_channel not in VOCAL_CHANNELS:
    problems.append(f"vocal channel {name.vocal_channel:02d} not in 01..02")
  if not 1 <= name.emotion <= 8:
    problems.append(f"emotion {name.emotion:02d} not in 01..08")
  if name.intensity not in (1, 2):
    problems.append(f"intensity {name.intensity:02d} not in 01..02")
  if name.statement not in (1, 2):
    problems.append(f"statement {name.statement:02d} not in 01..02")
  if name.repetition not in (1, 2):
    problems.append(f"repetition {name.repetition:02d} not in 01..02")
  if not 1 <= name.actor <= 24:
    problems.append(f"actor {name.actor:02d} not in 01..24")
  if problems:
    raise ValueError(f"{path}: not a valid RAVDESS file name: " + "; ".join(problems))
  return name


_CREMA_D_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})(_[A-Za-z0-9_-]+)?$")


@dataclasses.dataclass(frozen=True)
class CremaDName:
  actor: int  # 1001..1091
  sentence: str  # one of CREMA_D_SENTENCES
  emotion_code: str  # one of CREMA_D_CODES
  level: str  # LO, MD, HI, XX (unspecified)
  modality: int = 1  # 1 a video (its own soundtrack or the AudioWAV file), 3 an audio file
  suffix: str = ""

  @property
  def label(self) -> int:
    """0..5, index into CREMA_D_EMOTIONS."""
    return CREMA_D_CODES.index(self.emotion_code)

  @property
  def emotion_name(self) -> str:
    return CREMA_D_EMOTIONS[self.label]

  @property
  def take_key(self) -> str:
    """'1001_DFA_ANG_XX': the same for the video and the audio file of a take."""
    return f"{self.actor}_{self.sentence}_{self.emotion_code}_{self.level}"

  @property
  def stem(self) -> str:
    return self.take_key + self.suffix

  @property
  def audio_stem(self) -> str:
    return self.take_key

  def details(self) -> dict:
    return dict(sentence=self.sentence, emotion_code=self.emotion_code, level=self.level)


def parse_crema_d_name(path: str | os.PathLike) -> CremaDName:
  """Parse a CREMA-D file name ('1001_DFA_ANG_XX.flv', '.wav', '.mp4', ...); an audio file's modality is 3.

  Raises ValueError naming the file when the name does not follow the convention.
  """
  name = Path(path).name
  stem, dot, ext = name.rpartition(".")
  if not dot:
    stem, ext = name, ""
  match = _CREMA_D_NAME.match(stem)
  if not match:
    raise ValueError(f"{path}: not a CREMA-D file name (expected ACTOR_SENTENCE_EMOTION_LEVEL such as "
                     "1001_DFA_ANG_XX)")
  actor, sentence, code, level, suffix = match.groups()
  problems = []
  if not 1001 <= int(actor) <= 1091:
    problems.append(f"actor {actor} not in 1001..1091")
  if sentence not in CREMA_D_SENTENCES:
    problems.append(f"sentence {sentence} not one of {', '.join(CREMA_D_SENTENCES)}")
  if code not in CREMA_D_CODES:
    problems.append(f"emotion {code} not one of {', '.join(CREMA_D_CODES)}")
  if level not in CREMA_D_LEVELS:
    problems.append(f"level {level} not one of {', '.join(CREMA_D_LEVELS)}")
  if problems:
    raise ValueError(f"{path}: not a valid CREMA-D file name: " + "; ".join(problems))
  modality = 3 if f".{ext.lower()}" in AUDIO_EXTENSIONS else 1
  return CremaDName(int(actor), sentence, code, level, modality, suffix or "")


# Dataset -> file name parser (the builders' and the preprocessing's `naming=`).
NAMINGS = {"ravdess": parse_name, "crema_d": parse_crema_d_name}


@dataclasses.dataclass(frozen=True)
class ClipPair:
  """One video and the audio that goes with it. `audio is None` means: use the video's own soundtrack."""

  video: Path
  audio: Path | None
  name: RavdessName | CremaDName


@dataclasses.dataclass(frozen=True)
class Problem:
  """A file that cannot be used, and why (in words that name the file)."""

  path: str
  reason: str

  def __str__(self):
    return f"{self.path}: {self.reason}"


def _audio_preference(path: Path, video: Path):
  """Sort key among several audio copies of one take: same folder as the video, then the highest sample
  rate (the least processed copy: RAVDESS's own wav files are 48 kHz), then wav before flac, then path."""
  try:
    import soundfile
    rate = soundfile.info(str(path)).samplerate
  except Exception:  # unreadable here: let load_audio report it later, but prefer readable copies
    rate = -1
  return (path.parent != video.parent, -rate, path.suffix.lower() != ".wav", str(path))


def pair_videos_with_audio(videos: Iterable[str | os.PathLike], audios: Iterable[str | os.PathLike] = (),
                           *, soundtrack_fallback: bool = True, modalities: Sequence[int] = (1, 2),
                           naming: str = "ravdess") -> tuple[list[ClipPair], list[Problem]]:
  """Pair each video with the audio-only (03) file of its take.

  A video whose take has no audio file uses its own soundtrack when `soundtrack_fallback` and it is an
  audio-video (01) clip; a video-only (02) clip, or any clip when `soundtrack_fallback=False`, is reported as
  a Problem ('missing audio partner ...'). Unparseable names, and audio files that are not modality 03,
  are reported too. When a take has several audio copies (the shared data has 22 kHz and 48 kHz ones), the
  one preferred by `_audio_preference` is used. Videos whose modality is not in `modalities` are left out
  silently (use (1,) to drop the video-only copies). `naming` picks the file name convention (`NAMINGS`).
  Returns (pairs sorted by video path, problems).
  """
  parse_name = NAMINGS[naming]
  problems: list[Problem] = []
  audio_by_take: dict[str, list[Path]] = {}
  for a in audios:
    a = Path(a)
    try:
      name = parse_name(a)
    except ValueError as e:
      problems.append(Problem(str(a), str(e).split(": ", 1)[1]))
      continue
    if name.modality != 3:
      problems.append(Problem(str(a), f"audio file with modality {name.modality:02d}, expected 03 (audio-only)"))
      continue
    audio_by_take.setdefault(name.take_key, []).append(a)

  pairs: list[ClipPair] = []
  for v in sorted(Path(v) for v in videos):
    try:
      name = parse_name(v)
    except ValueError as e:
      problems.append(Problem(str(v), str(e).split(": ", 1)[1]))
      continue
    if name.modality == 3:
      problems.append(Problem(str(v), "video file with modality 03 (audio-only)"))
      continue
    if name.modality not in modalities:
      continue
    candidates = audio_by_take.get(name.take_key, [])
    if candidates:
      pairs.append(ClipPair(v, min(candidates, key=lambda a: _audio_preference(a, v)), name))
    elif soundtrack_fallback and name.modality == 1:
      pairs.append(ClipPair(v, None, name))
    else:
      why = "a video-only (02) clip has no soundtrack" if name.modality == 2 else "soundtrack fallback is off"
      problems.append(Problem(str(v), f"missing audio partner {name.audio_stem}.wav (or .flac) for this take; {why}"))
  return pairs, problems


def _walk_files(root: Path):
  """Every file under `root`, following symlinked folders (each real folder once, so a link loop ends)."""
  seen = set()
  for dirpath, dirnames, files in os.walk(root, followlinks=True):
    real = os.path.realpath(dirpath)
    if real in seen:
      dirnames[:] = []
      continue
    seen.add(real)
    for f in files:
      if not f.startswith("."):
        yield Path(dirpath) / f


def find_clips(root: str | os.PathLike, *, soundtrack_fallback: bool = True, modalities: Sequence[int] = (1, 2),
               audio_root: str | os.PathLike | None = None,
               naming: str = "ravdess") -> tuple[list[ClipPair], list[Problem]]:
  """All videos under `root` (recursively, symlinks followed), paired with the audio files found under the
  same root and under `audio_root` (a separate audio folder, when given).

  Works with the official layout (Actor_XX/ folders with .mp4 and .wav side by side, as the original
  README asks) and with the shared test layout (video_*/ and audio_speech_*/Actor_XX/ folders of .flac);
  with naming='crema_d', with CREMA-D's VideoFlash/ and AudioWAV/ folders.
  """
  roots = [Path(root)] + ([Path(audio_root)] if audio_root is not None else [])
  for folder, what in zip(roots, ("RAVDESS input folder (--input)", "audio folder (--audio)")):
    if not folder.is_dir():
      raise FileNotFoundError(f"{folder}: {what} not found" if not folder.exists() else
                              f"{folder}: {what} is not a folder")
  videos, audios = [], []
  for path in _walk_files(roots[0]):
    low = path.name.lower()
    if low.endswith(VIDEO_EXTENSIONS):
      videos.append(path)
    elif low.endswith(AUDIO_EXTENSIONS) and "croppad" not in low:  # the original writes *_croppad.wav beside
      audios.append(path)
  for path in _walk_files(roots[1]) if len(roots) > 1 else ():
    low = path.name.lower()
    if low.endswith(AUDIO_EXTENSIONS) and "croppad" not in low:
      audios.append(path)
  pairs, problems = pair_videos_with_audio(videos, audios, soundtrack_fallback=soundtrack_fallback,
                                           modalities=modalities, naming=naming)
  # Audio files whose name does not parse are reported; audio files without a video are not (the audio
  # set is usually larger than the video set here).
  return pairs, problems
