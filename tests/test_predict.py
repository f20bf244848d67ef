"""`python -m avtca_jax.predict` on real clips: any file name, a folder, the original's .pth, a silent video,
CREMA-D's flv files with a CREMA-D model, a digitally silent soundtrack, a 5-frame clip, and one file paired
with the audio file beside it exactly as in a folder.

The real clips are ../shared/data/ravdess/video_actor05 (14 takes of Actor 05) and video_other (one of
Actor 01), and ../shared/data/crema_d/VideoFlash (actor 1001's six clips: FLV, On2 VP6 video, MP3 audio).
The workdir models are 32 px ones trained for at most two steps (prediction does not need a good model, only
the real path from a clip to probabilities): an untrained one with RAVDESS's 8 classes (conftest), and
CREMA-D's 6 (`crema_d_workdir` here: `configs/crema_d.py:smoke` through the trainer, whose model.json then
carries CREMA-D's class names); the .pth test runs the real 224 px architecture and checks the probabilities
against the PyTorch original's own forward pass on the same inputs. A RAVDESS video-only (02) clip carries a
soundtrack of digital silence; none is among the shared clips, so `write_with_silent_track` makes one (a real
clip's frames with an AAC track of zeros).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "ravdess"
ACTOR05 = SHARED / "video_actor05"
ODD_CLIP = SHARED / "video_other" / "01-01-07-02-02-01-01_1.mp4"
needs_clips = pytest.mark.skipif(not ACTOR05.is_dir(), reason=f"real RAVDESS clips not found at {ACTOR05}")
CREMA_D_FLASH = ROOT.parent / "shared" / "data" / "crema_d" / "VideoFlash"
CREMA_D_CLIP = CREMA_D_FLASH / "1001_DFA_ANG_XX.flv"
CREMA_D_CLASSES = ("anger", "disgust", "fear", "happy", "neutral", "sad")
needs_crema_d = pytest.mark.skipif(not CREMA_D_CLIP.is_file(), reason=f"CREMA-D clips not found at {CREMA_D_FLASH}")
_WORKDIRS = {}


def crema_d_workdir(tmp_path_factory) -> Path:
  """A CREMA-D model as a user makes one offline: `python -m avtca_jax.train --config=configs/crema_d.py:smoke`
  (two steps at 32 px on generated CREMA-D-named clips, 6 classes), made once per session (test_export and
  test_checkpoint_kinds use it too). The trainer writes CREMA-D's class names into its model.json."""
  if "crema_d" not in _WORKDIRS:
    root = tmp_path_factory.mktemp("crema_d_model")
    workdir = root / "run"
    command = [sys.executable, "-m", "avtca_jax.train", "--config=configs/crema_d.py:smoke", f"--workdir={workdir}",
               f"--config.data.data_dir={root / 'tfds'}", "--config.progress_bar=False"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    _WORKDIRS["crema_d"] = workdir
  return _WORKDIRS["crema_d"]


@pytest.fixture
def crema_d_model(tmp_path_factory):
  return crema_d_workdir(tmp_path_factory)
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


def write_with_silent_track(source: Path, target: Path, scale: float = 0.5, max_frames: int = 0) -> None:
  """The frames of `source` (the first `max_frames` when given), scaled and re-encoded, with a soundtrack of
  digital silence (AAC, every decoded sample 0.0) as long as the video, like RAVDESS's video-only 02 files."""
  import av
  import cv2
  with av.open(str(source)) as reader, av.open(str(target), "w") as writer:
    video_in = reader.streams.video[0]
    rate = video_in.average_rate
    video = writer.add_stream("mpeg4", rate=rate)
    video.width = int(video_in.codec_context.width * scale) // 2 * 2
    video.height = int(video_in.codec_context.height * scale) // 2 * 2
    video.pix_fmt = "yuv420p"
    audio = writer.add_stream("aac", rate=48000, layout="mono")
    frames = 0
    for frame in reader.decode(video_in):
      image = cv2.resize(frame.to_ndarray(format="rgb24"), (video.width, video.height), interpolation=cv2.INTER_AREA)
      writer.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
      frames += 1
      if frames == max_frames:
        break
    writer.mux(video.encode(None))
    for start in range(0, int(48000 * frames / float(rate)) + 1, 1024):
      silence = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
      silence.sample_rate, silence.pts = 48000, start
      writer.mux(audio.encode(silence))
    writer.mux(audio.encode(None))


@needs_crema_d
@needs_clips
def test_find_inputs_probes_the_file_not_its_name(tmp_path):
  """What a file is comes from its content: an flv (and an flv under an unknown suffix) is a video, a flac
  under an unknown suffix an audio file; text and a still image are neither. A single file takes the audio
  file of its name beside it, as a folder does."""
  import cv2
  from avtca_jax import predict
  flv = CREMA_D_CLIP
  folder = tmp_path / "mixed"
  folder.mkdir()
  shutil.copyfile(flv, folder / "1001_DFA_ANG_XX.flv")
  shutil.copyfile(flv, folder / "renamed.video")
  shutil.copyfile(SHARED / "audio_speech_48k_actor05" / "03-01-03-01-01-02-05.flac", folder / "renamed.sound")
  (folder / "notes.txt").write_text("my clips\n")
  cv2.imwrite(str(folder / "face.png"), np.full((64, 64, 3), 128, np.uint8))
  assert predict.probe(str(folder / "renamed.video")) == "video"
  assert predict.probe(str(folder / "renamed.sound")) == "audio"
  assert predict.probe(str(folder / "notes.txt")) is None and predict.probe(str(folder / "face.png")) is None
  pairs = predict.find_inputs(str(folder), None, audio_only=False)
  assert [(Path(c).name, a and Path(a).name) for c, a in pairs] == [("1001_DFA_ANG_XX.flv", None),
                                                                   ("renamed.video", "renamed.sound")]
  assert predict.find_inputs(str(folder / "1001_DFA_ANG_XX.flv"), None, audio_only=False) == [
      (str(folder / "1001_DFA_ANG_XX.flv"), None)]
  # One file: the same partner as in the folder (by name, whatever the audio file's suffix).
  assert predict.find_inputs(str(folder / "renamed.video"), None, audio_only=False) == [
      (str(folder / "renamed.video"), str(folder / "renamed.sound"))]
  with pytest.raises(ValueError, match="not a video or audio file"):
    predict.find_inputs(str(folder / "notes.txt"), None, audio_only=False)
  with pytest.raises(ValueError, match="is an audio file but the model needs the video"):
    predict.find_inputs(str(folder / "renamed.sound"), None, audio_only=False)
  # Named files pair the same way alone as in a folder: x.mp4 + x.wav, a RAVDESS video + its take's 03 file.
  for name in ("x.mp4", "x.wav", "01-01-05-01-01-01-05.mp4", "03-01-05-01-01-01-05.flac", "alone.mp4"):
    (tmp_path / name).write_bytes(b"")
  in_folder = dict(predict.find_inputs(str(tmp_path), None, audio_only=False))
  for name in ("x.mp4", "01-01-05-01-01-01-05.mp4", "alone.mp4"):
    assert predict.find_inputs(str(tmp_path / name), None, audio_only=False) == [
        (str(tmp_path / name), in_folder[str(tmp_path / name)])]


@needs_crema_d
@pytest.mark.slow
def test_predict_crema_d_flv_and_a_folder_of_them(crema_d_model, tmp_path, capsys):
  """CREMA-D's own files (FLV, VP6, MP3) with a CREMA-D model: its six class names, the label from the name,
  the soundtrack named as the audio used; a folder of the six gives the same probabilities for the same clip."""
  pytest.importorskip("facenet_pytorch")
  from avtca_jax import predict
  assert predict.main([str(crema_d_model), str(CREMA_D_CLIP)]) == 0
  first, *rest = capsys.readouterr().out.strip().splitlines()
  assert first.startswith("1001_DFA_ANG_XX.flv: ") and first.split(": ")[1].split(" ")[0] in CREMA_D_CLASSES
  assert first.endswith("; label anger; audio: the video's soundtrack")
  assert [line.split()[0] for line in rest] == list(CREMA_D_CLASSES)
  single = dict((line.split()[0], float(line.split()[1])) for line in rest)
  assert sum(single.values()) == pytest.approx(1.0, abs=1e-3)

  folder = tmp_path / "VideoFlash"
  folder.mkdir()
  for clip in sorted(CREMA_D_FLASH.glob("*.flv")):
    (folder / clip.name).symlink_to(clip)
  (folder / "notes.txt").write_text("not a clip\n")
  output = tmp_path / "predictions.csv"
  assert predict.main([str(crema_d_model), str(folder), "--output", str(output)]) == 0
  out = capsys.readouterr().out
  assert "6 of 6 clips predicted" in out and "clips with a CREMA-D label)" in out
  with open(output, newline="") as f:
    rows = list(csv.DictReader(f))
  assert [r["label"] for r in rows] == list(CREMA_D_CLASSES)
  for r in rows:
    p = [float(r[f"p_{c}"]) for c in CREMA_D_CLASSES]
    assert r["predicted"] == CREMA_D_CLASSES[int(np.argmax(p))] and r["audio_used"] == "the video's soundtrack"
  np.testing.assert_allclose([float(rows[0][f"p_{c}"]) for c in CREMA_D_CLASSES],
                             [single[c] for c in CREMA_D_CLASSES], atol=1e-4)


@needs_clips
@pytest.mark.slow
def test_silent_soundtrack_warns_and_the_audio_beside_a_single_file_is_used_as_in_a_folder(small_workdir, tmp_path,
                                                                                          capsys):
  """A RAVDESS video-only (02) file's soundtrack is digital silence: predicted with a warning that says so.
  The same video beside an audio file of its name: one file and its folder take that audio, without the
  warning, and give the same answer."""
  pytest.importorskip("facenet_pytorch")
  from avtca_jax import predict
  video_only = tmp_path / "02-01-03-01-01-02-05.mp4"
  write_with_silent_track(ACTOR05 / "01-01-03-01-01-02-05.mp4", video_only)
  assert predict.main([str(small_workdir), str(video_only)]) == 0
  captured = capsys.readouterr()
  assert captured.out.startswith("02-01-03-01-01-02-05.mp4: ")
  assert captured.out.splitlines()[0].endswith("; label happy; audio: the video's soundtrack")
  assert f"warning: {video_only}: its soundtrack is digital silence (every sample 0" in captured.err

  folder = tmp_path / "mine"
  folder.mkdir()
  shutil.copyfile(video_only, folder / "my_clip.mp4")
  shutil.copyfile(SHARED / "audio_speech_48k_actor05" / "03-01-03-01-01-02-05.flac", folder / "my_clip.flac")
  results = {}
  for what, target in (("file", folder / "my_clip.mp4"), ("folder", folder)):
    output = tmp_path / f"{what}.json"
    assert predict.main([str(small_workdir), str(target), "--output", str(output)]) == 0
    captured = capsys.readouterr()
    assert "my_clip.mp4: " in captured.out and "; audio: my_clip.flac" in captured.out
    assert "digital silence" not in captured.err
    results[what] = json.loads(output.read_text())
  assert results["file"] == results["folder"]
  assert results["file"][0]["audio"] == str(folder / "my_clip.flac") and results["file"][0]["warnings"] == []


@needs_clips
@pytest.mark.slow
def test_a_clip_shorter_than_the_frames_the_model_samples_warns(small_workdir, tmp_path, capsys):
  """A 5-frame video (with its audio file beside it): predicted, with a warning that its 5 frames stand in for
  the 15 the model samples."""
  pytest.importorskip("facenet_pytorch")
  from avtca_jax import predict
  clip = tmp_path / "short.mp4"
  write_with_silent_track(ACTOR05 / "01-01-03-01-01-02-05.mp4", clip, max_frames=5)
  shutil.copyfile(SHARED / "audio_speech_48k_actor05" / "03-01-03-01-01-02-05.flac", tmp_path / "short.flac")
  output = tmp_path / "short.json"
  assert predict.main([str(small_workdir), str(clip), "--output", str(output)]) == 0
  captured = capsys.readouterr()
  assert captured.out.splitlines()[0].startswith("short.mp4: ") and "; audio: short.flac" in captured.out
  # The 15 sample times spread over the 3.6 s window; the 0.17 s of video hold only the first (and the
  # last frame stands in for the rest).
  assert re.search(f"warning: {re.escape(str(clip))}: the video has 5 frames, fewer than the 15 the model "
                   "samples: they are repeated, so it sees [1-5] distinct frames", captured.err)
  assert "digital silence" not in captured.err
  row, = json.loads(output.read_text())
  assert len(row["warnings"]) == 1 and "has 5 frames" in row["warnings"][0]
