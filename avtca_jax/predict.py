"""Emotion probabilities for one clip: `python -m avtca_jax.predict CHECKPOINT clip.mp4 [clip.wav]`.

CHECKPOINT is a training workdir (its best-validation checkpoint, else the latest) or a checkpoint step
directory inside one (WORKDIR/checkpoints/STEP). The clip goes through the same preprocessing as the
dataset (avtca_jax.preprocessing.clips.process_clip: MTCNN face crops over the 3.6 s window and the
original's MFCCs); without a .wav the video's own soundtrack is used. An audio-only run needs only audio:
`python -m avtca_jax.predict CHECKPOINT clip.wav`.

This module never imports TensorFlow (face detection uses torch, which must not follow TensorFlow).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from avtca_jax.metrics import EMOTIONS


def _workdir_and_checkpoint(path: str):
  path = os.path.abspath(path)
  if os.path.exists(os.path.join(path, "config.json")):
    from avtca_jax import evaluate
    return path, evaluate.default_checkpoint(path)
  workdir = os.path.dirname(os.path.dirname(path))  # WORKDIR/checkpoints/STEP or WORKDIR/best/STEP
  if os.path.isdir(os.path.join(path, "state")) and os.path.exists(os.path.join(workdir, "config.json")):
    return workdir, path
  raise FileNotFoundError(f"{path} is neither a training workdir nor a checkpoint step directory inside one")


def preprocess(video_or_audio: str, audio: str | None = None, audio_only: bool = False):
  """(mfcc (156, 10), face crops (15, 224, 224, 3) uint8 RGB or None)."""
  if audio_only:
    from avtca_jax.preprocessing import audio as audio_lib
    mfcc = audio_lib.audio_features(audio or video_or_audio)[0]
    return np.asarray(mfcc, np.float32), None
  try:  # torch (face detection) must be imported before anything that imports tensorflow
    import torch  # noqa: F401
  except ImportError:
    pass
  from avtca_jax.preprocessing.clips import process_clip
  clip = process_clip(video_or_audio, audio)
  return np.asarray(clip["mfcc"], np.float32), np.asarray(clip["face_crops"], np.uint8)


def normalize_like_training(workdir: str, config, mfcc: np.ndarray) -> np.ndarray:
  """The MFCC normalisation the run was trained with (`config.data.normalize`), applied to one clip."""
  from avtca_jax import audio_data, data_sources
  mode = config.data.get("normalize", "none") if config.data.source == "audio_folder" else "none"
  if mode == "speaker":
    raise ValueError(f"the run used data.normalize={mode!r}, which needs all clips of the speaker: "
                     "predict supports 'none', 'train' and 'clip'")
  stats = None
  if mode == "train":
    path = os.path.join(workdir, data_sources.NORMALIZATION_FILE)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} is missing: the run used data.normalize='train' and its statistics "
                              "are needed to normalise a new clip")
    with open(path) as f:
      stats = json.load(f)
  return audio_data.normalize_clips(mfcc, mode, stats)


def predict_probabilities(checkpoint: str, video_or_audio: str, audio: str | None = None):
  """(probabilities (8,), config) for one clip."""
  workdir, checkpoint_dir = _workdir_and_checkpoint(checkpoint)
  from avtca_jax import evaluate
  config = evaluate.load_config(workdir)
  audio_only = config.model == "audio"
  mfcc, crops = preprocess(video_or_audio, audio, audio_only)
  mfcc = normalize_like_training(workdir, config, mfcc)

  import jax
  from avtca_jax import train as train_lib
  model = train_lib.create_model(config)
  state = evaluate.load_state(checkpoint_dir, train_lib.create_mesh())
  batch = {"mfcc": mfcc[None], "label": np.zeros((1,), np.int32)}
  if crops is not None:
    batch["frames"] = crops[None]

  @jax.jit
  def forward(state, batch):
    mfcc, frames, _ = train_lib.model_inputs(config, batch)
    logits = model.apply({"params": state.params, "batch_stats": state.batch_stats}, mfcc, frames, train=False)
    return jax.nn.softmax(logits)[0]

  params_on_one_device = jax.device_put(state, jax.devices()[0])
  return np.asarray(forward(params_on_one_device, batch)), config


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m avtca_jax.predict", description=__doc__.split("\n\n")[0])
  parser.add_argument("checkpoint", help="training workdir or checkpoint step directory")
  parser.add_argument("clip", help="video (.mp4) of the clip; or the audio file for an audio-only run")
  parser.add_argument("audio", nargs="?", default=None, help="audio (.wav/.flac) of the same take (optional)")
  args = parser.parse_args(argv)
  try:
    probabilities, config = predict_probabilities(args.checkpoint, args.clip, args.audio)
  except (FileNotFoundError, ValueError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 1
  order = np.argsort(-probabilities)
  print(f"{os.path.basename(args.clip)}: {EMOTIONS[order[0]]} ({probabilities[order[0]]:.3f})")
  for i in range(len(probabilities)):
    print(f"  {EMOTIONS[i]:<10} {probabilities[i]:.4f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
