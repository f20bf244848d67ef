"""Preprocessing speed on the real RAVDESS clips: the original-style plain pass vs ours, seconds per clip per core.

  python -m benchmarks.preprocessing_speed [--clips 15] [--threads 1] [--out results.jsonl]

Both passes do the whole clip, audio included (load the take's audio at 22050 Hz, crop/pad, 10 MFCCs):
- plain: OpenCV reads (decodes and converts) every frame up to the last needed one, MTCNN (defaults) runs on
  each of the 15 chosen full-resolution frames one at a time, crops are cut and resized (the original's
  extract_faces.py, with its frame choice [3, 10, ..., 103]);
- ours: avtca_jax.preprocessing.clips.process_clip (grab without retrieve, detection on frames downscaled to
  320 px in one batched MTCNN call, boxes mapped back, full-resolution retry for misses).
Each pass runs in this process with `--threads` torch/OpenCV threads after one warm-up clip (model load,
numba compilation). CPU seconds (process time) are the per-core figure and do not depend on other load on
the machine; wall seconds are printed too, with the load average, because a shared machine inflates them.
Prints a markdown table and one JSON line (appended to --out if given).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import records

# The RAVDESS clips: the folder $AVTCA_RAVDESS_DIR names (Actor_XX/ video and audio files, as downloaded).
DATA = Path(os.environ.get("AVTCA_RAVDESS_DIR", "") or "AVTCA_RAVDESS_DIR is not set")
ORIGINAL_INDICES = [i * 108 // 15 + 108 // 30 for i in range(15)]  # [3, 10, ..., 103] from the start


def plain_pass(video, audio, mtcnn):
  """The original's per-clip work, written plainly (with its bugs: first 3.6 s, BGR, no clipping)."""
  import cv2
  from avtca_jax.preprocessing.audio import crop_or_pad, load_audio, mfcc
  mfcc(crop_or_pad(load_audio(audio)))
  cap = cv2.VideoCapture(str(video))
  crops, found, index = [], 0, 0
  wanted = set(ORIGINAL_INDICES)
  while index <= max(ORIGINAL_INDICES):
    ok, bgr = cap.read()
    if not ok:
      break
    if index in wanted:
      rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
      boxes, _ = mtcnn.detect(rgb)
      if boxes is not None:
        x1, y1, x2, y2 = (int(v) for v in np.asarray(boxes, float)[0])
        crops.append(cv2.resize(bgr[max(y1, 0):y2, max(x1, 0):x2], (224, 224)))
        found += 1
    index += 1
  cap.release()
  return found, len([i for i in ORIGINAL_INDICES if i < index])


def our_pass(video, audio):
  from avtca_jax.preprocessing.clips import process_clip
  r = process_clip(video, audio)
  return int(r["face_found"].sum()), 15


def run(method, pairs, mtcnn=None):
  call = (lambda p: plain_pass(p.video, p.audio, mtcnn)) if method == "plain" else (lambda p: our_pass(p.video, p.audio))
  call(pairs[0])  # warm-up: model weights, numba, first decode
  cpu, wall, found, frames = [], [], 0, 0
  for p in pairs:
    c0, w0 = time.process_time(), time.perf_counter()
    f, n = call(p)
    cpu.append(time.process_time() - c0)
    wall.append(time.perf_counter() - w0)
    found += f
    frames += n
  return dict(cpu_s_per_clip=float(np.mean(cpu)), wall_s_per_clip=float(np.mean(wall)), faces_found=found,
              frames=frames, clips=len(pairs))


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--clips", type=int, default=15)
  ap.add_argument("--threads", type=int, default=1)
  ap.add_argument("--methods", default="plain,ours")
  ap.add_argument("--out", default=None)
  args = ap.parse_args(argv)
  if not DATA.is_dir():
    print(f"RAVDESS clips not found at {DATA}: set AVTCA_RAVDESS_DIR to the folder that holds them",
          file=sys.stderr)
    return 1
  import cv2
  import torch
  torch.set_num_threads(args.threads)
  cv2.setNumThreads(args.threads)
  from avtca_jax.preprocessing.names import find_clips
  pairs = find_clips(DATA)[0][: args.clips]
  load_before = os.getloadavg()[0]
  results = {}
  for method in args.methods.split(","):
    mtcnn = None
    if method == "plain":
      from facenet_pytorch import MTCNN
      mtcnn = MTCNN(device="cpu")
    results[method] = run(method, pairs, mtcnn)
  import facenet_pytorch
  import librosa
  record = dict(
      benchmark="preprocessing_speed", date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      command=records.command("benchmarks.preprocessing_speed", argv),
      machine=f"{platform.machine()}, {os.cpu_count()} cores", load_average=[round(load_before, 2), round(os.getloadavg()[0], 2)],
      threads=args.threads, versions=dict(python=platform.python_version(), torch=torch.__version__,
                                          facenet_pytorch=getattr(facenet_pytorch, "__version__", "2.5.3"),
                                          opencv=cv2.__version__, librosa=librosa.__version__),
      results=results)
  if "plain" in results and "ours" in results:
    record["speedup_cpu"] = results["plain"]["cpu_s_per_clip"] / results["ours"]["cpu_s_per_clip"]
  print("| pass | CPU s/clip (per core) | clips/s per core | wall s/clip | faces found |")
  print("| --- | --- | --- | --- | --- |")
  for m, r in results.items():
    print(f"| {m} | {r['cpu_s_per_clip']:.2f} | {1 / r['cpu_s_per_clip']:.2f} | {r['wall_s_per_clip']:.2f} | "
          f"{r['faces_found']}/{r['frames']} |")
  if "speedup_cpu" in record:
    print(f"\nspeed-up (CPU time): {record['speedup_cpu']:.1f}x; load average {record['load_average']} on "
          f"{record['machine']}")
  line = json.dumps(record)
  print(line)
  if args.out:
    with open(args.out, "a") as f:
      f.write(line + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
