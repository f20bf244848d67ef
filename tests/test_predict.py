"""`python -m avtca_jax.predict` on real clips: any file name, a folder, the original's .pth, a silent video.

The real clips are ../shared/data/ravdess/video_actor05 (14 takes of Actor 05) and video_other (one of
Actor 01). The workdir model is an untrained 32 px one (prediction does not need a good model, only the
real path from a clip to probabilities); the .pth test runs the real 224 px architecture and checks the
probabilities against the PyTorch original's own forward pass on the same inputs.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "ravdess"
ACTOR05 = SHARED / "video_actor05"
ODD_CLIP = SHARED / "video_other" / "01-01-07-02-02-01-01_1.mp4"
needs_clips = pytest.mark.skipif(not ACTOR05.is_dir(), reason=f"real RAVDESS clips not found at {ACTOR05}")
# Actor 05's 14 videos by emotion (../shared/data/ravdess/README.md).
ACTOR05_EMOTIONS = {"neutral": 1, "happy": 1, "sad": 5, "fearful": 6, "surprised": 1}


@pytest.fixture
def small_workdir(small_avtca_workdir):
  """An untrained 32 px AVT-CA run on generated data (conftest): predict must warn about both."""
  return small_avtca_workdir


def _probabilities(lines):
  return [float(line.split()[-1]) for line in lines]


@needs_clips
@pytest.mark.slow
def test_predict_renamed_real_clip(small_workdir, tmp_path, capsys):
  """A real clip under a user's own name: probabilities, no label, the model's two warnings, JSON output."""
  pytest.importorskip("facenet_pytorch")
  from avtca_jax import predict
  clip = tmp_path / "my_clip.mp4"
  shutil.copyfile(ACTOR05 / "01-01-04-01-01-01-05.mp4", clip)
  output = tmp_path / "out.json"
  assert predict.main([str(small_workdir), str(clip), "--output", str(output)]) == 0
  captured = capsys.readouterr()
  lines = captured.out.strip().splitlines()
  assert lines[0].startswith("my_clip.mp4: ") and "label" not in lines[0]
  probabilities = _probabilities(lines[1:9])
  assert len(probabilities) == 8 and sum(probabilities) == pytest.approx(1.0, abs=1e-3)
  assert "trained on generated data" in captured.err and "takes 32 px faces" in captured.err
  rows = json.loads(output.read_text())
  assert len(rows) == 1 and rows[0]["clip"] == str(clip) and rows[0]["label"] is None
  assert rows[0]["predicted"] == lines[0].split(": ")[1].split(" ")[0]
  assert sum(rows[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


@needs_clips
@pytest.mark.slow
def test_predict_folder_of_real_clips(small_workdir, tmp_path, capsys):
  """A folder with the 14 Actor 05 clips behind a symlinked sub-folder and one clip without a RAVDESS name:
  15 predictions, accuracy per class over the 14 labelled ones, a CSV that agrees with the printout."""
  pytest.importorskip("facenet_pytorch")
  from avtca_jax import predict
  folder = tmp_path / "clips"
  folder.mkdir()
  (folder / "actor05").symlink_to(ACTOR05, target_is_directory=True)
  shutil.copyfile(ODD_CLIP, folder / "holiday.mp4")
  output = tmp_path / "predictions.csv"
  assert predict.main([str(small_workdir), str(folder), "--output", str(output)]) == 0
  out = capsys.readouterr().out
  assert "15 of 15 clips predicted" in out
  with open(output, newline="") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 15
  by_name = {Path(r["clip"]).name: r for r in rows}
  assert by_name["holiday.mp4"]["label"] == "" and by_name["01-01-06-01-01-01-05.mp4"]["label"] == "fearful"
  for r in rows:
    p = [float(r[f"p_{e}"]) for e in predict.EMOTIONS]
    assert sum(p) == pytest.approx(1.0, abs=1e-4) and r["predicted"] == predict.EMOTIONS[int(np.argmax(p))]
  labelled = [r for r in rows if r["label"]]
  correct = sum(r["predicted"] == r["label"] for r in labelled)
  assert f"accuracy {correct / 14:.3f} ({correct}/14 clips with a RAVDESS label)" in out
  for emotion, n in ACTOR05_EMOTIONS.items():
    right = sum(r["predicted"] == emotion for r in labelled if r["label"] == emotion)
    assert f"  {emotion:<10} {right}/{n}" in out


@needs_clips
@pytest.mark.slow
def test_predict_with_the_originals_pth_matches_pytorch(tmp_path):
  """The original's .pth (a randomised PyTorch MultiModalCNN, saved as its training script does) is
  converted on the fly; the probabilities equal the PyTorch model's own on the same preprocessed clip."""
  pytest.importorskip("facenet_pytorch")
  torch = pytest.importorskip("torch")
  from avtca_jax import predict
  from avtca_jax.reference import torch_avtca
  torch.manual_seed(0)
  model = torch_avtca.randomize_(torch_avtca.MultiModalCNN(fusion="ia"), seed=0).eval()
  path = tmp_path / "RAVDESS_multimodalcnn_15_best0.pth"
  torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)

  loaded = predict.load_model(str(path))
  assert not loaded.warnings and not loaded.audio_only
  clip = ACTOR05 / "01-01-08-01-02-01-05.mp4"
  got = predict.probabilities(loaded, str(clip))
  mfcc, crops = predict.features(str(clip), None, audio_only=False)
  frames = (crops[..., ::-1].astype(np.float32) / 255.0).transpose(0, 3, 1, 2)  # BGR NCHW in [0, 1]
  with torch.no_grad():
    logits = model(torch.from_numpy(mfcc.T[None].copy()), torch.from_numpy(np.ascontiguousarray(frames))).numpy()[0]
  expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
  np.testing.assert_allclose(got, expected, atol=1e-4)


@needs_clips
@pytest.mark.slow
def test_silent_video_takes_its_audio_as_second_argument(small_workdir, tmp_path, capsys):
  """A video without a soundtrack: a one-line error naming the fix; with the take's audio file it works."""
  pytest.importorskip("facenet_pytorch")
  from avtca_jax import predict
  silent = tmp_path / "silent.mp4"
  write_silent_copy(ACTOR05 / "01-01-03-01-01-02-05.mp4", silent)
  with pytest.raises(SystemExit) as exit_info:
    predict.main([str(small_workdir), str(silent)])
  assert exit_info.value.code == 1
  err = capsys.readouterr().err.strip().splitlines()[-1]
  assert err.startswith(f"error: {silent}: the video has no soundtrack: give its audio file")
  audio = SHARED / "audio_speech_48k_actor05" / "03-01-03-01-01-02-05.flac"
  assert predict.main([str(small_workdir), str(silent), str(audio)]) == 0
  assert capsys.readouterr().out.startswith("silent.mp4: ")


def write_silent_copy(source: Path, target: Path, scale: float = 0.5) -> None:
  """The frames of `source`, half size, re-encoded without any audio stream (OpenCV writes video only)."""
  import cv2
  reader = cv2.VideoCapture(str(source))
  fps = reader.get(cv2.CAP_PROP_FPS)
  writer = None
  while True:
    ok, frame = reader.read()
    if not ok:
      break
    frame = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    if writer is None:
      writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), fps, frame.shape[1::-1])
    writer.write(frame)
  reader.release()
  writer.release()


def test_find_inputs_pairs_audio_by_name_and_by_take(tmp_path):
  """In a folder: `x.mp4` + `x.wav`, a RAVDESS video + its take's 03 audio, a video alone (its soundtrack);
  an audio-only model takes the audio files and the soundtrack of videos without one."""
  from avtca_jax import predict
  for name in ("x.mp4", "x.wav", "01-01-05-01-01-01-05.mp4", "03-01-05-01-01-01-05.flac", "alone.mp4",
               "notes.txt"):
    (tmp_path / name).write_bytes(b"")
  pairs = predict.find_inputs(str(tmp_path), None, audio_only=False)
  assert [(Path(c).name, a and Path(a).name) for c, a in pairs] == [
      ("01-01-05-01-01-01-05.mp4", "03-01-05-01-01-01-05.flac"), ("alone.mp4", None), ("x.mp4", "x.wav")]
  pairs = predict.find_inputs(str(tmp_path), None, audio_only=True)
  assert sorted(Path(c).name for c, _ in pairs) == ["03-01-05-01-01-01-05.flac", "alone.mp4", "x.wav"]
  assert predict.label_of("x.mp4") is None and predict.label_of("03-01-05-01-01-01-05.flac") == 4
  with pytest.raises(ValueError, match="is an audio file but the model needs the video"):
    predict.find_inputs(str(tmp_path / "x.wav"), None, audio_only=False)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match="no video files in this folder"):
    predict.find_inputs(str(empty), None, audio_only=False)
