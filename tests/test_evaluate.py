"""Evaluation (metrics files, stream removal, agreement with the trainer), cross-validation and prediction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "ravdess"


def _config(variant="smoke", **overrides):
  from configs import ravdess
  config = ravdess.get_config(variant)
  config.update_from_flattened_dict(overrides)
  return config


def write_untrained_workdir(workdir: Path, config):
  """A workdir holding the freshly initialised state as its step-0 checkpoint (no training needed)."""
  from avtca_jax import checkpointing, steps as steps_lib
  workdir.mkdir(parents=True, exist_ok=True)
  state = steps_lib.build(config, steps_lib.create_mesh(), steps_per_epoch=10).initial_state()
  checkpoints = checkpointing.Checkpoints(str(workdir), async_save=False)
  checkpoints.save(state, {"step": 0, "epoch": 0, "position": 0, "model": checkpointing.model_descriptor(config)})
  checkpoints.close()
  checkpointing.write_model_json(str(workdir), config)
  (workdir / "config.json").write_text(config.to_json_best_effort())
  return workdir


@pytest.fixture(scope="module")
def avtca_workdir(tmp_path_factory):
  config = _config(**{"data.source": "synthetic", "data.num_examples": 16, "image_size": 32})
  return write_untrained_workdir(tmp_path_factory.mktemp("avtca"), config)


@pytest.fixture(scope="module")
def trained_audio_workdir(tmp_path_factory):
  """An audio model trained for 3 short epochs by the real command (evaluating and testing at the end)."""
  workdir = tmp_path_factory.mktemp("audio")
  command = [sys.executable, "-m", "avtca_jax.train", "--config=configs/ravdess.py:smoke", f"--workdir={workdir}",
             "--config.model=audio", "--config.data.source=synthetic", "--config.num_train_steps=-1",
             "--config.num_epochs=3", "--config.batch_size=8", "--config.data.num_examples=64"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
  result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def test_evaluate_writes_metrics_report_and_confusion_png_with_streams_removed(avtca_workdir, tmp_path):
  from avtca_jax import evaluate
  out = tmp_path / "eval"
  results = evaluate.evaluate(str(avtca_workdir), split="test",
                              removals=["audio_zeros", "video_zeros", "video_noise"], output_dir=str(out))
  assert list(results) == ["both", "audio_zeros", "video_zeros", "video_noise"]
  for mode, r in results.items():
    assert r["count"] == 8 and 0 <= r["accuracy"] <= 1 and 0 <= r["uar"] <= 1 and 0 <= r["macro_f1"] <= 1
    assert np.asarray(r["confusion_matrix"]).sum() == 8
    assert (out / f"test_{mode}.json").exists() and (out / f"test_{mode}_report.txt").exists()
    assert (out / f"test_{mode}_confusion.png").read_bytes()[:4] == b"\x89PNG"
  # Removing a stream changes what the model sees (slightly for the video stream of an untrained model).
  losses = {mode: r["loss"] for mode, r in results.items()}
  assert len(set(losses.values())) == 4, losses
  summary = json.loads((out / "test_summary.json").read_text())
  assert summary["both"]["accuracy"] == results["both"]["accuracy"]


def test_evaluate_agrees_with_the_trainers_test_metrics(trained_audio_workdir):
  from avtca_jax import evaluate
  trainer = json.loads((trained_audio_workdir / "test_metrics.json").read_text())
  results = evaluate.evaluate(str(trained_audio_workdir), split="test", removals=[])
  assert list(results) == ["both"]
  assert results["both"]["step"] == trainer["checkpoint_step"]
  for key in ("accuracy", "uar", "macro_f1"):
    assert results["both"][key] == pytest.approx(trainer[key], abs=1e-9)
  assert trainer["accuracy"] > 0.5  # synthetic audio classes are easy: far above chance (0.125)


def test_evaluate_command_line(trained_audio_workdir):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
  result = subprocess.run([sys.executable, "-m", "avtca_jax.evaluate", f"--workdir={trained_audio_workdir}",
                           "--split=validation"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "accuracy" in result.stdout and "macro F1" in result.stdout
  assert (trained_audio_workdir / "eval" / "validation_both_confusion.png").exists()


def test_cross_validation_summary_by_hand():
  """Folds x seeds: the mean, the spread over folds of the per-fold seed means and the spread over seeds of
  the per-seed fold means, all sample standard deviations."""
  from avtca_jax import cross_validation
  table = {"fold1": (0.5, 0.7), "fold2": (0.6, 0.6), "fold3": (0.7, 0.9)}  # (seed 0, seed 1)
  runs = {fold: {seed: {"both": {"accuracy": a, "uar": a, "macro_f1": a, "loss": 1.0, "count": 10}}
                 for seed, a in enumerate(values)} for fold, values in table.items()}
  summary = cross_validation.summarize(runs)["both"]["accuracy"]
  assert summary["mean"] == pytest.approx(4.0 / 6)
  assert summary["fold_std"] == pytest.approx(np.std([0.6, 0.6, 0.8], ddof=1))
  assert summary["seed_std"] == pytest.approx(np.std([0.6, 2.2 / 3], ddof=1))
  text = cross_validation.markdown(runs, cross_validation.summarize(runs))
  assert "Test actors: 1-12 (12 of 24" in text
  assert "66.67 ± 11.55 (folds) ± 9.43 (seeds)" in text and text.count("| fold") == 10  # header, 6 runs, 3 means


def test_cross_validation_runs_folds_times_seeds_in_order(tmp_path):
  from avtca_jax import cross_validation
  config = _config(**{"model": "audio", "data.source": "synthetic", "num_train_steps": 6, "batch_size": 8,
                      "data.num_examples": 32})
  report = cross_validation.run(config, str(tmp_path), folds=(1, 6), seeds=(0, 1), removals=[], fold_set="all24")
  assert list(report["runs"]) == ["fold1", "fold6"] and all(set(r) == {0, 1} for r in report["runs"].values())
  stored = json.loads((tmp_path / "fold6" / "seed1" / "config.json").read_text())
  assert stored["data"]["protocol"] == "fold6" and stored["seed"] == 1
  assert report["tested_actors"] == [1, 2, 3, 4, 21, 22, 23, 24] and report["status"] == "finished"
  assert "(folds)" in (tmp_path / "cross_validation.md").read_text()
  assert json.loads((tmp_path / "cross_validation.json").read_text())["summary"]["both"]["accuracy"]["seeds"] == 2


def test_cross_validation_resumes_a_preempted_fold_and_never_starts_the_next(tmp_path, monkeypatch):
  """A SIGTERM during fold 1 (simulated at its 3rd step) stops the cross-validation: fold 1 is not evaluated
  and fold 2 not started. The rerun resumes fold 1 from its saved step and finishes both."""
  from avtca_jax import cross_validation, train as train_lib
  config = _config(**{"model": "audio", "data.source": "synthetic", "num_train_steps": 6, "batch_size": 8,
                      "data.num_examples": 32, "evaluate_test": True})

  class StopAtStep3(train_lib.StopRequest):
    calls = 0

    def should_stop(self, sync):
      StopAtStep3.calls += 1
      return StopAtStep3.calls == 3

  monkeypatch.setattr(train_lib, "StopRequest", StopAtStep3)
  with pytest.raises(cross_validation.Preempted, match="fold1"):
    cross_validation.run(config, str(tmp_path), folds=(1, 2), removals=[])
  partial = json.loads((tmp_path / "cross_validation.json").read_text())
  assert partial["status"] == "preempted" and partial["runs"] == {}
  assert not (tmp_path / "fold1" / "seed0" / "test_metrics.json").exists()
  assert not (tmp_path / "fold2").exists()
  saved = sorted(int(p.name) for p in (tmp_path / "fold1" / "seed0" / "checkpoints").iterdir() if p.name.isdigit())
  assert saved == [3]

  report = cross_validation.run(config, str(tmp_path), folds=(1, 2), removals=[])
  assert report["status"] == "finished" and set(report["runs"]) == {"fold1", "fold2"}
  again = cross_validation.run(config, str(tmp_path), folds=(1, 2), removals=[])  # re-reads, trains nothing
  assert again["seconds"] == report["seconds"] and again["runs"] == report["runs"]
  assert report["runs"]["fold1"][0]["both"]["count"] > 0
  from avtca_jax.metric_writers import read_jsonl
  steps = [r["step"] for r in read_jsonl(str(tmp_path / "fold1" / "seed0" / "metrics.jsonl")) if "train/loss" in r]
  assert steps[0] <= 3 and 4 in steps and steps.count(3) == 1  # resumed after step 3, not restarted


def test_nested_selection_sees_only_the_outer_training_actors(tmp_path, monkeypatch):
  """Each candidate is scored on the inner folds of the outer fold's training actors; the chosen one
  trains the outer fold. Training is replaced by a stub that records what it was given."""
  from avtca_jax import cross_validation, splits
  calls = []

  def fake_train_and_test(config, workdir, removals, allow_config_change):
    calls.append((config.data.protocol, config.learning_rate, config.seed))
    accuracy = {0.03: 0.4, 0.06: 0.5}[config.learning_rate]
    return {"both": {"accuracy": accuracy, "uar": accuracy, "macro_f1": accuracy, "loss": 1.0, "count": 4}}, 1.0

  monkeypatch.setattr(cross_validation, "_train_and_test", fake_train_and_test)
  config = _config(**{"model": "audio", "data.source": "synthetic"})
  candidates = {"slow": {"learning_rate": 0.03}, "fast": {"learning_rate": 0.06}}
  report = cross_validation.run(config, str(tmp_path), folds=(2,), seeds=(0, 1), removals=[], nested=candidates)
  inner = [c for c in calls if c[0].startswith("inner_")]
  assert len(inner) == 2 * splits.INNER_FOLDS and {c[2] for c in inner} == {0}
  outer = splits.fold_actors("fold2")
  for protocol, _, _ in inner:
    parts = splits.fold_actors(protocol)
    used = set(parts["train"]) | set(parts["test"])
    assert used == set(outer["train"]) and not used & (set(outer["test"]) | set(outer["validation"]))
  assert [c for c in calls if not c[0].startswith("inner_")] == [("fold2", 0.06, 0), ("fold2", 0.06, 1)]
  assert report["nested"]["fold2"]["chosen"] == "fast"


def test_predict_audio_clip(trained_audio_workdir, capsys):
  clip = SHARED / "audio_speech_22k" / "Actor_05" / "03-01-05-02-01-01-05.flac"
  if not clip.exists():
    pytest.skip("real RAVDESS audio not available")
  from avtca_jax import predict
  assert predict.main([str(trained_audio_workdir), str(clip)]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  probabilities = [float(line.split()[-1]) for line in lines[1:]]
  assert len(probabilities) == 8 and sum(probabilities) == pytest.approx(1.0, abs=1e-3)


def test_predict_real_video_clip(avtca_workdir, capsys):
  videos = sorted((SHARED / "video_actor05").glob("*.mp4"))
  if not videos:
    pytest.skip("real RAVDESS clips not available")
  pytest.importorskip("facenet_pytorch")
  from avtca_jax import predict
  assert predict.main([str(avtca_workdir), str(videos[0])]) == 0
  out = capsys.readouterr().out.strip().splitlines()
  assert out[0].startswith(videos[0].name)
  probabilities = [float(line.split()[-1]) for line in out[1:]]
  assert len(probabilities) == 8 and sum(probabilities) == pytest.approx(1.0, abs=1e-3)


def test_normalized_audio_run_saves_its_statistics_for_predict(tmp_path):
  """`data.normalize='train'` on the real audio folder: the trainer saves the train actors' statistics and
  predict applies exactly them to a new clip (what the model saw in training)."""
  audio_dir = SHARED / "audio_speech_22k"
  if not audio_dir.is_dir():
    pytest.skip(f"real RAVDESS speech audio not found at {audio_dir}")
  workdir = tmp_path / "audio_norm"
  command = [sys.executable, "-m", "avtca_jax.train", "--config=configs/ravdess.py:audio_only", f"--workdir={workdir}",
             f"--config.data.path={audio_dir}", "--config.data.normalize=train", "--config.num_train_steps=2",
             "--config.evaluate_test=False", "--config.progress_bar=False"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
  result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  stats = json.loads((workdir / "mfcc_normalization.json").read_text())

  from avtca_jax import audio_data, checkpoint_kinds, evaluate
  data = audio_data.load_ravdess_audio(audio_dir)
  train = audio_data.split_by_protocol(data, "fold1")["train"]["mfcc"]
  assert stats["mode"] == "train"
  np.testing.assert_allclose(stats["mean"], train.mean(axis=(0, 1)), rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(stats["std"], train.std(axis=(0, 1)), rtol=1e-5)

  config = evaluate.load_config(str(workdir))
  clip = data["mfcc"][0]
  expected = (clip - train.mean(axis=(0, 1))) / train.std(axis=(0, 1))

  def normalized(config):
    stats = checkpoint_kinds.mfcc_normalization(str(workdir), config)
    return audio_data.normalize_clips(clip, stats["mode"], stats)

  np.testing.assert_allclose(normalized(config), expected, rtol=1e-4, atol=1e-4)
  # The loaded run's forward (what predict and export run) applies them: same logits as the model on
  # the normalised clip.
  import jax
  from avtca_jax import steps as steps_lib
  loaded = checkpoint_kinds.load(str(workdir))
  model = steps_lib.create_model(loaded.config)
  direct = model.apply(loaded.variables, expected[None].astype(np.float32), None, train=False)
  np.testing.assert_allclose(np.asarray(jax.jit(loaded.forward())(clip[None])), np.asarray(direct), rtol=1e-4,
                             atol=1e-4)
  config.data.normalize = "clip"
  np.testing.assert_allclose(normalized(config).mean(axis=0), 0.0, atol=1e-4)
  config.data.normalize = "speaker"
  with pytest.raises(ValueError, match="speaker"):
    normalized(config)
  (workdir / "mfcc_normalization.json").unlink()
  config.data.normalize = "train"
  with pytest.raises(FileNotFoundError, match="mfcc_normalization.json"):
    normalized(config)
