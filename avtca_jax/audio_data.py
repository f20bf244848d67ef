"""RAVDESS speech audio as in-memory MFCC arrays, for audio-only training.

Loads every RAVDESS audio file under a folder, crops or pads it to 3.6 s exactly as the original
(`ravdess_preprocessing/extract_audios.py`, docs/original.md#audio-window) and computes the original's MFCCs
(docs/original.md#mfccs):
librosa at 22050 Hz, 10 coefficients, n_fft 2048, hop 512, centred STFT with *reflect* padding (librosa
0.8.1's default; newer librosa pads with zeros), 128 Slaney mels, power_to_db(top_db=80), DCT-II ortho.
One clip gives (156, 10) float32, time-major (the transpose of librosa's (10, 156)), raw (no normalisation).
Loading, cropping and the MFCC itself are `avtca_jax.preprocessing.audio`'s (the same functions the
audio-video preprocessing uses); this module adds the folder listing, labels, parallelism and the cache.

The features of the whole folder are computed in parallel worker processes once and cached in an .npz,
so later runs read them back instead of decoding the audio again.

    data = load_ravdess_audio('/path/to/ravdess/audio_speech_22k')
    # {'mfcc': (N, 156, 10) float32, 'label': (N,) int32 0..7, 'actor': (N,) int32 1..24, 'stem': (N,) str}
    parts = split_by_protocol(data, 'fold1')  # {'train': {...}, 'validation': {...}, 'test': {...}}
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from avtca_jax.preprocessing import audio as shared_audio
from avtca_jax.preprocessing import names
from avtca_jax import datasets

SAMPLE_RATE = shared_audio.SAMPLE_RATE
CLIP_SECONDS = shared_audio.CLIP_SECONDS
CLIP_SAMPLES = shared_audio.num_samples()  # 79,380
# Bump when the features change, so stale caches are never read.
FEATURE_VERSION = "mfcc10-n2048-h512-reflect-v1"

PathLike = Union[str, os.PathLike]


def parse_name(path: PathLike) -> Tuple[int, int]:
  """(label 0..7, actor 1..24) from a RAVDESS name such as '03-01-05-02-01-01-17.flac'.

  Parsing is the preprocessing package's (`preprocessing.names.parse_name`); here a suffix after the 7th field
  (e.g. '_croppad', the original's re-saved copies) is refused too, so such copies are never counted twice.
  """
  name = names.parse_name(path)
  if name.suffix:
    raise ValueError(f"{path}: unexpected suffix {name.suffix!r} after the 7 RAVDESS fields (a derived copy?)")
  return name.label, name.actor


def crop_or_pad(waveform: np.ndarray) -> np.ndarray:
  """Zero-pad at the end, or centre-crop removing floor(excess / 2) samples at the start
  (docs/original.md#audio-window)."""
  return shared_audio.crop_or_pad(waveform, CLIP_SECONDS, SAMPLE_RATE)


def mfcc_features(waveform: np.ndarray) -> np.ndarray:
  """The original's MFCCs of a 3.6 s waveform: (156, 10) float32, time-major, unnormalised.

  The shared preprocessing function; tests check it equals `librosa.feature.mfcc(y=..., sr=22050, n_mfcc=10,
  n_fft=2048, hop_length=512, center=True, pad_mode='reflect')` transposed.
  """
  return shared_audio.mfcc(np.asarray(waveform, np.float32), SAMPLE_RATE, shared_audio.N_MFCC)


def load_waveform(path: PathLike) -> np.ndarray:
  """Mono float32 at 22050 Hz (librosa; no resampling for the 22050 Hz files), cropped/padded to 79,380."""
  return crop_or_pad(shared_audio.load_audio(path, SAMPLE_RATE))


def clip_features(path: PathLike) -> np.ndarray:
  """(156, 10) MFCCs of one audio file."""
  return mfcc_features(load_waveform(path))


def list_audio_files(root: PathLike) -> List[Path]:
  """Every RAVDESS audio file under `root` (recursively), sorted by name; parses each name (ValueError)."""
  root = Path(root)
  if not root.is_dir():
    raise FileNotFoundError(f"audio folder {root} does not exist")
  files = sorted((p for p in root.rglob("*") if p.suffix.lower() in names.AUDIO_EXTENSIONS and p.is_file()),
                 key=lambda p: p.name)
  if not files:
    raise FileNotFoundError(f"no .wav or .flac files under {root}")
  for p in files:
    parse_name(p)
  stems = [p.name.split(".")[0] for p in files]
  if len(set(stems)) != len(stems):
    raise ValueError(f"duplicate clip names under {root}")
  return files


def default_cache_path(root: PathLike, files: Sequence[Path]) -> Path:
  """~/.cache/avtca_jax/ravdess_mfcc_<hash>.npz, the hash covering the folder, file list and feature version."""
  key = hashlib.sha1("\n".join([str(Path(root).resolve()), FEATURE_VERSION] +
                               [f"{p.name}:{p.stat().st_size}" for p in files]).encode()).hexdigest()[:12]
  base = Path(os.environ.get("AVTCA_JAX_CACHE", Path.home() / ".cache" / "avtca_jax"))
  return base / f"ravdess_mfcc_{key}.npz"


def _compute(files: Sequence[Path], num_workers: int) -> np.ndarray:
  if num_workers <= 1:
    return np.stack([clip_features(p) for p in files])
  with ProcessPoolExecutor(max_workers=num_workers) as pool:
    return np.stack(list(pool.map(clip_features, files, chunksize=16)))


def load_ravdess_audio(root: PathLike, cache_path: Optional[PathLike] = None, num_workers: int = 2,
                       use_cache: bool = True) -> Dict[str, np.ndarray]:
  """All clips under `root` as {'mfcc' (N,156,10) f32, 'label' (N,) i32, 'actor' (N,) i32, 'stem' (N,) str}.

  Sorted by file name. Features are read from `cache_path` (default: `default_cache_path`) when it holds
  exactly these clips and this feature version; otherwise computed with `num_workers` processes and saved.
  """
  files = list_audio_files(root)
  stems = np.array([p.name.split(".")[0] for p in files])
  labels, actors = zip(*(parse_name(p) for p in files))
  cache_path = Path(cache_path) if cache_path is not None else default_cache_path(root, files)
  mfcc = None
  if use_cache and cache_path.is_file():
    with np.load(cache_path, allow_pickle=False) as cached:
      if str(cached["version"]) == FEATURE_VERSION and np.array_equal(cached["stem"], stems):
        mfcc = cached["mfcc"]
  if mfcc is None:
    mfcc = _compute(files, num_workers)
    if use_cache:
      cache_path.parent.mkdir(parents=True, exist_ok=True)
      tmp = cache_path.with_name(cache_path.name + f".tmp{os.getpid()}.npz")
      np.savez(tmp, mfcc=mfcc, stem=stems, version=np.array(FEATURE_VERSION))
      os.replace(tmp, cache_path)  # atomic: a concurrent reader never sees half a file
  return {"mfcc": mfcc.astype(np.float32), "label": np.asarray(labels, np.int32),
          "actor": np.asarray(actors, np.int32), "stem": stems}


def split_by_protocol(data: Dict[str, np.ndarray], protocol: str,
                      dataset: datasets.Dataset = datasets.RAVDESS) -> Dict[str, Dict[str, np.ndarray]]:
  """{'train', 'validation', 'test'} subsets of `data` (every array indexed alike) for a protocol of
  `dataset` (`Dataset.assign_split`). 'paper_random' and the inner (nested) protocols have no validation set
  (its entry is empty); clips of actors outside the protocol (an inner protocol's outer validation and test
  actors) are in none."""
  names = dataset.assign_split(protocol, data["actor"])
  return {name: {k: v[names == name] for k, v in data.items()} for name in ("train", "validation", "test")}


# 'train': one mean/std per coefficient from the train split's clips and frames (the fast recipe).
# 'clip': per-clip cepstral mean and variance normalisation over the clip's 156 frames.
# 'none': raw MFCCs, as the original.
# All three are inductive: no statistic reads a clip outside the training split (or the clip itself).
# There is no per-speaker normalisation: over the test actors' audio it would let their clips into the
# statistics (transductive).
NORMALIZATIONS = ("train", "clip", "none")


def normalize_clips(mfcc: np.ndarray, mode: str, stats: Optional[Dict] = None) -> np.ndarray:
  """(..., 156, 10) MFCCs normalised by a mode that needs no other clips: 'train' with the given
  statistics ({'mean', 'std'} per coefficient), 'clip' (each clip over its own frames), 'none'.
  Training (`normalize_mfcc`) and `predict` both go through here; a jax array (inside `jit` or an
  export) is normalised with the same operations in its own dtype."""
  x = mfcc if hasattr(mfcc, "aval") else np.asarray(mfcc, np.float64)
  if mode == "train":
    x = (x - np.asarray(stats["mean"])) / np.asarray(stats["std"])
  elif mode == "clip":
    x = (x - x.mean(axis=-2, keepdims=True)) / (x.std(axis=-2, keepdims=True) + 1e-6)
  elif mode != "none":
    raise ValueError(f"normalize={mode!r}; expected one of {NORMALIZATIONS}")
  return x.astype(np.float32)


def normalize_mfcc(parts, mode: str):
  """Normalised copies of each split's MFCCs (see NORMALIZATIONS) and the statistics used ('train' only:
  mean and std per coefficient over the training split's clips and frames, nothing else)."""
  if mode not in NORMALIZATIONS:
    raise ValueError(f"normalize={mode!r}; expected one of {NORMALIZATIONS}")
  stats = {}
  if mode == "train":
    train_mfcc = parts["train"]["mfcc"]
    stats = {"mean": train_mfcc.mean(axis=(0, 1)).tolist(), "std": (train_mfcc.std(axis=(0, 1)) + 1e-6).tolist()}
  return {name: normalize_clips(p["mfcc"], mode, stats) for name, p in parts.items()}, stats
