"""RAVDESS audio loading: name parsing, 3.6 s crop/pad, the original's MFCCs, the feature cache, splits."""

from pathlib import Path

import numpy as np
import pytest

from avtca_jax import audio_data
from avtca_jax.audio_data import CLIP_SAMPLES, SAMPLE_RATE, crop_or_pad, parse_name

AUDIO_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ravdess" / "audio_speech_22k"


def test_parse_name():
  assert parse_name("03-01-05-02-01-01-17.flac") == (4, 17)
  assert parse_name("/x/Actor_01/03-01-01-01-01-01-01.wav") == (0, 1)
  assert parse_name("01-01-08-02-02-02-24.mp4") == (7, 24)


@pytest.mark.parametrize("name", ["03-01-05-02-01-01.wav", "03-01-05-02-01-01-17-01.wav", "03-01-xx-02-01-01-17.wav",
                                  "03-01-5-02-01-01-17.wav", "03-01-09-02-01-01-17.wav", "03-01-00-02-01-01-17.wav",
                                  "03-01-05-02-01-01-25.wav", "03-01-05-02-01-01-17_croppad.wav", "notes.wav"])
def test_parse_name_rejects_bad_names_and_names_the_file(name):
  with pytest.raises(ValueError, match=name.split(".")[0]):
    parse_name(name)


def test_listing_names_the_bad_file(tmp_path):
  (tmp_path / "Actor_01").mkdir()
  (tmp_path / "Actor_01" / "03-01-01-01-01-01-01.wav").write_bytes(b"")
  (tmp_path / "Actor_01" / "03-01-01-01-01-01.wav").write_bytes(b"")
  with pytest.raises(ValueError, match="03-01-01-01-01-01.wav"):
    audio_data.list_audio_files(tmp_path)


def test_crop_or_pad():
  short = np.arange(1, 1001, dtype=np.float32)
  padded = crop_or_pad(short)
  assert padded.shape == (CLIP_SAMPLES,)
  np.testing.assert_array_equal(padded[:1000], short)  # zeros at the end only
  assert not padded[1000:].any()

  excess = 7  # odd: floor(7/2) = 3 removed at the start, 4 at the end
  long = np.arange(CLIP_SAMPLES + excess, dtype=np.float32)
  cropped = crop_or_pad(long)
  assert cropped.shape == (CLIP_SAMPLES,)
  assert cropped[0] == 3 and cropped[-1] == CLIP_SAMPLES + 2

  exact = np.ones(CLIP_SAMPLES, np.float32)
  np.testing.assert_array_equal(crop_or_pad(exact), exact)


def _tone(seconds, freq=440.0, seed=0):
  t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
  noise = np.random.default_rng(seed).normal(0, 0.01, t.shape)
  return (0.3 * np.sin(2 * np.pi * freq * t) * np.hanning(t.size) + noise).astype(np.float32)


def test_mfcc_equals_librosa_with_the_originals_arguments():
  import librosa
  y = crop_or_pad(_tone(2.0))
  features = audio_data.mfcc_features(y)
  assert features.shape == (156, 10) and features.dtype == np.float32
  direct = librosa.feature.mfcc(y=y, sr=22050, n_mfcc=10, n_fft=2048, hop_length=512, center=True,
                                pad_mode="reflect")  # other defaults: 128 Slaney mels, top_db 80, DCT ortho
  np.testing.assert_allclose(features, direct.T, rtol=1e-5, atol=1e-3)
  # librosa >= 0.9's default (zero padding) gives other edge frames: the reflect padding is pinned.
  zero_padded = librosa.feature.mfcc(y=y, sr=22050, n_mfcc=10)
  assert np.abs(features - zero_padded.T).max() > 1.0
  # Silence gives the spec's c0 (docs/original.md#mfccs).
  np.testing.assert_allclose(audio_data.mfcc_features(np.zeros(CLIP_SAMPLES, np.float32))[:, 0], -1131.37, atol=0.05)


def _write_clips(folder, names):
  import soundfile
  for i, name in enumerate(names):
    actor = folder / f"Actor_{name[-2:]}"
    actor.mkdir(parents=True, exist_ok=True)
    soundfile.write(actor / f"{name}.wav", _tone(1.5 + i, 300 + 100 * i, seed=i), SAMPLE_RATE)


def test_load_and_cache_reuse(tmp_path, monkeypatch):
  names = ["03-01-03-01-01-01-02", "03-01-08-02-02-01-01"]
  _write_clips(tmp_path / "audio", names)
  cache = tmp_path / "cache.npz"
  data = audio_data.load_ravdess_audio(tmp_path / "audio", cache_path=cache, num_workers=1)
  assert cache.is_file()
  assert data["mfcc"].shape == (2, 156, 10) and data["mfcc"].dtype == np.float32
  assert list(data["stem"]) == sorted(names)  # sorted by name
  np.testing.assert_array_equal(data["label"], [2, 7])
  np.testing.assert_array_equal(data["actor"], [2, 1])
  np.testing.assert_allclose(data["mfcc"][0], audio_data.clip_features(tmp_path / "audio" / "Actor_02" /
                                                                       f"{names[0]}.wav"))

  def no_compute(*args, **kwargs):
    raise AssertionError("features recomputed although the cache holds them")

  monkeypatch.setattr(audio_data, "_compute", no_compute)
  again = audio_data.load_ravdess_audio(tmp_path / "audio", cache_path=cache)
  np.testing.assert_array_equal(again["mfcc"], data["mfcc"])

  # Another clip in the folder invalidates the cache.
  _write_clips(tmp_path / "audio", ["03-01-01-01-01-01-03"])
  with pytest.raises(AssertionError, match="recomputed"):
    audio_data.load_ravdess_audio(tmp_path / "audio", cache_path=cache)


def test_split_by_protocol():
  actors = np.repeat(np.arange(1, 25), 3)
  data = {"mfcc": np.zeros((actors.size, 156, 10), np.float32), "label": np.zeros(actors.size, np.int32),
          "actor": actors, "stem": np.array([f"clip{i}" for i in range(actors.size)])}
  parts = audio_data.split_by_protocol(data, "fold2")
  assert sorted(set(parts["test"]["actor"])) == [5, 6, 7, 8]
  assert sorted(set(parts["validation"]["actor"])) == [9, 10, 11, 12]
  assert len(parts["train"]["stem"]) == 16 * 3
  assert all(parts[k]["mfcc"].shape[0] == parts[k]["label"].shape[0] for k in parts)


@pytest.mark.skipif(not AUDIO_DIR.is_dir(), reason=f"RAVDESS audio not found at {AUDIO_DIR}")
def test_real_folder_listing():
  files = audio_data.list_audio_files(AUDIO_DIR)
  assert len(files) == 1440
  labels, actors = zip(*(parse_name(p) for p in files))
  np.testing.assert_array_equal(np.bincount(labels), [96] + [192] * 7)
  np.testing.assert_array_equal(np.bincount(actors)[1:], [60] * 24)


def _parts():
  rng = np.random.default_rng(0)
  make = lambda n, actors: {"mfcc": (rng.normal(5.0, 3.0, (n, 156, 10)) * np.arange(1, 11)).astype(np.float32),
                            "label": np.zeros(n, np.int32), "actor": np.repeat(actors, n // len(actors))}
  return {"train": make(8, [1, 2]), "validation": make(4, [3]), "test": make(4, [4, 5])}


def test_normalize_train_uses_train_statistics_only():
  parts = _parts()
  out, stats = audio_data.normalize_mfcc(parts, "train")
  np.testing.assert_allclose(out["train"].mean(axis=(0, 1)), 0.0, atol=1e-5)
  np.testing.assert_allclose(out["train"].std(axis=(0, 1)), 1.0, atol=1e-4)
  mean, std = np.array(stats["mean"]), np.array(stats["std"])
  np.testing.assert_allclose(out["test"], (parts["test"]["mfcc"] - mean) / std, rtol=1e-5, atol=1e-5)
  assert not np.allclose(out["test"].mean(axis=(0, 1)), 0.0, atol=1e-3)  # test data not re-centred
  # Changing the validation and test clips changes no statistic.
  moved = {k: (dict(v, mfcc=v["mfcc"] + 100.0) if k != "train" else v) for k, v in parts.items()}
  assert audio_data.normalize_mfcc(moved, "train")[1] == stats


def test_normalize_clip_and_none_and_no_transductive_mode():
  parts = _parts()
  clip, _ = audio_data.normalize_mfcc(parts, "clip")
  np.testing.assert_allclose(clip["test"].mean(axis=1), 0.0, atol=1e-5)
  np.testing.assert_allclose(clip["test"].std(axis=1), 1.0, atol=1e-4)
  none, stats = audio_data.normalize_mfcc(parts, "none")
  np.testing.assert_array_equal(none["train"], parts["train"]["mfcc"])
  assert stats == {}
  for mode in ("cmvn", "speaker"):  # 'speaker' read the test actors' audio: removed
    with pytest.raises(ValueError, match=f"normalize='{mode}'"):
      audio_data.normalize_mfcc(parts, mode)
