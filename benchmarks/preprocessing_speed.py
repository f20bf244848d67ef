"""Preprocessing speed on real clips, seconds per clip per core: RAVDESS (the original-style plain pass vs
ours) or CREMA-D (ours, as its builder runs it).

  python -m benchmarks.preprocessing_speed [--clips 15] [--threads 1] [--out results.jsonl] [--json FILE]
  python -m benchmarks.preprocessing_speed --dataset=crema_d --data_dir=<CREMA-D folder> --threads 1 \
      --json=benchmarks/results/preprocessing_speed_crema_d.json

RAVDESS (the default; clips under --data_dir, else $AVTCA_RAVDESS_DIR): both passes do the whole clip, audio
included (load the take's audio at 22050 Hz, crop/pad, 10 MFCCs):
- plain: OpenCV reads (decodes and converts) every frame up to the last needed one, MTCNN (defaults) runs on
  each of the 15 chosen full-resolution frames one at a time, crops are cut and resized (the original's
  extract_faces.py, with its frame choice [3, 10, ..., 103]);
- ours: avtca_jax.preprocessing.clips.process_clip (grab without retrieve, detection on frames downscaled to
  320 px in one batched MTCNN call, boxes mapped back, full-resolution retry for misses).
CREMA-D (`--dataset=crema_d`, a folder holding VideoFlash/*.flv and, when present, AudioWAV/*.wav): the clips
its builder finds (`find_clips(naming='crema_d')`, audio-video clips only) through the call its builder makes,
`process_clip(video, audio, PreprocessConfig(crop_size=224), naming='crema_d')` (the `av` config's 224 px
crops): FLV (On2 VP6) decode, faces, and the MFCCs of AudioWAV's take or, without it, of the flv's own MP3
soundtrack. The plain pass is the original's RAVDESS procedure (its frame indices assume 3.6 s RAVDESS clips),
so it runs on RAVDESS only.
Each pass runs in this process with `--threads` torch/OpenCV threads after one warm-up clip (model load,
numba compilation). CPU seconds (process time) are the per-core figure and do not depend on other load on
the machine; wall seconds are printed too, with the load average, because a shared machine inflates them.
Prints a markdown table and one JSON line (appended to --out if given); --json writes the same result as one
JSON file with its date, machine, versions and command (benchmarks/records.py), which `python -m
benchmarks.report` renders into benchmarks/RESULTS.md from benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import records

# The RAVDESS clips: the folder $AVTCA_RAVDESS_DIR names (Actor_XX/ video and audio files, as downloaded).
DATA = Path(os.environ.get("AVTCA_RAVDESS_DIR", "") or "AVTCA_RAVDESS_DIR is not set")
DATASETS = ("ravdess", "crema_d")
CREMA_D_CROP_SIZE = 224  # the CREMA-D builder's `av` config (its image_size)
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


def our_pass(video, audio, dataset="ravdess"):
  """process_clip as the dataset's builder calls it: (faces found, frames, the audio it used)."""
  from avtca_jax.preprocessing.clips import process_clip
  if dataset == "crema_d":
    from avtca_jax.preprocessing.config import PreprocessConfig
    r = process_clip(video, audio, PreprocessConfig(crop_size=CREMA_D_CROP_SIZE), naming="crema_d")
  else:
    r = process_clip(video, audio)
  return int(r["face_found"].sum()), len(r["face_found"]), r["audio_source"]


def run(method, pairs, mtcnn=None, dataset="ravdess"):
  call = ((lambda p: plain_pass(p.video, p.audio, mtcnn) + ("",)) if method == "plain" else
          (lambda p: our_pass(p.video, p.audio, dataset)))
  call(pairs[0])  # warm-up: model weights, numba, first decode
  cpu, wall, found, frames, soundtracks = [], [], 0, 0, 0
  for p in pairs:
    c0, w0 = time.process_time(), time.perf_counter()
    f, n, audio_source = call(p)
    cpu.append(time.process_time() - c0)
    wall.append(time.perf_counter() - w0)
    found += f
    frames += n
    soundtracks += audio_source == "soundtrack"
  result = dict(cpu_s_per_clip=float(np.mean(cpu)), wall_s_per_clip=float(np.mean(wall)), faces_found=found,
                frames=frames, clips=len(pairs), cpu_s_by_clip=[round(c, 3) for c in cpu])
  if method != "plain":
    result["audio_from_soundtrack"] = soundtracks  # clips whose MFCCs came from the video's own soundtrack
  return result


def markdown(record) -> str:
  """The result table (what the run prints and `benchmarks.report` puts in RESULTS.md)."""
  dataset = record.get("dataset", "ravdess")
  lines = ["| dataset | pass | clips | CPU s/clip (per core) | clips/s per core | wall s/clip | faces found "
           "| audio from the video's soundtrack |", "| --- " * 8 + "|"]
  for m, r in record["results"].items():
    soundtrack = f"{r['audio_from_soundtrack']}/{r['clips']}" if "audio_from_soundtrack" in r else "-"
    lines.append(f"| {dataset} | {m} | {r['clips']} | {r['cpu_s_per_clip']:.2f} | {1 / r['cpu_s_per_clip']:.2f} "
                 f"| {r['wall_s_per_clip']:.2f} | {r['faces_found']}/{r['frames']} | {soundtrack} |")
  notes = [f"{record['threads']} torch/OpenCV thread(s), after one warm-up clip; CPU time is the per-core figure "
           "(other load does not inflate it), wall time is not",
           f"load average {record['load_average'][0]} before, {record['load_average'][1]} after"]
  if "speedup_cpu" in record:
    notes.insert(0, f"speed-up (CPU time): {record['speedup_cpu']:.1f}x")
  if dataset == "crema_d":
    notes.append(f"crops {CREMA_D_CROP_SIZE} px as the builder's `av` config; input: {record.get('input', '')}")
  return "\n".join(lines) + "\n\n" + "; ".join(notes) + "."


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--dataset", choices=DATASETS, default="ravdess",
                  help="ravdess (plain and ours) or crema_d (ours, as the CREMA-D builder runs it)")
  ap.add_argument("--data_dir", default=None,
                  help="the dataset's folder (RAVDESS: default $AVTCA_RAVDESS_DIR; CREMA-D: required, the folder "
                       "holding VideoFlash/)")
  ap.add_argument("--clips", type=int, default=15)
  ap.add_argument("--threads", type=int, default=1)
  ap.add_argument("--methods", default=None, help="comma list of plain, ours (default: plain,ours for RAVDESS, "
                                                  "ours for CREMA-D)")
  ap.add_argument("--out", default=None, help="append the result as one JSON line to this file")
  ap.add_argument("--json", default=None, help="write the result as one JSON file (e.g. under "
                                               "benchmarks/results/, for benchmarks.report)")
  args = ap.parse_args(argv)
  methods = (args.methods or ("plain,ours" if args.dataset == "ravdess" else "ours")).split(",")
  if args.dataset == "crema_d" and "plain" in methods:
    print("the plain pass is the original's RAVDESS procedure (frame indices of 3.6 s RAVDESS clips): "
          "use --methods=ours with --dataset=crema_d", file=sys.stderr)
    return 1
  data = Path(args.data_dir) if args.data_dir else (DATA if args.dataset == "ravdess" else None)
  if data is None or not data.is_dir():
    where = ("set AVTCA_RAVDESS_DIR (or --data_dir) to the folder that holds them" if args.dataset == "ravdess"
             else "give --data_dir, the CREMA-D folder holding VideoFlash/")
    print(f"{args.dataset} clips not found at {data}: {where}", file=sys.stderr)
    return 1
  import cv2
  import torch
  torch.set_num_threads(args.threads)
  cv2.setNumThreads(args.threads)
  from avtca_jax.preprocessing.names import find_clips
  if args.dataset == "crema_d":  # as the CREMA-D builder finds them (tfds_builder.preprocessed_records)
    pairs = find_clips(data, naming="crema_d", modalities=(1,))[0][: args.clips]
  else:
    pairs = find_clips(data)[0][: args.clips]
  if not pairs:
    print(f"no usable {args.dataset} clip under {data}", file=sys.stderr)
    return 1
  load_before = os.getloadavg()[0]
  results = {}
  for method in methods:
    mtcnn = None
    if method == "plain":
      from facenet_pytorch import MTCNN
      mtcnn = MTCNN(device="cpu")
    results[method] = run(method, pairs, mtcnn, args.dataset)
  from importlib import metadata
  import librosa
  stamp = records.stamp("benchmarks.preprocessing_speed", argv)
  stamp["versions"].update(facenet_pytorch=metadata.version("facenet-pytorch"), opencv=cv2.__version__,
                           librosa=librosa.__version__)
  record = dict(benchmark="preprocessing_speed", **stamp, dataset=args.dataset,
                input=(f"{len(pairs)} clips: " + ", ".join(p.video.name for p in pairs) if args.dataset == "crema_d"
                       else f"{len(pairs)} clips"),
                load_average=[round(load_before, 2), round(os.getloadavg()[0], 2)], threads=args.threads,
                results=results)
  if "plain" in results and "ours" in results:
    record["speedup_cpu"] = results["plain"]["cpu_s_per_clip"] / results["ours"]["cpu_s_per_clip"]
  print(markdown(record))
  line = json.dumps(record)
  print(line)
  if args.out:
    with open(args.out, "a") as f:
      f.write(line + "\n")
  if args.json:
    records.write_json(args.json, record)
  return 0


if __name__ == "__main__":
  sys.exit(main())
