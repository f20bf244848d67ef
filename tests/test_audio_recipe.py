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
  """A short run of the recipe (4 epochs) on fold 1's 960 train clips; chance is 12.5% on 8 classes.

  The first run computes the 1440 clips' MFCCs (about 1.5 CPU-minutes, 2 processes) into the cache.
  """
  from avtca_jax.audio_data import load_ravdess_audio
  data = load_ravdess_audio(AUDIO_DIR)
  assert data["mfcc"].shape == (1440, 156, 10)
  config = audio_recipe.make_config("audio", epochs=4, warmup_epochs=1, batch_size=32, time_masks=0,
                                    coef_masks=0, mixup_alpha=0.0)
  start = time.perf_counter()
  result = audio_recipe.train_fold(data, "fold1", config)
  print(f"fold1, 4 epochs: {time.perf_counter() - start:.1f} s, test {result['test']}")
  assert result["num_clips"] == {"train": 960, "validation": 240, "test": 240}
  assert 1 <= result["best_epoch"] <= 4
  assert result["test"]["accuracy"] > 35.0, result["test"]
  assert result["test"]["uar"] > 30.0, result["test"]
