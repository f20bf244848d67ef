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


def _synthetic_data(clips_per_actor=2, warps=False):
  """24 actors; each class shifts the MFCCs' level, so a few steps learn something."""
  from avtca_jax.audio_data import VTLP_ALPHAS
  rng = np.random.default_rng(1)
  actors = np.repeat(np.arange(1, 25), clips_per_actor)
  labels = (np.arange(actors.size) % 8).astype(np.int32)
  mfcc = rng.normal(0.0, 1.0, (actors.size, 156, 10)).astype(np.float32) + labels[:, None, None]
  data = {"mfcc": mfcc, "label": labels, "actor": actors.astype(np.int32),
          "stem": np.array([f"c{i}" for i in range(actors.size)])}
  if warps:  # copy k = the clip + k / 100, so a copy's index can be read back from its values
    data["mfcc_vtlp"] = mfcc[:, None] + (np.arange(len(VTLP_ALPHAS)) / 100.0)[None, :, None, None]
  return data


def test_average_last_and_train_on_validation():
  data = _synthetic_data()
  config = audio_recipe.make_config("audio", epochs=3, milestones=(2,), average_last=2)
  result = audio_recipe.train_fold(data, "fold1", config)
  assert result["best_epoch"] is None and result["averaged_epochs"] == [2, 3]
  assert 0.0 <= result["validation"]["accuracy"] <= 100.0 and result["test"]["accuracy"] >= 0.0
  assert 1 <= result["best_epoch_selection"]["best_epoch"] <= 3  # the original's selection is still recorded
  assert "mean 2-3" in audio_recipe.summary_table([result, result])

  joint = audio_recipe.train_fold(data, "fold1", dict(config, average_last=0, train_on_validation=True))
  assert joint["num_clips"] == {"train": 40, "test": 8}  # 16 + 4 actors train; test actors untouched
  assert joint["validation"] is None and joint["averaged_epochs"] == [3]  # the last epoch, nothing selected
  assert "best_epoch_selection" not in joint
  assert "| - |" in audio_recipe.summary_table([joint, joint])


def test_vtlp_training_copies_and_warp_averaged_evaluation():
  from avtca_jax.audio_data import VTLP_ALPHAS, split_by_protocol
  data = _synthetic_data(warps=True)
  parts = split_by_protocol(data, "fold1")
  config = audio_recipe.make_config("audio", vtlp=0.05, eval_vtlp=0.025)
  arrays, stats = audio_recipe._prepare(parts, config)
  near = [i for i, a in enumerate(VTLP_ALPHAS) if abs(a - 1.0) <= 0.05 + 1e-9]
  assert [VTLP_ALPHAS[i] for i in near] == [0.95, 0.975, 1.0, 1.025, 1.05]
  x_train = np.asarray(arrays["train"][0])
  assert x_train.shape == (32, 5, 156, 10) and arrays["validation"][0].shape == (8, 3, 156, 10)
  # Normalised with the unwarped train clips' statistics, as the evaluation clips are.
  expected = (parts["train"]["mfcc_vtlp"][:, near] - np.array(stats["mean"])) / np.array(stats["std"])
  np.testing.assert_allclose(x_train, expected, rtol=1e-5, atol=1e-5)

  # Evaluation on K warped copies = the mean of the K copies' softmax.
  init, _, _, predict = audio_recipe._functions(config, 32)
  variables = init(jax.random.PRNGKey(0))
  x_val = arrays["validation"][0]
  _, probs = predict(variables["params"], variables["batch_stats"], x_val)
  per_copy = [predict(variables["params"], variables["batch_stats"], x_val[:, k])[1] for k in range(3)]
  np.testing.assert_allclose(probs, sum(per_copy) / 3, rtol=1e-5, atol=1e-6)

  del data["mfcc_vtlp"]
  with pytest.raises(ValueError, match="load_vtlp_mfcc"):
    audio_recipe._prepare(split_by_protocol(data, "fold1"), config)
  with pytest.raises(ValueError, match="speaker"):
    audio_recipe._prepare(parts, dict(config, normalize="speaker"))


def test_vtlp_training_step_reads_one_copy_per_clip():
  """With vtlp on, each step trains on one random warped copy of each clip; all copies get used."""
  x = jnp.broadcast_to(jnp.arange(5, dtype=jnp.float32)[None, :, None, None], (8, 5, 156, 10))
  seen = set()
  for i in range(20):
    picked = np.asarray(audio_recipe.pick_copies(jax.random.PRNGKey(i), x))
    assert picked.shape == (8, 156, 10)
    assert np.all(picked == picked[:, :1, :1])  # every clip is one whole copy
    seen |= set(picked[:, 0, 0].tolist())
  assert seen == {0.0, 1.0, 2.0, 3.0, 4.0}
  data = _synthetic_data(warps=True)
  result = audio_recipe.train_fold(data, "fold1", audio_recipe.make_config("audio", vtlp=0.2, epochs=1))
  assert result["num_clips"]["train"] == 32 and np.isfinite(result["history"][0]["train_loss"])


def test_cycles_restart_the_multistep_schedule_and_ensemble_the_cycle_ends():
  config = audio_recipe.make_config("audio", epochs=8, cycles=2, milestones=(2, 3))
  lr = audio_recipe._schedule(config, steps_per_epoch=10)
  per_epoch = [float(lr(10 * e + 5)) for e in range(8)]
  np.testing.assert_allclose(per_epoch, [0.06, 0.06, 0.006, 0.0006] * 2, rtol=1e-6)
  with pytest.raises(ValueError, match="divisible"):
    audio_recipe.make_config("audio", epochs=9, cycles=2)
  result = audio_recipe.train_fold(_synthetic_data(), "fold1", dict(config, epochs=4, milestones=(1,)))
  assert result["averaged_epochs"] == [2, 4] and result["best_epoch"] is None
  assert len(result["probabilities"]["test"]) == 8 and len(result["stems"]["test"]) == 8
  np.testing.assert_allclose(np.sum(result["probabilities"]["test"], axis=1), 1.0, atol=1e-4)


def test_ensemble_is_the_mean_softmax_of_the_runs():
  data = _synthetic_data()
  config = audio_recipe.make_config("audio", epochs=2, milestones=(1,), average_last=1)
  runs = [audio_recipe.train_fold(data, "fold1", dict(config, seed=s)) for s in (1, 2)]
  combined = audio_recipe.ensemble(runs)
  mean = (np.array(runs[0]["probabilities"]["test"]) + np.array(runs[1]["probabilities"]["test"])) / 2
  np.testing.assert_allclose(combined["probabilities"]["test"], mean, atol=2e-5)
  expected = 100 * np.mean(mean.argmax(-1) == np.array(runs[0]["labels"]["test"]))
  assert combined["test"]["accuracy"] == pytest.approx(expected)
  assert [m["seed"] for m in combined["members"]] == [1, 2] and combined["ensemble_of"] == 2
  assert "ensemble of 2" in audio_recipe.summary_table([combined, combined])
  with pytest.raises(ValueError, match="same fold"):
    audio_recipe.ensemble([runs[0], audio_recipe.train_fold(data, "fold2", config)])


def test_cli_with_several_seeds_writes_each_seed_and_the_ensemble(tmp_path):
  import soundfile
  from avtca_jax.audio_data import SAMPLE_RATE
  rng = np.random.default_rng(0)
  for actor in range(1, 25):
    for emotion in (1, 5):
      folder = tmp_path / "audio" / f"Actor_{actor:02d}"
      folder.mkdir(parents=True, exist_ok=True)
      tone = np.sin(2 * np.pi * (200 * emotion) * np.arange(SAMPLE_RATE) / SAMPLE_RATE) * 0.3
      soundfile.write(folder / f"03-01-{emotion:02d}-01-01-01-{actor:02d}.wav",
                      (tone + rng.normal(0, 0.01, tone.shape)).astype(np.float32), SAMPLE_RATE)
  out = tmp_path / "out"
  audio_recipe.main(["--folds=1", f"--out={out}", f"--audio_dir={tmp_path / 'audio'}",
                     f"--cache={tmp_path / 'mfcc.npz'}", "--seeds=3,4", "--set", "epochs=2", "--set", "milestones=[1]",
                     "--set", "average_last=1"])
  import json
  seeds = [json.loads((out / f"fold1_seed{s}.json").read_text()) for s in (3, 4)]
  assert [r["config"]["seed"] for r in seeds] == [3, 4]
  combined = json.loads((out / "fold1.json").read_text())
  assert combined["ensemble_of"] == 2 and combined["num_clips"] == {"train": 32, "validation": 8, "test": 8}
  text = (out / "results.md").read_text()
  assert "ensemble of 2" in text and "Seed 3 alone" in text and "Seed 4 alone" in text
