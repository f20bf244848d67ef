"""Audio: load at 22050 Hz, centre crop or zero pad to 3.6 s, 10 MFCCs with the original's STFT settings.

The original (docs/original.md#audio-window, docs/original.md#mfccs) loads with librosa 0.8.1 at 22050 Hz
(resampy 'kaiser_best'), crops the centre 3.6 s or zero pads at the end to 79,380 samples, saves a 16-bit
wav, reloads it and calls `librosa.feature.mfcc(y, sr, n_mfcc=10)` with 0.8.1's defaults. Differences here,
on purpose:
- resampling uses librosa 0.11's default 'soxr_hq' (resampy is not a dependency; the two agree far below the
  MFCC's own dB resolution, see docs/preprocessing.md);
- no 16-bit round trip (features come straight from float samples);
- every STFT/mel/dB/DCT setting is passed explicitly, `pad_mode='reflect'` included: librosa >= 0.9
  changed the default to zero padding, which changes the first and last MFCC frames.

Decoding routes: wav/flac/ogg go through soundfile (via librosa). Containers such as mp4 (a video's own
soundtrack, AAC) need FFmpeg: PyAV (`pip install av`, wheels bundle FFmpeg) when it is importable, else the
`ffmpeg` command when it is on PATH, else librosa's audioread fallback. The pip OpenCV build cannot read
audio and soundfile cannot read AAC; without one of these routes the error says so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np

SAMPLE_RATE = 22050
CLIP_SECONDS = 3.6
N_MFCC = 10
# The original's STFT / mel / dB settings (librosa 0.8.1 defaults), all explicit.
MFCC_SETTINGS = dict(n_fft=2048, hop_length=512, win_length=None, window="hann", center=True,
                     pad_mode="reflect", power=2.0, n_mels=128, fmin=0.0, fmax=None, htk=False,
                     mel_norm="slaney", dct_type=2, norm="ortho", lifter=0)
DB_SETTINGS = dict(ref=1.0, amin=1e-10, top_db=80.0)
_SOUNDFILE_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif")


class AudioError(ValueError):
  """Audio that cannot be used; the message starts with the file name."""


def _librosa_load(path: Path, **kwargs):
  """librosa.load without the warnings of its fallback: when soundfile cannot read a file, librosa warns
  and retries with audioread (deprecated); a failure there reaches the caller, which reports it in one line."""
  import librosa
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="PySoundFile failed", category=UserWarning)
    warnings.filterwarnings("ignore", message=r"librosa\.core\.audio\.__audioread_load", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="audioread")
    return librosa.load(str(path), **kwargs)


def num_samples(seconds: float = CLIP_SECONDS, sr: int = SAMPLE_RATE) -> int:
  """79,380 for 3.6 s at 22050 Hz, computed as the original does (int(sr * seconds))."""
  return int(sr * seconds)


def num_mfcc_frames(seconds: float = CLIP_SECONDS, sr: int = SAMPLE_RATE) -> int:
  """156 for 3.6 s at 22050 Hz (centred STFT: 1 + samples // hop)."""
  return 1 + num_samples(seconds, sr) // MFCC_SETTINGS["hop_length"]


# The MFCCs of one clip, time-major: (time frames, coefficients) = (156, 10), the models' audio input.
MFCC_SHAPE = (num_mfcc_frames(), N_MFCC)


def _decode_with_pyav(path: Path):
  import av  # optional dependency
  with av.open(str(path)) as container:
    if not container.streams.audio:
      raise AudioError(f"{path}: has no audio stream")
    stream = container.streams.audio[0]
    # Ask the resampler for planar float32 so every codec comes out the same way (channels, samples).
    resampler = av.AudioResampler(format="fltp", layout=stream.layout.name, rate=stream.rate)
    chunks = []
    for frame in container.decode(stream):
      for out in resampler.resample(frame):
        chunks.append(out.to_ndarray())
    for out in resampler.resample(None):
      chunks.append(out.to_ndarray())
  if not chunks:
    return np.zeros((0,), np.float32), stream.rate
  return np.concatenate(chunks, axis=-1).astype(np.float32), stream.rate


def _decode_with_ffmpeg(path: Path, sr: int):
  proc = subprocess.run([shutil.which("ffmpeg"), "-v", "error", "-nostdin", "-i", str(path), "-vn", "-ac", "1",
                         "-ar", str(sr), "-f", "f32le", "-"], capture_output=True, check=False)
  if proc.returncode != 0:
    raise AudioError(f"{path}: ffmpeg could not decode the audio: {proc.stderr.decode(errors='replace').strip()}")
  return np.frombuffer(proc.stdout, np.float32).copy(), sr


def _decode_container(path: Path, sr: int) -> np.ndarray:
  """Mono float32 at `sr` from a container soundfile cannot read (mp4/m4a...)."""
  import librosa
  try:
    import av  # noqa: F401
    have_pyav = True
  except ImportError:
    have_pyav = False
  if have_pyav:
    try:
      y, native_sr = _decode_with_pyav(path)
    except AudioError:
      raise
    except Exception as e:  # PyAV raises its own error classes (InvalidDataError...)
      raise AudioError(f"{path}: could not decode the audio ({type(e).__name__}: {e})") from e
  elif shutil.which("ffmpeg"):
    y, native_sr = _decode_with_ffmpeg(path, sr)
  else:
    try:
      y, native_sr = _librosa_load(path, sr=None, mono=False)  # audioread: needs ffmpeg or GStreamer
    except Exception as e:
      raise AudioError(f"{path}: cannot decode this container's audio here: install PyAV (pip install av) or "
                       f"ffmpeg; the pip OpenCV build has no audio support ({type(e).__name__}: {e})") from e
  y = np.asarray(y, np.float32)
  if y.ndim > 1:
    y = y.mean(axis=0)  # downmix as librosa.to_mono does
  if y.size and native_sr != sr:
    y = librosa.resample(y, orig_sr=native_sr, target_sr=sr, res_type="soxr_hq")
  return y


def load_audio(path: str | os.PathLike, sr: int = SAMPLE_RATE) -> np.ndarray:
  """Mono float32 samples at `sr` from a wav/flac file or a video's soundtrack (mp4).

  Stereo is averaged to mono; any input rate (48 kHz, 44.1 kHz, 22.05 kHz) is resampled with soxr_hq.
  Raises FileNotFoundError or AudioError, naming the file, for a missing, empty, silent-length or corrupt file.
  """
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: audio file not found")
  if path.stat().st_size == 0:
    raise AudioError(f"{path}: zero-length file (0 bytes), no audio")
  if path.suffix.lower() in _SOUNDFILE_EXTENSIONS:
    try:
      y, _ = _librosa_load(path, sr=sr, mono=True, res_type="soxr_hq")
    except Exception as e:
      raise AudioError(f"{path}: could not decode the audio ({type(e).__name__}: {e})") from e
  else:
    y = _decode_container(path, sr)
  y = np.asarray(y, np.float32)
  if y.size == 0:
    raise AudioError(f"{path}: contains no audio samples")
  if not np.all(np.isfinite(y)):
    raise AudioError(f"{path}: decoded audio contains NaN or infinite samples")
  return y


def crop_start(num_input: int, seconds: float = CLIP_SECONDS, sr: int = SAMPLE_RATE) -> int:
  """First kept sample of `crop_or_pad`: floor(excess / 2) for long clips, 0 for short ones."""
  return max(0, (num_input - num_samples(seconds, sr)) // 2)


def crop_or_pad(y: np.ndarray, seconds: float = CLIP_SECONDS, sr: int = SAMPLE_RATE) -> np.ndarray:
  """Exactly int(sr * seconds) samples: the centre of a longer clip (floor(excess/2) removed at the start,
  the rest at the end), or a shorter clip followed by zeros, as the original's extract_audios.py does."""
  target = num_samples(seconds, sr)
  y = np.asarray(y, np.float32)
  if y.shape[0] >= target:
    start = crop_start(y.shape[0], seconds, sr)
    return y[start:start + target]
  return np.pad(y, (0, target - y.shape[0]))


def mfcc(y: np.ndarray, sr: int = SAMPLE_RATE, n_mfcc: int = N_MFCC) -> np.ndarray:
  """MFCCs (time, n_mfcc) float32 with the original's settings: (156, 10) for 3.6 s at 22050 Hz.

  Channels-last, as the Flax model takes it; `.T` gives the original's (10, 156). A batch of waveforms
  (..., samples) gives (..., time, n_mfcc), each clip exactly as alone (one STFT and mel pass for all; the
  dB floor, top_db below the clip's own maximum, is applied per clip).
  """
  import librosa

  y = np.asarray(y, np.float32)
  s = MFCC_SETTINGS
  mel_power = librosa.feature.melspectrogram(
      y=y, sr=sr, n_fft=s["n_fft"], hop_length=s["hop_length"], win_length=s["win_length"], window=s["window"],
      center=s["center"], pad_mode=s["pad_mode"], power=s["power"], n_mels=s["n_mels"], fmin=s["fmin"],
      fmax=s["fmax"], htk=s["htk"], norm=s["mel_norm"])
  if y.ndim > 1:
    flat = mel_power.reshape((-1,) + mel_power.shape[-2:])
    out = np.stack([mfcc_from_mel_power(m, sr, n_mfcc) for m in flat])
    return out.reshape(y.shape[:-1] + out.shape[1:])
  return mfcc_from_mel_power(mel_power, sr, n_mfcc)


def mfcc_from_mel_power(mel_power: np.ndarray, sr: int = SAMPLE_RATE, n_mfcc: int = N_MFCC) -> np.ndarray:
  """(time, n_mfcc) float32 from one clip's (n_mels, time) mel power spectrogram."""
  import librosa

  s = MFCC_SETTINGS
  log_mel = librosa.power_to_db(mel_power, **DB_SETTINGS)
  coeffs = librosa.feature.mfcc(S=log_mel, sr=sr, n_mfcc=n_mfcc, dct_type=s["dct_type"], norm=s["norm"],
                                lifter=s["lifter"])  # (n_mfcc, time)
  return np.ascontiguousarray(coeffs.T, dtype=np.float32)


def audio_features(path: str | os.PathLike, sr: int = SAMPLE_RATE,
                   seconds: float = CLIP_SECONDS) -> tuple[np.ndarray, float, float]:
  """Load, crop or pad, MFCC. Returns (mfcc (156, 10), window_start_seconds, duration_seconds).

  window_start_seconds is where the 3.6 s window starts in the recording (0 for clips shorter than 3.6 s);
  the face frames are taken from the same window.
  """
  y = load_audio(path, sr)
  start = crop_start(y.shape[0], seconds, sr)
  return mfcc(crop_or_pad(y, seconds, sr), sr), start / sr, y.shape[0] / sr
