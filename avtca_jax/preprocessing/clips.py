"""One clip -> face crops + MFCC + labels; a whole dataset folder -> cached .npz files and a report.

Workers are spawned processes that import torch, OpenCV and librosa but never tensorflow (the tfds builder
reads the .npz files in its own process). Results are cached per clip as `<out_dir>/<stem>.npz`, written
atomically, so a run that is interrupted continues where it stopped; a cached file made with other settings,
or from an input file that changed since (size or mtime), is recomputed.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from avtca_jax.preprocessing import audio as audio_lib
from avtca_jax.preprocessing import faces as faces_lib
from avtca_jax.preprocessing.config import PreprocessConfig
from avtca_jax.preprocessing.names import NAMINGS, VIDEO_EXTENSIONS, ClipPair, find_clips

REPORT_NAME = "report.json"
_DATASET_TITLES = {"ravdess": "RAVDESS", "crema_d": "CREMA-D"}
_FORMAT_VERSION = 2  # 2: source_json (input size and mtime) in every cache file
DURATION_TOLERANCE_SECONDS = 0.25


def clip_features(video_path: str | os.PathLike, audio_path: str | os.PathLike | None = None,
                  config: PreprocessConfig = PreprocessConfig()) -> dict[str, Any]:
  """Face crops and MFCC of any video, whatever its file name (prediction on a user's own clip).

  `audio_path` None uses the video's own soundtrack. Returns face_crops (15, 224, 224, 3) uint8 RGB,
  mfcc (156, 10) float32 and the inspection fields listed in `process_clip`. Raises (naming the file)
  FileNotFoundError, audio.AudioError (no soundtrack, zero-length or corrupt audio), faces.VideoError,
  faces.NoFaceError.
  """
  video_path = Path(video_path)
  source = Path(audio_path) if audio_path is not None else video_path
  mfcc, window_start, audio_seconds = audio_lib.audio_features(source, config.sample_rate, config.clip_seconds)
  crops = faces_lib.extract_faces(video_path, window_start, config)
  return dict(
      face_crops=crops.face_crops, mfcc=mfcc, filled_frames=crops.filled_frames,
      audio_source=str(audio_path) if audio_path is not None else "soundtrack",
      frame_indices=crops.frame_indices, face_found=crops.face_found, boxes=crops.boxes,
      frames_past_end=crops.frames_past_end, window_start_seconds=window_start, audio_seconds=audio_seconds,
      video_seconds=crops.video_frames / crops.fps, fps=crops.fps, video_frames=crops.video_frames)


def process_clip(video_path: str | os.PathLike, audio_path: str | os.PathLike | None = None,
                 config: PreprocessConfig = PreprocessConfig(), naming: str = "ravdess") -> dict[str, Any]:
  """Face crops, MFCC and labels of one RAVDESS clip (the dataset's records); `naming='crema_d'` for a
  CREMA-D clip (label 0..5, actor 1001..1091, sentence, emotion_code and level instead of RAVDESS's fields).

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
  name = NAMINGS[naming](video_path)
  if name.modality == 3:
    raise ValueError(f"{video_path}: modality 03 is audio-only, not a video")
  if audio_path is None and name.modality == 2:
    raise ValueError(f"{video_path}: a video-only (02) clip has no soundtrack: give the audio file of its take "
                     f"({name.audio_stem}.wav)")
  features = clip_features(video_path, audio_path, config)
  return dict(features, label=name.label, actor=name.actor, modality=name.modality, stem=name.stem,
              take_key=name.take_key, **name.details())


# ---------------------------------------------------------------------------------------------------- cache

def cache_path(out_dir: str | os.PathLike, stem: str) -> Path:
  return Path(out_dir) / f"{stem}.npz"


def source_fingerprint(video: str | os.PathLike, audio: str | os.PathLike | None) -> str:
  """Size and modification time (ns) of the clip's inputs, symlinks followed, as canonical JSON.

  The cache is keyed on it, not on the file name alone: a video or audio file replaced by another (a
  truncated copy, a re-encode) under the same name is processed again. Cheap (two stat calls) where a
  content hash would read 2-3 MB per clip.
  """
  def stat(path):
    info = Path(path).stat()
    return [info.st_size, info.st_mtime_ns]
  return json.dumps({"video": stat(video), "audio": None if audio is None else stat(audio)})


def save_clip(path: str | os.PathLike, clip: dict[str, Any], config: PreprocessConfig, source: str = "") -> None:
  """Write atomically (temp file + rename), so an interrupted run never leaves a half-written cache file."""
  path = Path(path)
  tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
  arrays = {k: np.asarray(v) for k, v in clip.items()}
  arrays["config_json"] = np.asarray(config.to_json())
  arrays["source_json"] = np.asarray(source)
  arrays["format_version"] = np.asarray(_FORMAT_VERSION)
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def load_clip(path: str | os.PathLike) -> dict[str, Any]:
  """A cached clip as process_clip returned it (scalars as Python values), plus config_json and source_json."""
  with np.load(path, allow_pickle=False) as z:
    out = {}
    for k in z.files:
      v = z[k]
      out[k] = v.item() if v.ndim == 0 else v
  return out


def _cached_ok(path: Path, config: PreprocessConfig, source: str) -> bool:
  """The cache file exists, was made with these settings from inputs of the same size and mtime."""
  if not path.is_file():
    return False
  try:
    with np.load(path, allow_pickle=False) as z:
      return (int(z["format_version"]) == _FORMAT_VERSION and str(z["config_json"]) == config.to_json()
              and str(z["source_json"]) == source
              and z["face_crops"].shape == (config.num_frames, config.crop_size, config.crop_size, 3))
  except Exception:  # unreadable, or written by an older version without source_json: recompute
    return False


# ---------------------------------------------------------------------------------------------------- workers

def _init_worker() -> None:
  """One torch and OpenCV thread per worker process: workers default to one per core, and more threads per
  worker only contend for the same cores and make each clip slower."""
  import cv2
  import torch
  torch.set_num_threads(1)
  cv2.setNumThreads(1)


def failure_reason(error: Exception) -> str:
  """`Type: message` of a clip's failure; an unexpected one (not ValueError or OSError) keeps the last lines
  of its traceback. Call it inside the `except` block."""
  reason = f"{type(error).__name__}: {error}"
  if not isinstance(error, (ValueError, OSError)):  # unexpected: keep the traceback's last lines
    reason += " | " + " / ".join(traceback.format_exc().strip().splitlines()[-3:])
  return reason


def _run_one(task: tuple[str, str | None, str, str, str, str]) -> dict[str, Any]:
  """Process one clip and write its cache file. Never raises: problems come back as data."""
  video, audio, out_dir, config_json, source, naming = task
  config = PreprocessConfig.from_json(config_json)
  start = time.perf_counter()
  try:
    clip = process_clip(video, audio, config, naming)
    save_clip(cache_path(out_dir, clip["stem"]), clip, config, source)
    return dict(video=video, audio=audio, status="written", stem=clip["stem"],
                filled_frames=int(clip["filled_frames"]), frames_past_end=int(clip["frames_past_end"]),
                audio_seconds=float(clip["audio_seconds"]), video_seconds=float(clip["video_seconds"]),
                seconds=time.perf_counter() - start, tensorflow_loaded="tensorflow" in sys.modules)
  except Exception as e:  # every failure is reported with the file and the reason; the run goes on
    return dict(video=video, audio=audio, status="skipped", reason=failure_reason(e),
                seconds=time.perf_counter() - start, tensorflow_loaded="tensorflow" in sys.modules)


def progress_bar(total: int):
  from tqdm import tqdm
  return tqdm(total=total, desc="preprocess", unit="clip", dynamic_ncols=True)


def run_tasks(run_one: Callable[[Any], dict[str, Any]], tasks: Sequence[Any], processes: int, bar,
              skip_line: Callable[[dict[str, Any]], str]) -> list[dict[str, Any]]:
  """`run_one` of every task (results in completion order), in `processes` spawned workers (0: in this
  process). `bar` (or None) advances per result, shows `skip_line(result)` for a skipped clip, and is closed
  at the end."""
  pool = (multiprocessing.get_context("spawn").Pool(processes, initializer=_init_worker) if processes > 0
          else None)
  results: list[dict[str, Any]] = []
  try:
    for r in (pool.imap_unordered(run_one, tasks) if pool is not None else map(run_one, tasks)):
      results.append(r)
      if bar is not None:
        bar.update(1)
        if r["status"] == "skipped":
          bar.write(skip_line(r))
  except BaseException:  # Ctrl-C: stop the workers now; finished clips are cached, a rerun continues
    if pool is not None:
      pool.terminate()
    raise
  if pool is not None:
    pool.close()
    pool.join()
  if bar is not None:
    bar.close()
  return results


def cached_frame_counts(out_dir: str | os.PathLike, stems: Sequence[str]) -> tuple[dict[str, int], int]:
  """From the cache files of `stems`: {stem: filled_frames} (clips with any) and the sum of frames_past_end."""
  filled, past_end = {}, 0
  for stem in stems:
    with np.load(cache_path(out_dir, stem), allow_pickle=False) as z:
      if int(z["filled_frames"]):
        filled[stem] = int(z["filled_frames"])
      past_end += int(z["frames_past_end"])
  return filled, past_end


def write_report(out_dir: Path, report: dict[str, Any], indent: int = 2) -> None:
  """`<out_dir>/report.json`, written atomically (temp file + rename)."""
  tmp = out_dir / f".{REPORT_NAME}.tmp"
  tmp.write_text(json.dumps(report, indent=indent))
  os.replace(tmp, out_dir / REPORT_NAME)


def _is_video(path: str) -> bool:
  return path.lower().endswith(VIDEO_EXTENSIONS)


def _find_inputs(root, out_dir: Path, *, modalities, soundtrack_fallback: bool, limit: int | None, audio_root,
                 naming: str) -> tuple[list[ClipPair], list[dict[str, str]], list[dict[str, str]]]:
  """(clip pairs, rejected videos, ignored other files) under `root`; raises on a bad argument, before the
  output folder is created."""
  pairs, problems = find_clips(root, soundtrack_fallback=soundtrack_fallback, modalities=modalities,
                               audio_root=audio_root, naming=naming)
  if out_dir.exists() and not out_dir.is_dir():
    raise NotADirectoryError(f"{out_dir}: --output exists and is not a folder; choose a folder")
  if limit is not None:
    pairs = pairs[:limit]
  skipped = [dict(path=p.path, reason=p.reason) for p in problems if _is_video(p.path)]
  ignored = [dict(path=p.path, reason=p.reason) for p in problems if not _is_video(p.path)]
  if not pairs:
    where = f"{root}" + (f" and {audio_root}" if audio_root else "")
    hint = ("point --input at the folder holding the Actor_XX/ folders of .mp4 files" if naming == "ravdess" else
            "point it at the CREMA-D folder holding VideoFlash/ (and AudioWAV/)")
    raise FileNotFoundError(
        f"{where}: no usable {_DATASET_TITLES.get(naming, naming)} clip found ({len(skipped)} videos rejected, "
        f"{len(ignored)} other files ignored): {hint}" + (f"; first problem: {problems[0]}" if problems else ""))
  return pairs, skipped, ignored


def _plan(pairs: Sequence[ClipPair], out_dir: Path, config: PreprocessConfig,
          skipped: list[dict[str, str]]) -> tuple[list[tuple[ClipPair, str]], list[str]]:
  """(clips to process with their source fingerprint, stems already cached). Two files with one stem would
  overwrite each other's cache file: the first is kept, the others are added to `skipped`."""
  seen: dict[str, ClipPair] = {}
  todo: list[tuple[ClipPair, str]] = []
  cached: list[str] = []
  for pair in pairs:
    stem = pair.name.stem
    if stem in seen:
      skipped.append(dict(path=str(pair.video), reason=f"same name as {seen[stem].video}; only that one is used"))
      continue
    seen[stem] = pair
    source = source_fingerprint(pair.video, pair.audio)
    if _cached_ok(cache_path(out_dir, stem), config, source):
      cached.append(stem)
    else:
      todo.append((pair, source))
  return todo, cached


def _report(results: list[dict[str, Any]], cached: list[str], skipped: list[dict[str, str]],
            ignored: list[dict[str, str]], *, root, audio_root, out_dir: Path, config: PreprocessConfig,
            workers: int, started: float) -> dict[str, Any]:
  """The report of the output folder: this run's results plus the clips cached by earlier runs."""
  results.sort(key=lambda r: r["video"])
  written = [r for r in results if r["status"] == "written"]
  skipped += [dict(path=r["video"], reason=r["reason"]) for r in results if r["status"] == "skipped"]
  filled = {r["stem"]: r["filled_frames"] for r in written if r["filled_frames"]}
  past_end = sum(r["frames_past_end"] for r in written)
  cached_filled, cached_past_end = cached_frame_counts(out_dir, cached)  # totals cover the whole output folder
  filled = dict(sorted({**filled, **cached_filled}.items()))
  past_end += cached_past_end
  seconds = round(time.time() - started, 2)
  this_run = dict(started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), seconds=seconds,
                  input=str(Path(root).resolve()), written=len(written), cached=len(cached), skipped=len(skipped))
  runs = _previous_runs(out_dir / REPORT_NAME) + [this_run]
  return dict(
      input=str(Path(root).resolve()), audio_input=str(Path(audio_root).resolve()) if audio_root else None,
      output=str(out_dir.resolve()), config=json.loads(config.to_json()), started=this_run["started"],
      seconds=seconds, workers=workers, clips_found=len(written) + len(cached) + len(skipped),
      clips_written=len(written), clips_cached=len(cached), clips_skipped=len(skipped),
      files_ignored=len(ignored), frames_filled=int(sum(filled.values())), filled_frames_by_clip=filled,
      frames_past_end=int(past_end),
      seconds_per_clip=round(float(np.mean([r["seconds"] for r in written])), 3) if written else None,
      # Audio and video of one take differ by milliseconds in RAVDESS; more suggests a wrong pairing.
      duration_mismatches=[dict(stem=r["stem"], audio_seconds=round(r["audio_seconds"], 3),
                                video_seconds=round(r["video_seconds"], 3)) for r in written
                           if abs(r["audio_seconds"] - r["video_seconds"]) > DURATION_TOLERANCE_SECONDS],
      tensorflow_loaded_in_workers=any(r.get("tensorflow_loaded") for r in results),
      written=[r["stem"] for r in written], cached=cached, skipped=skipped, ignored_files=ignored, runs=runs)


def preprocess_directory(root: str | os.PathLike, out_dir: str | os.PathLike, workers: int = 1,
                         config: PreprocessConfig = PreprocessConfig(), *, modalities: Sequence[int] = (1, 2),
                         soundtrack_fallback: bool = True, progress: bool = True, limit: int | None = None,
                         audio_root: str | os.PathLike | None = None, naming: str = "ravdess") -> dict[str, Any]:
  """Preprocess every clip under `root` into `<out_dir>/<stem>.npz`; returns the report (also report.json).

  `root` is a RAVDESS folder: the official zips unpacked into Actor_XX/ folders (mp4 and wav side by side),
  or the shared test layout (with naming='crema_d': a CREMA-D folder, VideoFlash/ and AudioWAV/);
  `audio_root` a separate folder with the audio files (searched as well).
  Symlinked files and folders are followed. Clips whose cache file exists with the same settings and the
  same input files (size and mtime) are not recomputed. `workers` spawned processes with one torch thread
  each; 0 runs in this process. Bad inputs never stop the run; each is in report['skipped'] as
  {'path', 'reason'}.

  The report describes the output folder for this input, whatever earlier runs did: every video found is
  either written by this run, cached from an earlier one, or skipped
  (clips_found == clips_written + clips_cached + clips_skipped); audio files that cannot be used are listed
  apart in 'ignored_files'. 'runs' keeps one line per run into this folder (report.json is rewritten, the
  history is carried over).
  """
  started = time.time()
  out_dir = Path(out_dir)
  pairs, skipped, ignored = _find_inputs(root, out_dir, modalities=modalities, soundtrack_fallback=soundtrack_fallback,
                                         limit=limit, audio_root=audio_root, naming=naming)
  out_dir.mkdir(parents=True, exist_ok=True)
  for stale in out_dir.glob(".*.tmp.npz"):  # left by a run killed while writing
    stale.unlink(missing_ok=True)
  todo, cached = _plan(pairs, out_dir, config, skipped)
  tasks = [(str(p.video), None if p.audio is None else str(p.audio), str(out_dir), config.to_json(), source,
            naming) for p, source in todo]
  results = run_tasks(_run_one, tasks, 0 if workers <= 0 else min(workers, len(tasks)),
                      progress_bar(len(tasks)) if progress else None,
                      lambda r: f"skipped {r['video']}: {r['reason']}")
  report = _report(results, cached, skipped, ignored, root=root, audio_root=audio_root, out_dir=out_dir,
                   config=config, workers=workers, started=started)
  write_report(out_dir, report)
  return report


def _previous_runs(report_path: Path) -> list[dict[str, Any]]:
  try:
    return list(json.loads(report_path.read_text()).get("runs", []))
  except (OSError, ValueError):  # no report yet, or an unreadable one: start the history here
    return []


def format_report(report: dict[str, Any]) -> str:
  lines = [f"clips found {report['clips_found']} = written {report['clips_written']} + cached from an earlier "
           f"run {report['clips_cached']} + skipped {report['clips_skipped']}; other files ignored "
           f"{report['files_ignored']}; frames filled from a neighbour {report['frames_filled']}; report: "
           f"{Path(report['output']) / REPORT_NAME}"]
  for s in report["skipped"]:
    lines.append(f"  skipped {s['path']}: {s['reason']}")
  for s in report["ignored_files"]:
    lines.append(f"  ignored {s['path']}: {s['reason']}")
  return "\n".join(lines)
