"""The one generator of synthetic clips a model can learn: class-dependent faces, motion and tones.

Used by every builder's 'generated' config (data/ravdess, data/crema_d; `avtca_jax.tfds_builder`) and by the
in-memory 'synthetic' data source (`make_split`), so training and the input pipeline run without a download.
Each clip has the real data's structure: 15 RGB face crops (S x S, uint8) and (156, 10) MFCCs computed from a
3.6 s, 22050 Hz waveform with the same MFCC code as the real data (avtca_jax.preprocessing.audio.mfcc).

What depends on the class (any number of classes: the first 8 as below, later ones drawn from a fixed seed),
on top of per-actor and per-clip variation:
- video: the face's tint, the eyebrow slant, the mouth width, and how fast and how wide the mouth opens and
  closes over the 15 frames (a sinusoid), so both single frames and motion carry the label;
- audio: a harmonic tone whose fundamental is class-dependent (about 140..390 Hz, shifted per actor),
  amplitude-modulated at a class-dependent rate, plus white noise and a band of noise whose centre
  (about 300..7,400 Hz) is the class's, over the whole window.
Each actor has its own skin colour, background, face position and pitch offset, so actor-independent splits
are meaningful. Generation is deterministic in (seed, actor, label, index).
"""

from __future__ import annotations

import functools
from typing import Dict, Sequence

import numpy as np

from avtca_jax.preprocessing.audio import CLIP_SECONDS, SAMPLE_RATE
from avtca_jax.preprocessing.config import NUM_FRAMES

NUM_CLASSES = 8  # classes with hand-picked looks and tones below; more are drawn (`_class_params`)

# Per class: RGB tint added to the face, eyebrow slant, mouth half-width, mouth cycles per clip, amplitude.
_TINT = np.array([[0, 0, 0], [0, 20, 40], [50, 40, -20], [-30, -20, 40],
                  [70, -30, -30], [-20, 40, 10], [10, 50, -30], [40, -10, 60]], np.float32)
_BROW_SLANT = np.array([0.0, 0.1, 0.25, -0.3, -0.5, 0.4, -0.15, 0.6], np.float32)
_MOUTH_WIDTH = np.array([0.22, 0.2, 0.32, 0.16, 0.26, 0.18, 0.24, 0.2], np.float32)
_MOUTH_CYCLES = np.array([0.5, 1.0, 2.0, 0.75, 3.0, 2.5, 1.5, 3.5], np.float32)
_MOUTH_OPEN = np.array([0.02, 0.04, 0.10, 0.03, 0.12, 0.08, 0.06, 0.15], np.float32)
_TONE_HZ = 140.0 * 2.0 ** (np.arange(NUM_CLASSES) / 7.0 * 1.5)  # about 140 .. 396 Hz
_AM_HZ = np.array([0.0, 1.0, 4.0, 0.5, 6.0, 8.0, 2.0, 3.0], np.float32)
_BAND_HZ = 300.0 * 2.0 ** (np.arange(NUM_CLASSES) * 0.65)  # noise band centres, about 300 .. 7,400 Hz


def _rng(seed: int, *keys: int) -> np.random.Generator:
  return np.random.default_rng([seed, *keys])


def _class_params(label: int) -> Dict[str, np.ndarray]:
  """The class's tint, brow slant, mouth width / cycles / opening, tone (Hz) and modulation rate (Hz)."""
  if label < NUM_CLASSES:
    return dict(tint=_TINT[label], brow=_BROW_SLANT[label], width=_MOUTH_WIDTH[label], cycles=_MOUTH_CYCLES[label],
                opening=_MOUTH_OPEN[label], tone=_TONE_HZ[label], am=_AM_HZ[label], band=_BAND_HZ[label])
  r = _rng(4321, label)
  return dict(tint=r.uniform(-60, 60, 3).astype(np.float32), brow=np.float32(r.uniform(-0.6, 0.6)),
              width=np.float32(r.uniform(0.16, 0.32)), cycles=np.float32(r.uniform(0.5, 3.5)),
              opening=np.float32(r.uniform(0.02, 0.15)), tone=np.float32(140.0 * 2.0 ** r.uniform(0, 1.5)),
              am=np.float32(r.uniform(0, 8)), band=np.float32(300.0 * 2.0 ** r.uniform(0, 4.5)))


def actor_traits(seed: int, actor: int) -> Dict[str, np.ndarray]:
  r = _rng(seed, 1000 + actor)
  return dict(skin=r.uniform([150, 100, 80], [235, 190, 160]).astype(np.float32),
              background=r.uniform(20, 120, 3).astype(np.float32),
              centre=r.uniform(0.45, 0.55, 2).astype(np.float32),
              face_size=r.uniform(0.30, 0.38, 2).astype(np.float32),
              pitch=np.float32(2.0 ** r.uniform(-0.25, 0.25)))


def face_frames(label: int, actor: int, index: int, image_size: int = 64, seed: int = 0) -> np.ndarray:
  """(15, S, S, 3) uint8 RGB frames of a drawn face whose look and mouth motion depend on `label`."""
  traits = actor_traits(seed, actor)
  c = _class_params(label)
  r = _rng(seed, actor, label, index, 1)
  s = image_size
  yy, xx = (np.mgrid[0:s, 0:s].astype(np.float32) + 0.5) / s
  phase = r.uniform(0, 2 * np.pi)
  jitter = r.normal(0, 0.02, 2).astype(np.float32)
  brightness = r.uniform(0.85, 1.15)
  frames = np.empty((NUM_FRAMES, s, s, 3), np.float32)
  for t in range(NUM_FRAMES):
    cx, cy = traits["centre"] + jitter + 0.01 * np.array([np.sin(0.7 * t + phase), np.cos(0.5 * t)], np.float32)
    ax, ay = traits["face_size"]
    img = np.broadcast_to(traits["background"], (s, s, 3)).copy()
    face = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1.0
    img[face] = np.clip(traits["skin"] + c["tint"], 0, 255)
    for side in (-1.0, 1.0):  # eyes and eyebrows
      ex, ey = cx + side * 0.4 * ax, cy - 0.3 * ay
      img[((xx - ex) / (0.12 * ax)) ** 2 + ((yy - ey) / (0.08 * ay)) ** 2 <= 1.0] = (30, 30, 40)
      brow_y = ey - 0.22 * ay + c["brow"] * side * (xx - ex)
      img[(np.abs(yy - brow_y) < 0.025) & (np.abs(xx - ex) < 0.2 * ax)] = (60, 40, 30)
    opening = c["opening"] * (0.5 + 0.5 * np.sin(2 * np.pi * c["cycles"] * t / NUM_FRAMES + phase))
    mouth = ((xx - cx) / (c["width"] * ax * 2)) ** 2 + ((yy - (cy + 0.45 * ay)) / (opening + 0.01)) ** 2 <= 1.0
    img[mouth] = (120, 20, 30)
    frames[t] = img * brightness
  frames += r.normal(0, 6.0, frames.shape).astype(np.float32)
  return np.clip(np.round(frames), 0, 255).astype(np.uint8)


def waveform(label: int, actor: int, index: int, seed: int = 0) -> np.ndarray:
  """3.6 s mono float32 at 22050 Hz: a class-dependent harmonic tone, shorter than the window at times."""
  traits = actor_traits(seed, actor)
  r = _rng(seed, actor, label, index, 2)
  n = int(SAMPLE_RATE * CLIP_SECONDS)
  duration = int(SAMPLE_RATE * r.uniform(2.6, 3.6))
  t = np.arange(duration, dtype=np.float32) / SAMPLE_RATE
  f0 = _class_params(label)["tone"] * traits["pitch"] * r.uniform(0.97, 1.03)
  tone = sum((0.6 ** k) * np.sin(2 * np.pi * f0 * (k + 1) * t + r.uniform(0, 2 * np.pi)) for k in range(4))
  envelope = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.05)  # fades of 0.05 s at both ends
  envelope = envelope * (0.6 + 0.4 * np.cos(2 * np.pi * _class_params(label)["am"] * t))
  y = np.zeros(n, np.float32)
  start = r.integers(0, n - duration + 1)
  y[start:start + duration] = 0.2 * r.uniform(0.5, 1.5) * tone * envelope
  y += r.normal(0, 0.003, n).astype(np.float32)
  # A class-dependent band of noise over the whole window (the same for every actor): every MFCC frame
  # carries the class, so the audio branch alone separates the classes within a few epochs.
  spectrum = np.fft.rfft(r.normal(0, 1, n))
  freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
  centre = _class_params(label)["band"]
  spectrum *= np.exp(-0.5 * (np.log2(np.maximum(freqs, 1.0) / centre) / 0.15) ** 2)
  band = np.fft.irfft(spectrum, n)
  return (y + 0.05 * band / (band.std() + 1e-12)).astype(np.float32)


def make_clip(label: int, actor: int, index: int, image_size: int = 64, seed: int = 0) -> Dict[str, np.ndarray]:
  """{'face_crops': (15, S, S, 3) uint8 RGB, 'mfcc': (156, 10) float32} for one synthetic clip."""
  from avtca_jax.preprocessing.audio import mfcc
  return dict(face_crops=face_frames(label, actor, index, image_size, seed),
              mfcc=mfcc(waveform(label, actor, index, seed), SAMPLE_RATE))


@functools.lru_cache(maxsize=32)
def _split(num_examples: int, image_size: int, num_classes: int, groups: tuple, seed: int):
  from avtca_jax.preprocessing.audio import mfcc
  rng = np.random.default_rng(seed)
  labels = (np.arange(num_examples) % num_classes).astype(np.int32)
  rng.shuffle(labels)
  actors = rng.choice(np.asarray(groups), size=num_examples).astype(np.int32)
  keys = [(int(label), int(actor), i) for i, (label, actor) in enumerate(zip(labels, actors))]
  frames = np.stack([face_frames(label, actor, i, image_size, seed) for label, actor, i in keys])
  mfccs = []
  for start in range(0, num_examples, 64):  # one STFT and mel pass per 64 clips (audio.mfcc of a batch)
    mfccs.append(mfcc(np.stack([waveform(label, actor, i, seed) for label, actor, i in keys[start:start + 64]]),
                      SAMPLE_RATE))
  return {"mfcc": np.concatenate(mfccs).astype(np.float32), "frames": frames.astype(np.uint8), "label": labels,
          "actor": actors}


def make_split(num_examples: int, image_size: int, num_classes: int, groups: Sequence[int],
               seed: int = 0) -> Dict[str, np.ndarray]:
  """`num_examples` clips held in memory in the batch contract (avtca_jax.batch): {'mfcc' (n,156,10) f32,
  'frames' (n,15,S,S,3) uint8, 'label' (n,) i32 (every class equally often, shuffled), 'actor' (n,) i32
  (drawn from `groups`)}; clip i is `make_clip(label[i], actor[i], i, image_size, seed)`. Deterministic in the
  arguments; memoised within a process (copies are returned)."""
  split = _split(int(num_examples), int(image_size), int(num_classes), tuple(int(g) for g in groups), int(seed))
  return {k: v.copy() for k, v in split.items()}
