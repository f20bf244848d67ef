"""The Apache Beam build against the local one: the same generated clips, through the manifest builder.

    python -m benchmarks.beam_build                     # 24 clips; JSON under benchmarks/results/
    python -m benchmarks.beam_build --clips 8 --workers 1 --json FILE

`write_clips` makes N short encoded videos with a face (re-encoded, shifted, flipped and re-lit frames of a
real CREMA-D clip from the shared data folder beside the repository, shared/data/crema_d) and a generated soundtrack per clip (a tone per class plus noise),
listed in a CSV manifest of 2 classes and N/2 speakers. Each build preprocesses every clip (decoding,
MTCNN face detection, MFCCs, JPEG encoding) and writes the shards: locally (the builder's own preprocessing
process, `--workers` processes), then on Beam's DirectRunner with direct_num_workers=1 and 2. Reported per
build: wall seconds, CPU seconds of this process and its children, clips per second; the machine's load
average before and after is in the record (the machine may be shared). Each build has its own empty
preprocessing cache, so none reuses another's work.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SOURCE_VIDEO = REPO.parent / "shared" / "data" / "crema_d" / "VideoFlash" / "1001_DFA_HAP_XX.flv"
CLASSES = ("calm", "loud")
FRAMES_PER_CLIP = 36  # 1.2 s at 30 fps: shorter than the 3.6 s window, whose tail repeats the last frame
SAMPLE_RATE = 22050


def write_clips(folder: Path, num_clips: int, source: Path = SOURCE_VIDEO) -> Path:
  """`num_clips` mp4s (320x240, 30 fps) with a face, each with its own wav, listed in folder/clips.csv
  (video, label, speaker, audio): classes alternate, two clips per speaker. Deterministic."""
  import cv2
  import soundfile
  if not source.is_file():
    raise FileNotFoundError(f"{source}: the CREMA-D clip the generated videos are made from (the shared data folder beside the repository)")
  capture = cv2.VideoCapture(str(source))
  frames = []
  while True:
    ok, frame = capture.read()
    if not ok:
      break
    frames.append(frame)
  capture.release()
  folder.mkdir(parents=True, exist_ok=True)
  rows = ["video,label,speaker,audio"]
  rng = np.random.default_rng(0)
  for i in range(num_clips):
    label, speaker = CLASSES[i % 2], f"s{i // 2:02d}"
    start = (3 * i) % (len(frames) - FRAMES_PER_CLIP)
    shift, gain = (i * 7) % 40 - 20, 0.8 + 0.05 * (i % 8)
    video = folder / f"clip_{i:03d}.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (320, 240))
    for frame in frames[start:start + FRAMES_PER_CLIP]:
      frame = np.roll(frame, shift, axis=1)
      frame = frame[:, ::-1] if i % 3 == 1 else frame
      frame = np.clip(frame.astype(np.float32) * gain, 0, 255).astype(np.uint8)
      writer.write(cv2.resize(np.ascontiguousarray(frame), (320, 240), interpolation=cv2.INTER_AREA))
    writer.release()
    t = np.arange(int(1.5 * SAMPLE_RATE)) / SAMPLE_RATE
    tone = (0.3 if label == "loud" else 0.05) * np.sin(2 * np.pi * (180 + 40 * (i % 5)) * t)
    soundfile.write(folder / f"clip_{i:03d}.wav", (tone + 0.01 * rng.standard_normal(t.size)).astype(np.float32),
                    SAMPLE_RATE)
    rows.append(f"{video.name},{label},{speaker},clip_{i:03d}.wav")
  path = folder / "clips.csv"
  path.write_text("\n".join(rows) + "\n")
  return path


def direct_runner_options(num_workers: int):
  """Beam pipeline options for the DirectRunner with `num_workers` workers (threads of this process)."""
  from apache_beam.options.pipeline_options import PipelineOptions
  return PipelineOptions(["--runner=DirectRunner", f"--direct_num_workers={num_workers}",
                          "--direct_running_mode=multi_threading"])


def build(manifest: Path, data_dir: Path, *, beam_workers: Optional[int] = None, image_size: int = 64,
          preprocess_workers: int = 1) -> Path:
  """Build the manifest's dataset into data_dir, locally (beam_workers None) or on the DirectRunner; returns
  the built folder. The preprocessing cache is data_dir/cache (each build its own)."""
  import tensorflow_datasets as tfds
  from data.manifest import manifest_dataset_builder as builder_lib
  path = Path(manifest).resolve()
  config = builder_lib.ManifestConfig(name="clips", manifest=str(path), image_size=image_size,
                                      description="generated clips")
  builder = builder_lib.Builder(config=config, data_dir=str(data_dir), preprocess_workers=preprocess_workers,
                                preprocess_cache_dir=str(Path(data_dir) / "cache"))
  download_config = tfds.download.DownloadConfig(manual_dir=str(path.parent), try_download_gcs=False)
  if beam_workers is not None:
    download_config.beam_options = direct_runner_options(beam_workers)
  builder.download_and_prepare(download_config=download_config)
  return Path(builder.data_dir)


def _cpu_seconds() -> float:
  own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(manifest: Path, scratch: Path, num_clips: int, label: str, **kwargs) -> Dict[str, object]:
  data_dir = scratch / label
  shutil.rmtree(data_dir, ignore_errors=True)
  cpu, wall = _cpu_seconds(), time.perf_counter()
  folder = build(manifest, data_dir, **kwargs)
  wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
  import tensorflow_datasets as tfds
  examples = sum(s.num_examples for s in tfds.builder_from_directory(str(folder)).info.splits.values())
  return dict(build=label, wall_s=round(wall, 2), cpu_s=round(cpu, 2), clips_per_s=round(num_clips / wall, 3),
              examples_written=examples)


def markdown(result: dict) -> str:
  """The result's table, for benchmarks/RESULTS.md (`python -m benchmarks.report`)."""
  lines = [f"{result['clips']} generated clips ({result['input']}), {result['image_size']} px crops; load average "
           f"(1 min) {result['load_average_before'][0]} before, {result['load_average_after'][0]} after.", "",
           "| build | wall s | CPU s (process + children) | clips/s | examples written |",
           "| --- | --- | --- | --- | --- |"]
  for row in result["builds"]:
    lines.append(f"| {row['build']} | {row['wall_s']} | {row['cpu_s']} | {row['clips_per_s']} | "
                 f"{row['examples_written']} |")
  if result.get("note"):
    lines += ["", result["note"]]
  return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  parser = argparse.ArgumentParser(prog="python -m benchmarks.beam_build", description=__doc__.split("\n\n")[0])
  parser.add_argument("--clips", type=int, default=24)
  parser.add_argument("--image_size", type=int, default=64)
  parser.add_argument("--workers", type=int, default=1, help="the local build's preprocessing processes")
  parser.add_argument("--json", default="", help="where to write the result (default benchmarks/results/)")
  args = parser.parse_args(argv)
  if args.clips < 6:
    parser.error("--clips must be at least 6 (two classes, three speakers: the manifest's folds need three)")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  from benchmarks import records
  result = dict(benchmark="beam_build", **records.stamp("benchmarks.beam_build", argv), clips=args.clips,
                image_size=args.image_size, input=f"mp4s made from {SOURCE_VIDEO.name}, 1.2 s, 320x240, own wav",
                load_average_before=[round(x, 2) for x in os.getloadavg()])
  from importlib import metadata
  result["versions"]["apache-beam"] = metadata.version("apache-beam")
  with tempfile.TemporaryDirectory(prefix="beam_build_") as scratch:
    scratch = Path(scratch)
    manifest = write_clips(scratch / "clips", args.clips)
    builds: List[dict] = [measure(manifest, scratch, args.clips, f"local, {args.workers} preprocessing process",
                                  image_size=args.image_size, preprocess_workers=args.workers)]
    for workers in (1, 2):
      builds.append(measure(manifest, scratch, args.clips, f"DirectRunner, direct_num_workers={workers}",
                            image_size=args.image_size, beam_workers=workers))
      print(builds[-1], flush=True)
  result["builds"] = builds
  result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
  result["note"] = ("The DirectRunner runs on this one machine: against the local build it shows Beam's own "
                    "cost (building the pipeline, passing examples between steps, one preprocessing process "
                    "started per worker thread, each loading torch and MTCNN), not the speed-up of a cluster "
                    "(Dataflow, Spark, Flink), which one machine cannot show. CPU seconds are this process's and "
                    "its finished child processes'.")
  path = records.write_json(args.json or records.default_output("beam_build"), result)
  print(markdown(result))
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
