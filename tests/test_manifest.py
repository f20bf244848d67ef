"""A person's own clips through a CSV manifest (data/manifest, configs/manifest.py): the manifest's checks,
its folds, and one dataset end to end (build, train, evaluate, predict, export).

The bad-input tests use empty stand-in files (the checks only look for the files) and never reach face
detection or compilation. The end-to-end test lists 8 real clips of ../shared/data (RAVDESS mp4s, CREMA-D
flvs, one with a separate audio file) under labels and speakers of our own: 4 speakers x 2 classes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RAVDESS = SHARED / "ravdess"
CREMA_D = SHARED / "crema_d" / "VideoFlash"


def write_csv(folder: Path, rows, header="video,label,speaker", files=True) -> Path:
  """clips.csv in `folder` with `rows` (tuples of cells); empty stand-ins for the video and audio files."""
  folder.mkdir(parents=True, exist_ok=True)
  lines = [header] + [",".join(row) for row in rows]
  if files:
    columns = header.split(",")
    for row in rows:
      for column, cell in zip(columns, row):
        if column in ("video", "audio") and cell:
          path = folder / cell
          path.parent.mkdir(parents=True, exist_ok=True)
          path.touch()
  path = folder / "clips.csv"
  path.write_text("\n".join(lines) + "\n")
  return path


def grid(speakers=("ann", "bob", "cat", "dan"), classes=("happy", "sad"), per=1):
  """One row per (speaker, class, index): videos spk/class_i.mp4."""
  return [(f"{s}/{c}_{i}.mp4", c, s) for s in speakers for c in classes for i in range(per)]


def manifest_error(path, **kwargs) -> str:
  from data.manifest import ManifestError, read_manifest
  with pytest.raises(ManifestError) as info:
    read_manifest(path, **kwargs)
  message = str(info.value)
  assert "\n" not in message
  return message


# ---- the manifest: classes, speakers, folds --------------------------------------------------------------


def test_label_list_order_speaker_ids_and_balanced_folds(tmp_path):
  from data.manifest import read_manifest
  rows = grid(speakers=("ann", "bob", "cat", "dan", "eve", "fay", "gus"), classes=("sad", "happy", "angry"))
  rows += [("ann/extra.mp4", "happy", "ann"), ("ann/extra2.mp4", "sad", "ann")]
  path = write_csv(tmp_path, rows)
  (tmp_path / "labels.txt").write_text("# my classes\nhappy\nsad\n\nangry\n")
  m = read_manifest(path)
  assert m.class_names == ("happy", "sad", "angry") and m.labels_source.endswith("labels.txt")
  assert m.group_names == {1: "ann", 2: "bob", 3: "cat", 4: "dan", 5: "eve", 6: "fay", 7: "gus"}
  assert len(m.folds) == 5 and sorted(g for f in m.folds for g in f) == list(range(1, 8))
  clips = [sum(1 for r in m.rows if r.group in fold) for fold in m.folds]
  assert max(clips) - min(clips) <= 3 and m.folds[0] == (1,)  # ann (5 clips) alone in the first fold
  assert m.rows[0].stem == "ann__sad_0" and m.rows[0].line == 2
  assert read_manifest(path).folds == m.folds  # deterministic
  # A label option overrides labels.txt; without either, the CSV's labels sorted.
  assert read_manifest(path, labels="sad,happy,angry").class_names == ("sad", "happy", "angry")
  (tmp_path / "labels.txt").unlink()
  assert read_manifest(path).class_names == ("angry", "happy", "sad")
  # Fewer speakers than folds: one fold per speaker.
  assert len(read_manifest(write_csv(tmp_path / "three", grid(speakers=("a", "b", "c")))).folds) == 3


def test_integer_speakers_keep_their_ids_and_a_fold_column_gives_the_folds(tmp_path):
  from data.manifest import read_manifest
  rows = [(v, label, speaker, str(int(speaker) % 3 + 1))
          for v, label, speaker in grid(speakers=("1001", "1002", "1003", "1004", "1005", "1006"))]
  m = read_manifest(write_csv(tmp_path, rows, header="video,label,speaker,fold"))
  assert m.groups == (1001, 1002, 1003, 1004, 1005, 1006)
  assert m.folds == ((1002, 1005), (1003, 1006), (1001, 1004)) and m.fold_names == ("1", "2", "3")
  facts = m.metadata()
  assert facts["folds"] == [[1002, 1005], [1003, 1006], [1001, 1004]] and facts["fold_source"] == "column"
  assert m.dataset().resolve_split("fold1_test") == "speaker1002+speaker1005"


def test_speaker_ids_are_deterministic():
  from data.manifest.manifest import group_ids
  assert group_ids(["7", "05", "5"]) == {"05": 1, "5": 2, "7": 3}  # '05' and '5' are two speakers
  assert group_ids(["99999999999", "1"]) == {"1": 1, "99999999999": 2}  # beyond int32
  assert group_ids(["bob", "10", "ann"]) == {"10": 1, "ann": 2, "bob": 3}


def test_relative_paths_are_relative_to_the_csv_folder_and_audio_is_optional(tmp_path):
  from data.manifest import read_manifest
  rows = [(v, label, s, "" if i % 2 else f"audio/{i}.wav") for i, (v, label, s) in enumerate(grid())]
  m = read_manifest(write_csv(tmp_path / "data", rows, header="video,label,speaker,audio"))
  assert m.rows[0].video == (tmp_path / "data" / "ann" / "happy_0.mp4").resolve()
  assert m.rows[0].audio == (tmp_path / "data" / "audio" / "0.wav").resolve() and m.rows[1].audio is None


# ---- bad input: one line naming the row and the fix, before any face detection ----------------------------


def test_linked_clips_keep_their_own_names_and_two_links_to_one_file_are_a_duplicate(tmp_path):
  from data.manifest import read_manifest
  store = tmp_path / "store"
  store.mkdir()
  rows = grid()
  folder = tmp_path / "clips"
  for i, (video, _, _) in enumerate(rows):
    (store / f"{i}.mp4").touch()
    (folder / video).parent.mkdir(parents=True, exist_ok=True)
    (folder / video).symlink_to(store / f"{i}.mp4")
  m = read_manifest(write_csv(folder, rows, files=False))
  assert m.rows[0].stem == "ann__happy_0" and m.rows[0].video == folder / "ann" / "happy_0.mp4"
  (folder / "extra.mp4").symlink_to(store / "0.mp4")
  message = manifest_error(write_csv(folder, rows + [("extra.mp4", "happy", "ann")], files=False))
  assert "line 10: duplicate row: the video extra.mp4 is already on line 2" in message


def test_unknown_label(tmp_path):
  rows = grid()
  rows[2] = (rows[2][0], "hapy", rows[2][2])
  path = write_csv(tmp_path, rows)
  (tmp_path / "labels.txt").write_text("happy\nsad\n")
  message = manifest_error(path)
  assert "line 4" in message and "unknown label 'hapy'" in message and "did you mean 'happy'" in message
  assert "add it to the label list" in message


def test_missing_video_and_audio_files(tmp_path):
  rows = grid()
  path = write_csv(tmp_path, rows)
  (tmp_path / rows[5][0]).unlink()
  message = manifest_error(path)
  assert "line 7" in message and f"video file {rows[5][0]} not found" in message
  assert "relative to the CSV's folder" in message
  audio_rows = [row + ("a.wav",) for row in grid()]
  path = write_csv(tmp_path / "audio", audio_rows, header="video,label,speaker,audio", files=False)
  for v, *_ in audio_rows:
    (tmp_path / "audio" / v).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "audio" / v).touch()
  message = manifest_error(path)
  assert "line 2" in message and "audio file a.wav not found" in message


def test_duplicate_row(tmp_path):
  rows = grid()
  rows.append(rows[1])
  message = manifest_error(write_csv(tmp_path, rows))
  assert "line 10" in message and "duplicate row" in message and "already on line 3" in message
  assert "remove one of the two rows" in message


def test_fold_column_with_a_speaker_in_two_folds(tmp_path):
  rows = [row + (str(i),) for i, s in enumerate(("ann", "bob", "cat", "dan"), 1) for row in grid(speakers=(s,))]
  rows[1] = rows[1][:3] + ("3",)  # ann's second clip in fold 3
  message = manifest_error(write_csv(tmp_path, rows, header="video,label,speaker,fold"))
  assert "line 3" in message and "speaker 'ann' is in fold '3' here but in fold '1' on line 2" in message
  assert "put all clips of a speaker in one fold" in message


def test_class_without_training_clips(tmp_path):
  # 'angry' only from ann: in fold1 (ann tested) and in the fold whose validation part holds ann, no
  # speaker left in training has an angry clip.
  rows = grid() + [("ann/angry.mp4", "angry", "ann")]
  message = manifest_error(write_csv(tmp_path, rows))
  assert "line 10" in message and "class 'angry' has no training clip in fold" in message
  assert "add 'angry' clips of other speakers" in message
  # The same with a fold column: moving a speaker is a fix too.
  rows = [row + (str(i),) for i, s in enumerate(("ann", "bob", "cat", "dan"), 1) for row in grid(speakers=(s,))]
  rows.append(("ann/angry.mp4", "angry", "ann", "1"))
  message = manifest_error(write_csv(tmp_path / "folds", rows, header="video,label,speaker,fold"))
  assert "class 'angry' has no training clip in fold1" in message and "move a speaker" in message


def test_other_bad_manifests(tmp_path):
  message = manifest_error(write_csv(tmp_path / "a", grid(), header="clip_file,label,speaker"))
  assert "line 1" in message and "no 'video' column" in message
  message = manifest_error(write_csv(tmp_path / "b", grid(speakers=("ann", "bob"))))
  assert "2 speaker(s)" in message and "at least 3" in message
  path = write_csv(tmp_path / "c", grid())
  (tmp_path / "c" / "labels.txt").write_text("happy\nsad\nangry\n")
  message = manifest_error(path)
  assert "class 'angry' of the label list" in message and "has no clip" in message
  rows = grid()
  rows[3] = (rows[3][0], rows[3][1], "")
  message = manifest_error(write_csv(tmp_path / "d", rows))
  assert "line 5" in message and "empty 'speaker' cell" in message
  message = manifest_error(path, labels="happy,sad,happy")
  assert "'happy' given twice" in message


def test_the_builder_stops_before_face_detection(tmp_path, monkeypatch):
  """A bad row fails in the build before the preprocessing starts (one line, naming the row)."""
  from data.manifest import ManifestError, build_dataset, manifest_dataset_builder

  def no_preprocessing(*args, **kwargs):
    raise AssertionError("the preprocessing ran on a bad manifest")

  monkeypatch.setattr(manifest_dataset_builder, "run_preprocessing", no_preprocessing)
  rows = grid()
  rows[4] = (rows[4][0], "sadd", rows[4][2])
  (tmp_path / "clips").mkdir()
  (tmp_path / "clips" / "labels.txt").write_text("happy\nsad\n")
  path = write_csv(tmp_path / "clips", rows)
  with pytest.raises(ManifestError, match=r"line 6: unknown label 'sadd'"):
    build_dataset(path, data_dir=str(tmp_path / "tfds"))
  assert not list((tmp_path / "tfds").rglob("*.tfrecord*"))


def test_clips_the_preprocessing_skipped_can_leave_a_class_without_training_clips(tmp_path):
  """No face in cat's and dan's sad clips: fold1 (training speakers cat, dan) has no sad clip left."""
  from data.manifest import ManifestError, read_manifest
  from data.manifest.manifest_dataset_builder import _check_training_clips
  m = read_manifest(write_csv(tmp_path, grid()))
  lost = {r.line: r.stem for r in m.rows if r.speaker in ("cat", "dan") and m.class_names[r.label] == "sad"}
  report = {"skipped": [{"line": line, "path": "x", "reason": "NoFaceError: no face in any frame"} for line in lost]}
  _check_training_clips(m, {r.stem for r in m.rows}, {"skipped": []})  # nothing skipped: fine
  with pytest.raises(ManifestError) as info:
    _check_training_clips(m, {r.stem for r in m.rows if r.line not in lost}, report)
  message = str(info.value)
  assert f"line {min(lost)}" in message and "class 'sad' has no usable training clip in fold1" in message
  assert "NoFaceError" in message and "\n" not in message


def test_build_command_prints_one_line_for_a_bad_manifest(tmp_path):
  rows = grid()
  rows.append(rows[0])
  path = write_csv(tmp_path / "clips", rows)
  result = subprocess.run([sys.executable, "-m", "data.manifest.build", "--manifest", str(path), "--data_dir",
                           str(tmp_path / "tfds")], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu"))
  assert result.returncode == 1, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "line 10: duplicate row" in errors[0], result.stderr[-3000:]


# ---- the config ------------------------------------------------------------------------------------------


def test_config_without_a_dataset_has_the_trainers_keys(monkeypatch):
  from avtca_jax import config_validation
  from configs import manifest, ravdess
  monkeypatch.delenv(manifest.MANIFEST_VARIABLE, raising=False)
  config = manifest.get_config("smoke")
  assert config.variant == "manifest:smoke" and config.data.name == manifest.NO_DATASET
  keys = set(config_validation.flat_keys(config))
  assert keys == set(config_validation.flat_keys(ravdess.get_config("default")))
  assert keys == set(config_validation.flat_keys(config_validation.default_config("manifest:smoke")))
  assert manifest.split_arg("/a/b,c/1.0.0,fold2") == ("/a/b,c/1.0.0", "fold2")
  assert manifest.split_arg("/a/b/1.0.0") == ("/a/b/1.0.0", "default")
  with pytest.raises(ValueError, match="is not a built manifest dataset"):
    manifest.get_config("/no/such/folder,smoke")


def test_config_finds_the_built_dataset_from_its_folder_the_csv_or_the_environment(tmp_path, monkeypatch):
  from configs import manifest
  csv_path = write_csv(tmp_path / "My Clips", grid())
  folder = tmp_path / "tfds" / "manifest" / "my_clips" / "1.0.0"  # where the build command puts it
  folder.mkdir(parents=True)
  (folder / "dataset_info.json").write_text("{}")
  (folder / "metadata.json").write_text(json.dumps({"dataset": {"classes": ["a", "b", "c"], "image_size": 48}}))
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  monkeypatch.delenv(manifest.MANIFEST_VARIABLE, raising=False)
  for given in (str(folder), str(folder.parent), str(csv_path)):
    config = manifest.get_config(f"{given},smoke")
    assert config.data.name == str(folder.resolve()) and config.num_classes == 3 and config.image_size == 32
  config = manifest.get_config(str(csv_path))
  assert config.image_size == 48 and config.data.protocol == "fold1" and config.variant == "manifest:default"
  monkeypatch.setenv(manifest.MANIFEST_VARIABLE, str(csv_path))
  config = manifest.get_config("fold3")
  assert config.data.name == str(folder.resolve()) and config.data.protocol == "fold3"
  (folder / "dataset_info.json").unlink()
  with pytest.raises(ValueError, match="has no built dataset in .*python -m data.manifest.build --manifest"):
    manifest.get_config("smoke")


def test_a_built_folder_gives_its_dataset_without_tensorflow(tmp_path):
  """datasets.of_config (evaluate, predict, export, cross_validation): the classes one per line (a name may
  hold a space) and the manifest's own speakers and folds."""
  import ml_collections
  from avtca_jax import datasets
  from data.manifest import read_manifest
  m = read_manifest(write_csv(tmp_path / "clips", grid(classes=("very happy", "sad"))))
  folder = tmp_path / "built"
  folder.mkdir()
  (folder / "dataset_info.json").write_text(json.dumps({"name": "manifest"}))
  (folder / "label.labels.txt").write_text("very happy\nsad\n")
  (folder / "metadata.json").write_text(json.dumps({"dataset": m.metadata()}))
  dataset = datasets.of_config(ml_collections.ConfigDict({"data": {"name": str(folder)}}))
  assert dataset.class_names == ("very happy", "sad") and dataset.groups == (1, 2, 3, 4)
  assert dataset.folds == m.folds and dataset.parts("fold2")["test"] == [2]
  assert dataset.resolve_split("fold1_train") == "speaker3+speaker4"


# ---- end to end on real clips ----------------------------------------------------------------------------

needs_clips = pytest.mark.skipif(not (RAVDESS.is_dir() and CREMA_D.is_dir()),
                                 reason=f"real clips not found under {SHARED}")

# (video, label, speaker, audio): our own labels and speakers on the shared clips.
E2E_ROWS = [
    (RAVDESS / "video_actor05" / "01-01-03-01-01-02-05.mp4", "bright", "ann",
     RAVDESS / "audio_speech_48k_actor05" / "03-01-03-01-01-02-05.flac"),
    (RAVDESS / "video_actor05" / "01-01-04-01-01-01-05.mp4", "dark", "ann", None),
    (CREMA_D / "1001_DFA_HAP_XX.flv", "bright", "bob", None),
    (CREMA_D / "1001_DFA_SAD_XX.flv", "dark", "bob", None),
    (RAVDESS / "video_other" / "01-01-07-02-02-01-01_1.mp4", "bright", "cat", None),
    (RAVDESS / "video_actor05" / "01-01-04-01-02-01-05.mp4", "dark", "cat", None),
    (RAVDESS / "video_actor05" / "01-01-08-01-02-01-05.mp4", "bright", "dan", None),
    (CREMA_D / "1001_DFA_NEU_XX.flv", "dark", "dan", None),
]


def _env(cache):
  return dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT),
              JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")


def _run(args, cache, timeout=600):
  result = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=_env(cache), capture_output=True, text=True,
                          timeout=timeout)
  assert result.returncode == 0, f"{' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}"
  return result


@needs_clips
@pytest.mark.slow
def test_own_clips_end_to_end(tmp_path):
  """Build with the command (real face detection), train two steps at 32 px (audio + video), evaluate, predict,
  export."""
  pytest.importorskip("facenet_pytorch")
  import tensorflow_datasets as tfds
  from avtca_jax import datasets, input_pipeline
  from data.manifest import ManifestError, build_dataset

  folder = tmp_path / "my_clips"
  folder.mkdir()
  lines = ["video,label,speaker,audio"] + [f"{v},{label},{s},{a or ''}" for v, label, s, a in E2E_ROWS]
  (folder / "clips.csv").write_text("\n".join(lines) + "\n")
  (folder / "labels.txt").write_text("dark\nbright\n")
  data_dir = tmp_path / "tfds"
  cache = str(tmp_path / "jax_cache")
  result = _run(["data.manifest.build", "--manifest", str(folder / "clips.csv"), "--data_dir", str(data_dir),
                 "--image_size", "32", "--workers", "2"], cache)
  built = data_dir / "manifest" / "my_clips" / "1.0.0"
  assert f"built {built}\ntrain: python -m avtca_jax.train --config=configs/manifest.py:{built}" in result.stdout

  # The dataset's own facts, from the built dataset alone.
  builder = tfds.builder_from_directory(str(built))
  assert builder.info.features["label"].names == ["dark", "bright"]
  facts = builder.info.metadata["dataset"]
  assert facts["group_names"] == {"1": "ann", "2": "bob", "3": "cat", "4": "dan"} and len(facts["folds"]) == 4
  assert builder.info.metadata["preprocessing"]["clips_skipped"] == 0
  dataset = datasets.from_info(builder.info)
  assert dataset.class_names == ("dark", "bright") and dataset.groups == (1, 2, 3, 4)
  assert dataset.parts("fold1") == {"test": [1], "validation": [2], "train": [3, 4]}
  info = input_pipeline.dataset_info(str(built))
  assert info["num_examples"]["fold1_train"] == 4 and info["num_examples"]["fold1_test"] == 2
  labels = {}
  for example in builder.as_dataset(split="all").as_numpy_iterator():
    labels[example["stem"].decode()] = (int(example["label"]), int(example["actor"]))
  assert labels["video_actor05__01-01-03-01-01-02-05"] == (1, 1) and labels["VideoFlash__1001_DFA_SAD_XX"] == (0, 2)

  # A changed manifest is refused rather than silently reused; rebuilt on request, from the cached crops.
  (folder / "labels.txt").write_text("bright\ndark\n")
  with pytest.raises(ManifestError, match="built from another manifest"):
    build_dataset(folder / "clips.csv", data_dir=str(data_dir), image_size=32)
  assert build_dataset(folder / "clips.csv", data_dir=str(data_dir), image_size=32, overwrite=True) == built
  rebuilt = tfds.builder_from_directory(str(built)).info
  assert rebuilt.features["label"].names == ["bright", "dark"] and rebuilt.metadata["dataset"]["classes"] == [
      "bright", "dark"]
  assert rebuilt.metadata["preprocessing"]["clips_cached"] == 8

  workdir = tmp_path / "run"
  _run(["avtca_jax.train", f"--config=configs/manifest.py:{built},smoke", f"--workdir={workdir}"], cache)
  stored = json.loads((workdir / "config.json").read_text())
  assert stored["num_classes"] == 2 and stored["data"]["name"] == str(built) and stored["image_size"] == 32
  test = json.loads((workdir / "test_metrics.json").read_text())
  assert test["count"] == 2  # fold1's test part: ann's two clips

  # Evaluate, predict and export speak the manifest's classes, in the label list's order.
  result = _run(["avtca_jax.evaluate", f"--workdir={workdir}", "--split=test", "--remove=audio_zeros"], cache)
  assert "UAR" in result.stdout
  assert re.search(r"^bright\s", result.stdout, re.M) and re.search(r"^dark\s", result.stdout, re.M), result.stdout

  clip = CREMA_D / "1001_DFA_ANG_XX.flv"  # a clip the model has not seen
  result = _run(["avtca_jax.predict", str(workdir), str(clip)], cache)
  lines = result.stdout.strip().splitlines()
  head = [line for line in lines if line.startswith(f"{clip.name}: ")]
  assert head and head[0].split(": ")[1].split(" ")[0] in ("bright", "dark"), result.stdout
  probabilities = dict(re.fullmatch(r"\s+(\S+)\s+([0-9.]+)", line).groups() for line in lines
                       if re.fullmatch(r"\s+(\S+)\s+([0-9.]+)", line))
  assert list(probabilities) == ["bright", "dark"], result.stdout
  assert sum(map(float, probabilities.values())) == pytest.approx(1.0, abs=1e-3)

  _run(["avtca_jax.export", str(workdir), "--output", str(tmp_path / "export"), "--platforms", "cpu"], cache)
  exported = json.loads((tmp_path / "export" / "export.json").read_text())
  assert exported["classes"] == ["bright", "dark"] and (tmp_path / "export" / "model.jaxexport").is_file()
