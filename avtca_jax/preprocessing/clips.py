"""One clip -> face crops + MFCC + labels; a whole RAVDESS folder -> cached .npz files and a report.

Workers are spawned processes that import torch, OpenCV and librosa but never tensorflow (the tfds builder
reads the .npz files in its own process). Results are cached per clip as `<out_dir>/<stem>.npz`, written
atomically, so a run that is interrupted continues where it stopped; a cached file made with other settings
is recomputed.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from avtca_jax.preprocessing import audio as audio_lib
from avtca_jax.preprocessing import faces as faces_lib
from avtca_jax.preprocessing.config import PreprocessConfig
from avtca_jax.preprocessing.names import ClipPair, Problem, find_clips, parse_name

REPORT_NAME = "report.json"
_FORMAT_VERSION = 1
DURATION_TOLERANCE_SECONDS = 0.25


def process_clip(video_path: str | os.PathLike, audio_path: str | os.PathLike | None = None,
                 config: PreprocessConfig = PreprocessConfig()) -> dict[str, Any]:
  """Face crops and MFCC of one clip.

  `audio_path` is the take's audio-only (03) file; None uses the video's own soundtrack. Returns
    face_crops (15, 224, 224, 3) uint8 RGB   (the original stored BGR: use
                                               avtca_jax.models.avtca.frames_from_uint8(x, 'bgr') for its checkpoints)
    mfcc (156, 10) float32                    (time, coefficient); .T is the original's (10, 156)
    label int 0..7 (EMOTIONS), actor int 1..24, modality int (1 audio-video, 2 video-only), stem str,
    filled_frames int,
  and, for inspection: emotion, intensity, statement, repetition, vocal_channel, take_key, audio_source,
  frame_indices (15,), face_found (15,), boxes (15, 4), frames_past_end, window_start_seconds,
  audio_seconds, video_seconds, fps, video_frames.
  Raises (naming the file): ValueError for a bad name, FileNotFoundError, audio.AudioError,
  faces.VideoError, faces.NoFaceError.
  """
  video_path = Path(video_path)
  name = parse_name(video_path)
  if name.modality == 3:
    raise ValueError(f"{video_path}: modality 03 is audio-only, not a video")
  source = Path(audio_path) if audio_path is not None else video_path
  if audio_path is None and name.modality == 2:
    raise ValueError(f"{video_path}: a video-only (02) clip has no soundtrack: give the audio file of its take "
                     f"({name.audio_stem}.wav)")
  mfcc, window_start, audio_seconds = audio_lib.audio_features(source, config.sample_rate, config.clip_seconds)
  crops = faces_lib.extract_faces(video_path, window_start, config)
  return dict(
      face_crops=crops.face_crops, mfcc=mfcc, label=name.label, actor=name.actor, modality=name.modality,
      stem=name.stem, filled_frames=crops.filled_frames,
      emotion=name.emotion, intensity=name.intensity, statement=name.statement, repetition=name.repetition,
      vocal_channel=name.vocal_channel, take_key=name.take_key,
      audio_source=str(audio_path) if audio_path is not None else "soundtrack",
      frame_indices=crops.frame_indices, face_found=crops.face_found, boxes=crops.boxes,
      frames_past_end=crops.frames_past_end, window_start_seconds=window_start, audio_seconds=audio_seconds,
      video_seconds=crops.video_frames / crops.fps, fps=crops.fps, video_frames=crops.video_frames)


# ---------------------------------------------------------------------------------------------------- cache

def cache_path(out_dir: str | os.PathLike, stem: str) -> Path:
  return Path(out_dir) / f"{stem}.npz"


def save_clip(path: str | os.PathLike, clip: dict[str, Any], config: PreprocessConfig) -> None:
  """Write atomically (temp file + rename), so an interrupted run never leaves a half-written cache file."""
  path = Path(path)
  tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
  arrays = {k: np.asarray(v) for k, v in clip.items()}
  arrays["config_json"] = np.asarray(config.to_json())
  arrays["format_version"] = np.asarray(_FORMAT_VERSION)
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def load_clip(path: str | os.PathLike) -> dict[str, Any]:
  """A cached clip as process_clip returned it (scalars as Python values), plus config_json."""
  with np.load(path, allow_pickle=False) as z:
    out = {}
    for k in z.files:
      v = z[k]
      out[k] = v.item() if v.ndim == 0 else v
  return out


def _cached_ok(path: Path, config: PreprocessConfig) -> bool:
  if not path.is_file():
    return False
  try:
    with np.load(path, allow_pickle=False) as z:
      return (str(z["config_json"]) == config.to_json() and int(z["format_version"]) == _FORMAT_VERSION
              and z["face_crops"].shape == (config.num_frames, config.crop_size, config.crop_size, 3))
  except Exception:  # unreadable (e.g. disk full during an older run): recompute
    return False


# ---------------------------------------------------------------------------------------------------- workers

def _init_worker(threads: int) -> None:
  import cv2
  import torch
  torch.set_num_threads(threads)
  cv2.setNumThreads(threads)


def _run_one(task: tuple[str, str | None, str, str]) -> dict[str, Any]:
  """Process one clip and write its cache file. Never raises: problems come back as data."""
  video, audio, out_dir, config_json = task
  config = PreprocessConfig.from_json(config_json)
  start = time.perf_counter()
  try:
    clip = process_clip(video, audio, config)
    save_clip(cache_path(out_dir, clip["stem"]), clip, config)
    return dict(video=video, audio=audio, status="written", stem=clip["stem"],
                filled_frames=int(clip["filled_frames"]), frames_past_end=int(clip["frames_past_end"]),
                audio_seconds=float(clip["audio_seconds"]), video_seconds=float(clip["video_seconds"]),
                seconds=time.perf_counter() - start, tensorflow_loaded="tensorflow" in sys.modules)
  except Exception as e:  # every failure is reported with the file and the reason; the run goes on
    reason = f"{type(e).__name__}: {e}"
    if not isinstance(e, (ValueError, OSError)):  # unexpected: keep the traceback's last lines
      reason += " | " + " / ".join(traceback.format_exc().strip().splitlines()[-3:])
    return dict(video=video, audio=audio, status="skipped", reason=reason, seconds=time.perf_counter() - start,
                tensorflow_loaded="tensorflow" in sys.modules)


def preprocess_directory(root: str | os.PathLike, out_dir: str | os.PathLike, workers: int = 1,
                         config: PreprocessConfig = PreprocessConfig(), *, modalities: Sequence[int] = (1, 2),
                         soundtrack_fallback: bool = True, progress: bool = True,
                         limit: int | None = None) -> dict[str, Any]:
  """Preprocess every clip under `root` into `<out_dir>/<stem>.npz`; returns the report (also report.json).

  `root` is a RAVDESS folder: the official zips unpacked into Actor_XX/ folders (mp4 and wav side by side),
  or the shared test layout. Clips whose cache file exists with the same settings are not recomputed.
  `workers` spawned processes share the CPU cores (torch threads = cores // workers); 0 runs in this process.
  Bad inputs never stop the run; each is in report['skipped'] as {'path', 'reason'}.
  """
  started = time.time()
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  for stale in out_dir.glob(".*.tmp.npz"):  # left by a run killed while writing
    stale.unlink(missing_ok=True)
  pairs, problems = find_clips(root, soundtrack_fallback=soundtrack_fallback, modalities=modalities)
  if limit is not None:
    pairs = pairs[:limit]
  skipped = [dict(path=p.path, reason=p.reason) for p in problems]
  # Two files with one stem would overwrite each other's cache file: keep the first, report the others.
  seen: dict[str, ClipPair] = {}
  todo: list[ClipPair] = []
  cached: list[str] = []
  for pair in pairs:
    stem = pair.name.stem
    if stem in seen:
      skipped.append(dict(path=str(pair.video), reason=f"same name as {seen[stem].video}; only that one is used"))
      continue
    seen[stem] = pair
    if _cached_ok(cache_path(out_dir, stem), config):
      cached.append(stem)
    else:
      todo.append(pair)

  tasks = [(str(p.video), None if p.audio is None else str(p.audio), str(out_dir), config.to_json()) for p in todo]
  results: list[dict[str, Any]] = []
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=len(tasks), desc="preprocess", unit="clip", dynamic_ncols=True)
  if tasks:
    if workers <= 0:
      iterator = map(_run_one, tasks)
      pool = None
    else:
      threads = max(1, (os.cpu_count() or 1) // workers)
      pool = multiprocessing.get_context("spawn").Pool(min(workers, len(tasks)), initializer=_init_worker,
                                                       initargs=(threads,))
      iterator = pool.imap_unordered(_run_one, tasks)
    try:
      for r in iterator:
        results.append(r)
        if bar is not None:
          bar.update(1)
          if r["status"] == "skipped":
            bar.write(f"skipped {r['video']}: {r['reason']}")
    except BaseException:  # Ctrl-C: stop the workers now; finished clips are cached, a rerun continues
      if pool is not None:
        pool.terminate()
      raise
    if pool is not None:
      pool.close()
      pool.join()
  if bar is not None:
    bar.close()

  results.sort(key=lambda r: r["video"])
  written = [r for r in results if r["status"] == "written"]
  skipped += [dict(path=r["video"], reason=r["reason"]) for r in results if r["status"] == "skipped"]
  filled = {r["stem"]: r["filled_frames"] for r in written if r["filled_frames"]}
  past_end = sum(r["frames_past_end"] for r in written)
  for stem in cached:  # totals cover the whole output folder, also after a resumed run
    with np.load(cache_path(out_dir, stem), allow_pickle=False) as z:
      if int(z["filled_frames"]):
        filled[stem] = int(z["filled_frames"])
      past_end += int(z["frames_past_end"])
  filled = dict(sorted(filled.items()))
  report = dict(
      input=str(Path(root).resolve()), output=str(out_dir.resolve()), config=json.loads(config.to_json()),
      started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), seconds=round(time.time() - started, 2),
      workers=workers, clips_found=len(pairs), clips_written=len(written), clips_cached=len(cached),
      clips_skipped=len(skipped), frames_filled=int(sum(filled.values())), filled_frames_by_clip=filled,
      frames_past_end=int(past_end),
      seconds_per_clip=round(float(np.mean([r["seconds"] for r in written])), 3) if written else None,
      # Audio and video of one take differ by milliseconds in RAVDESS; more suggests a wrong pairing.
      duration_mismatches=[dict(stem=r["stem"], audio_seconds=round(r["audio_seconds"], 3),
                                video_seconds=round(r["video_seconds"], 3)) for r in written
                           if abs(r["audio_seconds"] - r["video_seconds"]) > DURATION_TOLERANCE_SECONDS],
      tensorflow_loaded_in_workers=any(r.get("tensorflow_loaded") for r in results),
      written=[r["stem"] for r in written], cached=cached, skipped=skipped)
  tmp = out_dir / f".{REPORT_NAME}.tmp"
  tmp.write_text(json.dumps(report, indent=2))
  os.replace(tmp, out_dir / REPORT_NAME)
  return report


def format_report(report: dict[str, Any]) -> str:
  lines = [f"clips found {report['clips_found']}: written {report['clips_written']}, cached from an earlier run "
           f"{report['clips_cached']}, skipped {report['clips_skipped']}; frames filled from a neighbour "
           f"{report['frames_filled']}; report: {Path(report['output']) / REPORT_NAME}"]
  for s in report["skipped"]:
    lines.append(f"  skipped {s['path']}: {s['reason']}")
  return "\n".join(lines)
