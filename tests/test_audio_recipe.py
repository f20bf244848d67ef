"""Audio-only recipe: metrics, the original's dampened SGD in optax, MFCC augmentation, and one real fold."""

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from avtca_jax import audio_recipe

RAVDESS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ravdess"
AUDIO_DIR = RAVDESS / "audio_speech_22k"


def test_classification_metrics():
  labels = [0, 0, 1, 1, 1, 1, 2, 2]
  predictions = [0, 1, 1, 1, 1, 0, 2, 2]
  m = audio_recipe.classification_metrics(labels, predictions, num_classes=3)
  assert m["accuracy"] == pytest.approx(75.0)
  assert m["uar"] == pytest.approx(100 * (0.5 + 0.75 + 1.0) / 3)
  f1 = [2 * 0.5 * 0.5 / 1.0, 2 * 0.75 * 0.75 / 1.5, 1.0]
  assert m["macro_f1"] == pytest.approx(100 * np.mean(f1))
  assert m["confusion"] == [[1, 1, 0], [1, 3, 0], [0, 0, 2]]


def test_dampened_sgd_is_pytorchs_recurrence():
  """SGD(momentum=0.9, dampening=0.9, weight_decay=1e-3): b = 0.9 b + 0.1 (g + wd p); p -= lr b (spec 5).

  optax's chain starts from b = 0, so step 1 uses 0.1 g' where PyTorch uses g'; from then on it is identical.
  """
  config = audio_recipe.make_config("original", epochs=100)
  optimizer = audio_recipe.make_optimizer(config, steps_per_epoch=10)
  params = {"w": jnp.array([1.0, -2.0, 0.5])}
  state = optimizer.init(params)
  p, buffer = np.array([1.0, -2.0, 0.5]), np.zeros(3)
  rng = np.random.default_rng(0)
  for step in range(450):  # crosses the first milestone (epoch 40 = step 400): lr 0.06 -> 0.006
    g = rng.normal(size=3)
    updates, state = optimizer.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
    params = optax.apply_updates(params, updates)
    buffer = 0.9 * buffer + 0.1 * (g + 1e-3 * p)
    lr = 0.06 if step < 400 else 0.006
    p = p - lr * buffer
  np.testing.assert_allclose(np.asarray(params["w"]), p, rtol=1e-4, atol=1e-5)


def test_augment_off_is_identity_and_shift_is_a_roll():
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 156, 10))
  off = audio_recipe.make_config("original")
  np.testing.assert_array_equal(audio_recipe.augment(jax.random.PRNGKey(1), x, off), x)

  shift_only = dict(off, time_shift=20)
  y = np.asarray(audio_recipe.augment(jax.random.PRNGKey(1), x, shift_only))
  rolled = [[s for s in range(-20, 21) if np.allclose(np.roll(np.asarray(x[i]), s, axis=0), y[i])]
            for i in range(4)]
  assert all(len(r) == 1 for r in rolled), rolled

  masked = dict(off, time_masks=2, time_mask_width=16, coef_masks=1, coef_mask_width=2)
  z = np.asarray(audio_recipe.augment(jax.random.PRNGKey(2), x, masked))
  zeroed = z == 0
  assert zeroed.any() and np.array_equal(z[~zeroed], np.asarray(x)[~zeroed])
  assert zeroed.mean() < 0.5


def test_make_config_rejects_unknown_keys():
  with pytest.raises(ValueError, match="learnig_rate"):
    audio_recipe.make_config("audio", learnig_rate=1e-3)


@pytest.mark.slow
@pytest.mark.skipif(not AUDIO_DIR.is_dir(), reason=f"RAVDESS speech audio not found at {AUDIO_DIR} "
                    "(../shared/data/ravdess/audio_speech_22k next to the repository)")
def test_one_real_fold_trains_far_above_chance():
  """A short run of the recipe (5 epochs, x0.1 after 3) on fold 1's 960 train clips; chance is 12.5%.

  The first run computes the 1440 clips' MFCCs (about 1.5 CPU-minutes, 2 processes) into the cache.
  """
  from avtca_jax.audio_data import load_ravdess_audio
  data = load_ravdess_audio(AUDIO_DIR)
  assert data["mfcc"].shape == (1440, 156, 10)
  config = audio_recipe.make_config("audio", epochs=5, milestones=(3,))
  start = time.perf_counter()
  result = audio_recipe.train_fold(data, "fold1", config)
  print(f"fold1, 5 epochs: {time.perf_counter() - start:.1f} s, test {result['test']}")
  assert result["num_clips"] == {"train": 960, "validation": 240, "test": 240}
  assert 1 <= result["best_epoch"] <= 5
  assert result["test"]["accuracy"] > 35.0, result["test"]
  assert result["test"]["uar"] > 30.0, result["test"]


def _parts():
  rng = np.random.default_rng(0)
  make = lambda n, actors: {"mfcc": (rng.normal(5.0, 3.0, (n, 156, 10)) * np.arange(1, 11)).astype(np.float32),
                            "label": np.zeros(n, np.int32), "actor": np.repeat(actors, n // len(actors))}
  return {"train": make(8, [1, 2]), "validation": make(4, [3]), "test": make(4, [4, 5])}


def test_normalize_train_uses_train_statistics_only():
  parts = _parts()
  out, stats = audio_recipe.normalize_mfcc(parts, "train")
  np.testing.assert_allclose(out["train"].mean(axis=(0, 1)), 0.0, atol=1e-5)
  np.testing.assert_allclose(out["train"].std(axis=(0, 1)), 1.0, atol=1e-4)
  mean, std = np.array(stats["mean"]), np.array(stats["std"])
  np.testing.assert_allclose(out["test"], (parts["test"]["mfcc"] - mean) / std, rtol=1e-5, atol=1e-5)
  assert not np.allclose(out["test"].mean(axis=(0, 1)), 0.0, atol=1e-3)  # test data not re-centred


def test_normalize_clip_and_speaker_and_none():
  parts = _parts()
  clip, _ = audio_recipe.normalize_mfcc(parts, "clip")
  np.testing.assert_allclose(clip["test"].mean(axis=1), 0.0, atol=1e-5)
  np.testing.assert_allclose(clip["test"].std(axis=1), 1.0, atol=1e-4)
  speaker, _ = audio_recipe.normalize_mfcc(parts, "speaker")
  for actor in (4, 5):
    rows = speaker["test"][parts["test"]["actor"] == actor]
    np.testing.assert_allclose(rows.mean(axis=(0, 1)), 0.0, atol=1e-5)
  none, stats = audio_recipe.normalize_mfcc(parts, "none")
  np.testing.assert_array_equal(none["train"], parts["train"]["mfcc"])
  assert stats == {}
  with pytest.raises(ValueError, match="normalize='cmvn'"):
    audio_recipe.normalize_mfcc(parts, "cmvn")
  with pytest.raises(ValueError, match="normalize"):
    audio_recipe.make_config("audio", normalize="cmvn")


def test_time_crop_takes_one_window_per_clip():
  x = jnp.broadcast_to(jnp.arange(156, dtype=jnp.float32)[None, :, None], (6, 156, 10))
  config = dict(audio_recipe.make_config("original"), time_crop=96)
  y = np.asarray(audio_recipe.augment(jax.random.PRNGKey(3), x, config))
  assert y.shape == (6, 96, 10)
  starts = y[:, 0, 0]
  np.testing.assert_array_equal(y[:, :, 0], starts[:, None] + np.arange(96)[None, :])
  assert starts.min() >= 0 and starts.max() <= 60 and len(set(starts.tolist())) > 1


def test_audio_classifier_length_contract():
  from avtca_jax.models.avtca import AudioClassifier
  strict, loose = AudioClassifier(), AudioClassifier(variable_length=True)
  variables = strict.init(jax.random.PRNGKey(0), jnp.zeros((1, 156, 10)))
  with pytest.raises(ValueError, match=r"\(batch, 156, 10\)"):
    strict.apply(variables, jnp.zeros((2, 96, 10)))
  assert loose.apply(variables, jnp.zeros((2, 96, 10))).shape == (2, 8)  # same parameters
  assert loose.apply(variables, jnp.zeros((2, 13, 10))).shape == (2, 8)
  with pytest.raises(ValueError, match="time >= 13"):
    loose.apply(variables, jnp.zeros((2, 12, 10)))
