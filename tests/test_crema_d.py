"""CREMA-D: its names, its actor-independent folds, the builder on generated and on the six real clips, the
configs (smoke offline from the command line, num_classes checked), and a fine-tune from a RAVDESS run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from avtca_jax import datasets, splits
from avtca_jax.preprocessing.names import CREMA_D_EMOTIONS, parse_crema_d_name

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "crema_d"
CLIPS = sorted((SHARED / "VideoFlash").glob("*.flv")) if (SHARED / "VideoFlash").is_dir() else []
needs_real_clips = pytest.mark.skipif(len(CLIPS) != 6, reason=f"the six CREMA-D clips are not in {SHARED}")
needs_demographics = pytest.mark.skipif(not (SHARED / "VideoDemographics.csv").is_file(),
                                        reason=f"VideoDemographics.csv is not in {SHARED}")
CREMA_D = datasets.CREMA_D


# ---- names, classes, folds (no data needed but the shared tables) ------------------------------------------


def test_names_and_class_order():
  assert CREMA_D.class_names == ("anger", "disgust", "fear", "happy", "neutral", "sad") == CREMA_D_EMOTIONS
  name = parse_crema_d_name("VideoFlash/1001_DFA_ANG_XX.flv")
  assert (name.actor, name.sentence, name.label, name.level, name.modality) == (1001, "DFA", 0, "XX", 1)
  assert name.stem == name.audio_stem == "1001_DFA_ANG_XX"
  assert parse_crema_d_name("AudioWAV/1091_WSI_SAD_HI.wav").modality == 3
  assert parse_crema_d_name("1050_IEO_NEU_XX").label == 4
  for bad, message in [("1001_DFA_CAL_XX.flv", "emotion CAL"), ("0999_DFA_ANG_XX.flv", "actor 0999"),
                       ("1001_XYZ_ANG_XX.flv", "sentence XYZ"), ("clip.flv", "not a CREMA-D file name")]:
    with pytest.raises(ValueError, match=message):
      parse_crema_d_name(bad)


def test_folds_partition_the_91_actors_and_every_protocol_is_actor_independent():
  actors = [a for fold in CREMA_D.folds for a in fold]
  assert sorted(actors) == list(range(1001, 1092)) and len(CREMA_D.folds) == 5
  tested = []
  for protocol in CREMA_D.protocols + tuple(splits.inner_protocol(p, j) for p in CREMA_D.protocols
                                            for j in range(1, splits.INNER_FOLDS + 1)):
    parts = CREMA_D.parts(protocol)
    train, validation, test = (set(parts[k]) for k in ("train", "validation", "test"))
    assert train and test and not train & test and not train & validation and not validation & test
    if not protocol.startswith("inner_"):
      assert train | validation | test == set(CREMA_D.groups)
      tested += parts["test"]
  assert sorted(tested) == list(range(1001, 1092))  # the five folds test every actor once
  assert CREMA_D.resolve_split("fold3_test").split("+") == [f"actor{a}" for a in CREMA_D.folds[2]]
  assert not CREMA_D.is_protocol("fold6") and not CREMA_D.is_protocol("released")


@needs_demographics
def test_folds_are_the_sex_balanced_deal_of_video_demographics():
  with open(SHARED / "VideoDemographics.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 91
  sex = {int(r["ActorID"]): r["Sex"] for r in rows}
  # The lists in avtca_jax/datasets.py, made again: each sex by (age, id), dealt round robin, men first.
  folds = [[] for _ in range(5)]
  order = [r for s in ("Male", "Female") for r in sorted((r for r in rows if r["Sex"] == s),
                                                        key=lambda r: (int(r["Age"]), int(r["ActorID"])))]
  for i, r in enumerate(order):
    folds[i % 5].append(int(r["ActorID"]))
  assert tuple(tuple(sorted(f)) for f in folds) == CREMA_D.folds
  men = [sum(sex[a] == "Male" for a in fold) for fold in CREMA_D.folds]
  women = [sum(sex[a] == "Female" for a in fold) for fold in CREMA_D.folds]
  assert sum(men) == 48 and sum(women) == 43
  assert max(men) - min(men) <= 1 and max(women) - min(women) <= 1


def test_in_memory_assignment_follows_the_folds():
  actors = np.array([1003, 1007, 1009, 1001, 1002, 1015])
  assert list(CREMA_D.assign_split("fold1", actors)) == ["test", "validation", "train", "train", "train", "test"]
  with pytest.raises(ValueError, match="1200"):
    CREMA_D.assign_split("fold1", [1200])


def test_num_classes_must_be_the_datasets():
  from avtca_jax import bundled, data_sources
  config = bundled.config_module("crema_d").get_config("smoke")
  config.data.source, config.data.num_examples = "synthetic", 24
  config.num_classes = 8
  with pytest.raises(data_sources.DataError, match=r"num_classes=8 but dataset 'crema_d' has 6 classes"):
    data_sources.create_source(config)
  config.num_classes = 6
  source = data_sources.create_source(config)
  assert source.class_names == CREMA_D_EMOTIONS
  batch = next(source.eval_batches("test", 8))
  from avtca_jax import batch as batch_lib
  batch_lib.check(batch, 15, 32)
  assert batch["mask"].dtype == np.bool_ and set(np.unique(source.arrays["train"]["label"])) == set(range(6))
  assert set(np.unique(source.arrays["train"]["actor"])) <= set(CREMA_D.groups)


# ---- the builder -------------------------------------------------------------------------------------------


def _prepare(builder, manual_dir=None):
  import tensorflow_datasets as tfds
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=None if manual_dir is None else str(manual_dir), try_download_gcs=False))
  return builder


def test_generated_config_has_crema_d_names_and_multi_actor_folds(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  from data.crema_d import Builder, CremaDConfig
  config = CremaDConfig(name="generated_tiny", source="generated", image_size=32, clips_per_class=1,
                        description="test: 2 actors of each fold x 6 classes x 1 clip, 32 px")
  builder = _prepare(Builder(config=config, data_dir=str(tmp_path)))
  actors = sorted(a for fold in CREMA_D.folds for a in fold[:2])
  assert sorted(k for k in builder.info.splits.keys() if k.startswith("actor")) == [f"actor{a}" for a in actors]
  assert builder.info.features["label"].names == list(CREMA_D_EMOTIONS)
  for k, fold in enumerate(CREMA_D.folds, start=1):
    examples = list(tfds.as_numpy(builder.as_dataset(split=f"fold{k}_test")))
    assert sorted({int(e["actor"]) for e in examples}) == sorted(fold[:2])
    assert len(examples) == 12 and sorted(int(e["label"]) for e in examples) == sorted(list(range(6)) * 2)
    for e in examples:
      name = parse_crema_d_name(e["stem"].decode())
      assert name.label == e["label"] and name.actor == e["actor"]
    assert examples[0]["frames"].shape == (15, 32, 32, 3) and examples[0]["mfcc"].shape == (156, 10)
  import ml_collections
  folder = ml_collections.ConfigDict({"data": {"name": str(builder.data_path)}})
  assert datasets.of_config(folder).class_names == CREMA_D_EMOTIONS  # without TensorFlow, from the files
  from avtca_jax import input_pipeline
  info = input_pipeline.dataset_info(str(builder.data_path))
  assert info["num_classes"] == 6 and info["num_examples"]["fold2_train"] == 36
  batch = next(input_pipeline.create_dataset(str(builder.data_path), "fold2_validation", batch_size=8,
                                             train=False).as_numpy_iterator())
  from avtca_jax import batch as batch_lib
  batch_lib.check(batch, 15, 32)


def _manual_dir(root: Path) -> Path:
  """A CREMA-D folder: the six flv files (symlinks), one take's audio as AudioWAV/*.wav, the crowd votes."""
  import soundfile
  from avtca_jax.preprocessing.audio import load_audio
  manual = root / "crema_d"
  (manual / "VideoFlash").mkdir(parents=True)
  (manual / "AudioWAV").mkdir()
  for clip in CLIPS:
    (manual / "VideoFlash" / clip.name).symlink_to(clip)
  # The take's wav: the flv's own soundtrack, scaled by half, so a test can tell which audio was used.
  soundfile.write(manual / "AudioWAV" / "1001_DFA_HAP_XX.wav", 0.5 * load_audio(CLIPS[3], 16000), 16000)
  (manual / "processedResults").symlink_to(SHARED / "processedResults")
  return manual


@pytest.fixture(scope="module")
def real_crema_d(tmp_path_factory):
  pytest.importorskip("tensorflow_datasets")
  if len(CLIPS) != 6:
    pytest.skip(f"the six CREMA-D clips are not in {SHARED}")
  from data.crema_d import Builder, CremaDConfig
  base = tmp_path_factory.mktemp("crema_d")
  manual = _manual_dir(base)
  built = {}
  for name, label_source in (("av_test", "intended"), ("av_perceived_test", "perceived")):
    # 64 px, as the generated config: the smoke test's compiled steps serve this one too (compilation cache).
    config = CremaDConfig(name=name, label_source=label_source, image_size=64, description="test: 64 px")
    built[label_source] = _prepare(Builder(config=config, data_dir=str(base / "tfds"),
                                           preprocess_cache_dir=str(base / "cache"), preprocess_workers=2), manual)
  return built


@needs_real_clips
def test_real_clips_build_with_intended_and_perceived_labels(real_crema_d):
  import tensorflow_datasets as tfds
  from avtca_jax.preprocessing.audio import mfcc, crop_or_pad, load_audio
  intended = real_crema_d["intended"]
  assert sorted(intended.info.splits.keys()) == ["actor1001", "paper_random_test", "paper_random_train"]
  examples = {e["stem"].decode(): e for e in tfds.as_numpy(intended.as_dataset(split="all"))}
  assert sorted(examples) == sorted(c.stem for c in CLIPS)
  for stem, e in examples.items():
    assert CREMA_D_EMOTIONS[e["label"]] == CREMA_D_EMOTIONS[parse_crema_d_name(stem).label]
    assert e["actor"] == 1001 and e["frames"].shape == (15, 64, 64, 3) and e["frames"].std() > 10
  # AudioWAV/ is used when it holds the take; the other clips use the flv's own soundtrack.
  report = json.loads((Path(intended.data_path) / "preprocessing_report.json").read_text())
  assert report["clips_written"] + report["clips_cached"] == 6 and not report["skipped"]
  wav = crop_or_pad(load_audio(Path(report["input"]) / "AudioWAV" / "1001_DFA_HAP_XX.wav"))
  np.testing.assert_allclose(examples["1001_DFA_HAP_XX"]["mfcc"], mfcc(wav), atol=1e-3)
  own = crop_or_pad(load_audio(CLIPS[0]))
  np.testing.assert_allclose(examples["1001_DFA_ANG_XX"]["mfcc"], mfcc(own), atol=1e-3)
  # The crowd's vote (summaryTable.csv's MultiModalVote): the sad take was perceived as neutral ('N'),
  # the other five as intended.
  perceived = {e["stem"].decode(): int(e["label"]) for e in
               tfds.as_numpy(real_crema_d["perceived"].as_dataset(split="all"))}
  expected = {stem: int(e["label"]) for stem, e in examples.items()}
  expected["1001_DFA_SAD_XX"] = CREMA_D_EMOTIONS.index("neutral")
  assert perceived == expected
  assert real_crema_d["perceived"].info.metadata["preprocessing"]["label_source"] == "perceived"


def _run(*args, timeout=900):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
  result = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  return result


@needs_real_clips
def test_real_clips_train_and_evaluate(real_crema_d, tmp_path):
  """Two steps on the six real clips (paper_random: 5 train, 1 test), then evaluate the run."""
  data = str(real_crema_d["intended"].data_path)
  workdir = tmp_path / "real"
  _run("avtca_jax.train", "--config=configs/crema_d.py:smoke", f"--workdir={workdir}",
       f"--config.data.name={data}", "--config.data.builder_config=", "--config.data.protocol=paper_random")
  test = json.loads((workdir / "test_metrics.json").read_text())
  assert 0.0 <= test["accuracy"] <= 1.0
  result = _run("avtca_jax.evaluate", f"--workdir={workdir}", "--split=test", "--remove=",
                f"--output_dir={tmp_path / 'eval'}")
  assert "accuracy" in result.stdout


def test_smoke_runs_offline_from_the_command_line(tmp_path):
  """The done-when command: the generated CREMA-D clips are built on first use, trained, evaluated, tested."""
  pytest.importorskip("tensorflow_datasets")
  workdir = tmp_path / "D"
  _run("avtca_jax.train", "--config=configs/crema_d.py:smoke", f"--workdir={workdir}",
       f"--config.data.data_dir={tmp_path / 'tfds'}")
  test = json.loads((workdir / "test_metrics.json").read_text())
  assert 0.0 <= test["accuracy"] <= 1.0
  stored = json.loads((workdir / "config.json").read_text())
  assert stored["variant"] == "crema_d:smoke" and stored["num_classes"] == 6
  from avtca_jax import checkpoint_kinds
  assert checkpoint_kinds.load_config(str(workdir)).data.name == "crema_d"


# ---- fine-tune from a RAVDESS run -----------------------------------------------------------------------------


def test_finetune_from_a_ravdess_run_loads_everything_but_the_classifier(tmp_path, caplog):
  import jax
  from test_evaluate import _config, write_untrained_workdir
  from avtca_jax import bundled, checkpointing, steps as steps_lib
  ravdess = write_untrained_workdir(tmp_path / "ravdess", _config(model="audio", **{"data.source": "synthetic"}))
  config = bundled.config_module("crema_d").get_config("finetune")
  config.model, config.image_size, config.init_checkpoint = "audio", 32, str(ravdess)
  with caplog.at_level("INFO"):
    state = jax.device_get(steps_lib.build(config, steps_lib.create_mesh(), steps_per_epoch=10).initial_state())
  source = checkpointing.restore_numpy(checkpointing.checkpoint_dir(str(ravdess)))
  assert state.params["classifier"]["kernel"].shape == (128, 6)
  flat_ours = checkpointing.flatten({"params": state.params, "batch_stats": state.batch_stats})
  flat_theirs = checkpointing.flatten({"params": source["params"], "batch_stats": source["batch_stats"]})
  same = [k for k in flat_theirs if "classifier" not in k]
  assert same and all(np.array_equal(flat_ours[k], flat_theirs[k]) for k in same)
  assert "left out" in caplog.text and "params/classifier/kernel: (128, 8) vs model (128, 6)" in caplog.text


def test_preprocess_command_reads_crema_d_names(tmp_path, capsys):
  """`python -m avtca_jax.preprocess --dataset crema_d`: RAVDESS names are not CREMA-D clips; a folder with
  none is a one-line error that says what the folder must hold."""
  from avtca_jax import preprocess
  (tmp_path / "VideoFlash").mkdir()
  (tmp_path / "VideoFlash" / "01-01-01-01-01-01-01.mp4").write_bytes(b"")
  with pytest.raises(SystemExit) as stopped:
    preprocess.main(["--dataset", "crema_d", "--input", str(tmp_path), "--output", str(tmp_path / "out")])
  assert stopped.value.code == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "no usable CREMA-D clip" in err[0] and "VideoFlash/" in err[0], err
  assert "not a CREMA-D file name" in err[0]
