"""RAVDESS preprocessing: names and pairing, audio (MFCC), faces (MTCNN crops), clips and directory runs.

Public API (stable; the tfds builder in data/ builds on it):
  names:  EMOTIONS, RavdessName, parse_name(path), ClipPair, Problem,
          pair_videos_with_audio(videos, audios, *, soundtrack_fallback=True, modalities=(1, 2)),
          find_clips(root, *, soundtrack_fallback=True, modalities=(1, 2))
  audio:  load_audio(path, sr=22050), crop_or_pad(y, seconds=3.6, sr=22050), mfcc(y, sr=22050) -> (156, 10),
          audio_features(path, sr, seconds) -> (mfcc, window_start_seconds, audio_seconds), AudioError
  faces:  extract_faces(video_path, window_start=0.0, config) -> FaceCrops, frame_indices(window_start, fps,
          config), detect_largest_faces(frames, config), VideoError, NoFaceError
  clips:  process_clip(video_path, audio_path=None, config) -> dict,
          preprocess_directory(root, out_dir, workers=1, config, ...) -> report dict,
          load_clip(npz_path) -> dict
  config: PreprocessConfig
CLI: python -m avtca_jax.preprocess --input DIR --output DIR --workers N

Nothing here imports tensorflow; importing this package imports neither torch nor librosa (the submodules
that need them import them on first use).
"""

from avtca_jax.preprocessing.config import PreprocessConfig
from avtca_jax.preprocessing.names import (EMOTIONS, ClipPair, Problem, RavdessName, find_clips,
                                           pair_videos_with_audio, parse_name)

__all__ = ["EMOTIONS", "ClipPair", "PreprocessConfig", "Problem", "RavdessName", "find_clips",
           "pair_videos_with_audio", "parse_name"]
