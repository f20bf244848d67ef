"""The builders on Apache Beam (tfds's distributed path) write exactly what the local build writes.

Real preprocessing: 6 short mp4s with a face (made by `benchmarks.beam_build.write_clips` from a CREMA-D clip
of ../shared/data, each with its own generated wav) in a CSV manifest, built locally in this process and
with tfds's own `tfds build` script on the DirectRunner. Generated clips: a small CREMA-D `generated`
config, both builds in this process. Every example is compared, decoded, keyed by clip stem.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

ROOT = Path(__file__).resolve().parents[1]
DIRECT_RUNNER = "runner=DirectRunner,direct_num_workers=1"


def decoded_examples(folder) -> tuple[dict, dict]:
  """({split: num_examples}, {split: {stem: {feature: numpy value}}}) of a built dataset."""
  builder = tfds.builder_from_directory(str(folder))
  sizes = {name: info.num_examples for name, info in builder.info.splits.items()}
  examples = {}
  for name in sizes:
    by_stem = {}
    for example in tfds.as_numpy(builder.as_dataset(split=name)):
      by_stem[example["stem"].decode()] = example
    assert len(by_stem) == sizes[name]
    examples[name] = by_stem
  return sizes, examples


def assert_same_examples(local_folder, beam_folder) -> dict:
  local_sizes, local = decoded_examples(local_folder)
  beam_sizes, beam = decoded_examples(beam_folder)
  assert beam_sizes == local_sizes
  for split, by_stem in local.items():
    assert beam[split].keys() == by_stem.keys(), split
    for stem, example in by_stem.items():
      other = beam[split][stem]
      assert other.keys() == example.keys()
      for feature, value in example.items():
        assert np.array_equal(other[feature], value), f"{split} {stem} {feature}"
  return local_sizes


def test_manifest_of_encoded_videos_builds_the_same_on_beam_with_tfds_build(tmp_path):
  from benchmarks import beam_build
  manifest = beam_build.write_clips(tmp_path / "clips", 6)
  local = beam_build.build(manifest, tmp_path / "local", image_size=64)

  config = json.dumps(dict(name="clips", manifest=str(manifest), image_size=64))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run(
      [str(Path(sys.executable).parent / "tfds"), "build", "data/manifest", "--config", config, "--manual_dir",
       str(manifest.parent), "--data_dir", str(tmp_path / "beam"), f"--beam_pipeline_options={DIRECT_RUNNER}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  beam_folder = tmp_path / "beam" / "manifest" / "clips" / "1.0.0"

  sizes = assert_same_examples(local, beam_folder)
  assert sizes["speaker1"] == sizes["speaker2"] == sizes["speaker3"] == 2
  assert sizes["paper_random_train"] + sizes["paper_random_test"] == 6
  report = json.loads((beam_folder / "preprocessing_report.json").read_text())
  assert (report["runner"], report["clips_written"], report["skipped"]) == ("beam", 6, [])
  info = tfds.builder_from_directory(str(beam_folder)).info
  assert info.metadata["preprocessing"]["clips_written"] == 6
  assert info.features["label"].names == ["calm", "loud"]


def test_generated_config_builds_the_same_on_beam(tmp_path):
  from apache_beam.options.pipeline_options import PipelineOptions
  from data.crema_d import crema_d_dataset_builder as crema_d
  config = crema_d.CremaDConfig(name="tiny", source="generated", image_size=32, clips_per_class=1,
                                generated_actors_per_fold=1, description="5 actors x 6 classes")

  def build(data_dir, beam_options=None):
    builder = crema_d.Builder(config=config, data_dir=str(data_dir))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        try_download_gcs=False, beam_options=beam_options))
    return builder.data_dir

  local = build(tmp_path / "local")
  beam = build(tmp_path / "beam", PipelineOptions([f"--{o}" for o in DIRECT_RUNNER.split(",")]))
  sizes = assert_same_examples(local, beam)
  assert sum(n for split, n in sizes.items() if split.startswith("actor")) == 30 and len(sizes) == 7


def test_a_clip_without_a_face_is_skipped_and_reported_on_beam(tmp_path):
  """As on the local path: the clip is left out of every split and listed, with its reason, in the report.
  Four speakers, so that every fold keeps training clips of both classes."""
  from benchmarks import beam_build
  manifest = beam_build.write_clips(tmp_path / "clips", 8)
  import cv2
  writer = cv2.VideoWriter(str(tmp_path / "clips" / "clip_005.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 30.0,
                           (320, 240))
  for _ in range(30):
    writer.write(np.full((240, 320, 3), 90, np.uint8))  # a grey picture: no face
  writer.release()
  folder = beam_build.build(manifest, tmp_path / "beam", image_size=64, beam_workers=1)
  sizes, examples = decoded_examples(folder)
  assert sizes["speaker3"] == 1 and list(examples["speaker3"]) == ["clip_004"]
  assert sizes["paper_random_train"] + sizes["paper_random_test"] == 7
  report = json.loads((Path(folder) / "preprocessing_report.json").read_text())
  assert report["clips_written"] == 7 and len(report["skipped"]) == 1
  skipped = report["skipped"][0]
  assert skipped["path"].endswith("clip_005.mp4") and skipped["line"] == 7 and "face" in skipped["reason"].lower()


def test_a_speaker_left_without_clips_on_beam_is_a_one_line_error(tmp_path):
  """A local build leaves such a speaker's split out; tfds's Beam writer cannot write an empty split."""
  from benchmarks import beam_build
  manifest = beam_build.write_clips(tmp_path / "clips", 6)
  import cv2
  for index in (4, 5):  # both clips of the third speaker
    writer = cv2.VideoWriter(str(tmp_path / "clips" / f"clip_{index:03d}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"),
                             30.0, (320, 240))
    for _ in range(30):
      writer.write(np.full((240, 320, 3), 90, np.uint8))
    writer.release()
  with pytest.raises(ValueError) as info:
    beam_build.build(manifest, tmp_path / "beam", image_size=64, beam_workers=1)
  message = str(info.value)
  assert "\n" not in message and "split speaker3 would be empty" in message
  assert "without --beam_pipeline_options" in message


def test_without_beam_options_the_build_is_local(tmp_path, monkeypatch):
  """No beam options: the builder gives tfds plain generators (tfds would otherwise start a Beam pipeline)."""
  from data.crema_d import crema_d_dataset_builder as crema_d
  config = crema_d.CremaDConfig(name="tiny", source="generated", image_size=32, clips_per_class=1,
                                generated_actors_per_fold=1)
  builder = crema_d.Builder(config=config, data_dir=str(tmp_path))
  monkeypatch.setattr(type(builder), "_beam_split_generators",
                      lambda self, dl: pytest.fail("the Beam path was taken without beam options"))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  assert json.loads((Path(builder.data_dir) / "preprocessing_report.json").read_text())["source"] == "generated"
