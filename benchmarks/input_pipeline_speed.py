"""Input pipeline speed: clips/s from the builder's TFRecord shards, JPEG vs raw frames, device-side augment.

    python -m benchmarks.input_pipeline_speed --manual_dir $AVTCA_RAVDESS_DIR --work_dir DIR
    python -m benchmarks.input_pipeline_speed            # no RAVDESS: 224 px generated clips instead

Measures, with the training settings (shuffle, batch 8, deterministic order):
1. per frame: raw bytes vs JPEG (quality data.ravdess JPEG_QUALITY): stored size, cv2 encode and TF decode
   time, PSNR;
2. clips/s of `create_dataset` over the same clips stored as JPEG and as raw bytes, with and without host
   augmentation (flip + rotation in tf.data), and with the decoded split cached in host memory;
3. the cost of the same augmentation done on the device inside jit (`augment.random_flip_and_rotate`, and
   the whole device-side input transform: uint8 -> float, flip + rotation, softhard) per batch of 8.
Prints a markdown table and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

from benchmarks import records


def _build(work_dir: Path, encoding: str, manual_dir: str | None, cache_dir: Path):
  import tensorflow_datasets as tfds
  from data.ravdess import Builder, RavdessConfig
  if manual_dir:
    config = RavdessConfig(name=f"bench_av_{encoding}", frame_encoding=encoding)
  else:
    config = RavdessConfig(name=f"bench_generated224_{encoding}", source="generated", image_size=224,
                           clips_per_class=1, frame_encoding=encoding)
  builder = Builder(config=config, data_dir=str(work_dir / "tfds"), preprocess_cache_dir=str(cache_dir))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, try_download_gcs=False))
  return builder


def _frame_codec(frames: np.ndarray, repeats: int = 3):
  import cv2
  import tensorflow as tf
  from data.ravdess.ravdess_dataset_builder import JPEG_QUALITY
  frames = frames.reshape((-1,) + frames.shape[-3:])
  start = time.perf_counter()
  for _ in range(repeats):
    encoded = [cv2.imencode(".jpg", f[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1].tobytes()
               for f in frames]
  encode_ms = (time.perf_counter() - start) / repeats / len(frames) * 1e3
  tensors = [tf.constant(e) for e in encoded]
  tf.io.decode_jpeg(tensors[0])
  start = time.perf_counter()
  for _ in range(repeats):
    decoded = [tf.io.decode_jpeg(t, channels=3).numpy() for t in tensors]
  decode_ms = (time.perf_counter() - start) / repeats / len(frames) * 1e3
  mse = np.mean([(d.astype(np.float64) - f) ** 2 for d, f in zip(decoded, frames)])
  raw = [tf.constant(f.tobytes()) for f in frames]
  start = time.perf_counter()
  for _ in range(repeats):
    [tf.io.decode_raw(r, tf.uint8).numpy() for r in raw]
  raw_ms = (time.perf_counter() - start) / repeats / len(frames) * 1e3
  return dict(frames=len(frames), raw_bytes=int(frames[0].nbytes), jpeg_quality=JPEG_QUALITY,
              jpeg_bytes_mean=float(np.mean([len(e) for e in encoded])), jpeg_encode_ms=encode_ms,
              jpeg_decode_ms=decode_ms, raw_decode_ms=raw_ms, psnr_db=float(10 * np.log10(255 ** 2 / mse)))


def _pipeline_rate(data_path, *, host_augment: bool, cache: bool, batches: int, warmup: int,
                   deterministic: bool = True):
  from avtca_jax import input_pipeline
  ds = input_pipeline.create_dataset(str(data_path), "all", batch_size=8, train=True, seed=0,
                                     host_augment=host_augment, cache=cache, deterministic=deterministic)
  it = ds.as_numpy_iterator()
  for _ in range(warmup):
    next(it)
  start, start_cpu = time.perf_counter(), time.process_time()
  for _ in range(batches):
    next(it)
  seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
  # Clips per CPU second (every thread of this process: tf.data's readers, decoders, batching) = clips/s one
  # core delivers when the pipeline has it to itself. It holds on a busy machine, where wall-clock rates
  # measure the other jobs too; it leaves out the page cache's and the kernel's work for other processes.
  return batches * 8 / seconds, batches * 8 / cpu_seconds


def _device_augment_cost(image_size: int, repeats: int):
  import jax
  from avtca_jax import compilation_cache
  compilation_cache.enable()  # $AVTCA_COMPILATION_CACHE=none: cold compiles
  import jax.numpy as jnp
  from avtca_jax import augment
  from avtca_jax.models.avtca import frames_from_uint8

  frames = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 15, image_size, image_size, 3), np.uint8))
  mfcc = jnp.zeros((8, 156, 10), jnp.float32)
  labels = jnp.zeros((8,), jnp.int32)

  @jax.jit
  def flip_rotate(key, frames):
    return augment.random_flip_and_rotate(key, frames)

  @jax.jit
  def full(key, mfcc, frames, labels):
    k1, k2 = jax.random.split(key)
    x = frames_from_uint8(augment.random_flip_and_rotate(k1, frames), "bgr")
    return augment.softhard(k2, mfcc, x, labels)[:3]

  out = {}
  for name, fn, args in (("flip_rotate_ms", flip_rotate, (frames,)), ("uint8_to_float_flip_rotate_softhard_ms",
                                                                       full, (mfcc, frames, labels))):
    jax.block_until_ready(fn(jax.random.key(0), *args))
    start = time.perf_counter()
    for i in range(repeats):
      jax.block_until_ready(fn(jax.random.key(i), *args))
    out[name] = (time.perf_counter() - start) / repeats * 1e3
  out["device"] = str(jax.devices()[0].device_kind)
  out["platform"] = jax.default_backend()
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--manual_dir", default=None, help="RAVDESS folder (e.g. $AVTCA_RAVDESS_DIR); none: generated clips")
  p.add_argument("--work_dir", default=os.path.join(tempfile.gettempdir(), "avtca_input_bench"))
  p.add_argument("--preprocess_cache_dir", default=None)
  p.add_argument("--batches", type=int, default=30)
  p.add_argument("--warmup", type=int, default=5)
  p.add_argument("--out", default="runs/benchmarks/input_pipeline_speed.json")
  args = p.parse_args(argv)

  import jax
  import tensorflow as tf
  import tensorflow_datasets as tfds
  work = Path(args.work_dir)
  cache_dir = Path(args.preprocess_cache_dir) if args.preprocess_cache_dir else work / "preprocess_cache"
  builders = {enc: _build(work, enc, args.manual_dir, cache_dir) for enc in ("jpeg", "raw")}
  image_size = builders["jpeg"].info.features["frames"].shape[1]
  num_clips = builders["jpeg"].info.splits["paper_random_train"].num_examples + \
      builders["jpeg"].info.splits["paper_random_test"].num_examples

  sample = next(iter(tfds.as_numpy(builders["raw"].as_dataset(split="all").take(4).batch(4))))["frames"]
  results = dict(
      date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      command=records.command("benchmarks.input_pipeline_speed", argv),
      versions=dict(python=platform.python_version(), jax=jax.__version__, tensorflow=tf.__version__,
                    tensorflow_datasets=tfds.__version__),
      machine=dict(cpus=os.cpu_count(), load_average=os.getloadavg()),
      data=dict(source="ravdess" if args.manual_dir else "generated", clips=num_clips, image_size=image_size),
      frame_codec=_frame_codec(sample),
      stored_bytes_per_clip={enc: b.info.dataset_size / (2 * num_clips) for enc, b in builders.items()},
      pipeline_clips_per_s={},
      pipeline_clips_per_cpu_second={},
  )
  rates, per_cpu = results["pipeline_clips_per_s"], results["pipeline_clips_per_cpu_second"]
  for enc, builder in builders.items():
    for host_augment in (False, True):
      key = f"{enc}{'+host_augment' if host_augment else ''}"
      rates[key], per_cpu[key] = _pipeline_rate(builder.data_path, host_augment=host_augment, cache=False,
                                                batches=args.batches, warmup=args.warmup)
    rates[f"{enc}+cache"], per_cpu[f"{enc}+cache"] = _pipeline_rate(
        builder.data_path, host_augment=False, cache=True, batches=args.batches, warmup=args.warmup)
  rates["jpeg nondeterministic"], per_cpu["jpeg nondeterministic"] = _pipeline_rate(
      builders["jpeg"].data_path, host_augment=False, cache=False, batches=args.batches, warmup=args.warmup,
      deterministic=False)
  results["device_augment_per_batch8"] = _device_augment_cost(image_size, repeats=5)

  codec = results["frame_codec"]
  lines = [f"Input pipeline, {results['data']['clips']} {results['data']['source']} clips at {image_size} px, "
           f"batch 8, shuffle on; {results['date']}, {os.cpu_count()} CPUs (load {os.getloadavg()[0]:.1f})", "",
           "| frames stored as | bytes per frame | bytes per clip on disk | decode ms per frame |",
           "| --- | --- | --- | --- |",
           f"| raw uint8 | {codec['raw_bytes']} | {results['stored_bytes_per_clip']['raw']:.0f} | "
           f"{codec['raw_decode_ms']:.3f} |",
           f"| JPEG q{codec['jpeg_quality']} (PSNR {codec['psnr_db']:.1f} dB, encode {codec['jpeg_encode_ms']:.2f} ms) | "
           f"{codec['jpeg_bytes_mean']:.0f} | {results['stored_bytes_per_clip']['jpeg']:.0f} | "
           f"{codec['jpeg_decode_ms']:.3f} |", "",
           "| pipeline | clips/s | clips per CPU second (= per core) |", "| --- | --- | --- |"]
  lines += [f"| {k} | {v:.1f} | {per_cpu[k]:.1f} |" for k, v in rates.items()]
  dev = results["device_augment_per_batch8"]
  lines += ["", f"| device-side, batch 8 ({dev['platform']}: {dev['device']}) | ms |", "| --- | --- |",
            f"| flip + rotation (jit) | {dev['flip_rotate_ms']:.1f} |",
            f"| uint8->float, flip + rotation, softhard (jit) | {dev['uint8_to_float_flip_rotate_softhard_ms']:.1f} |"]
  table = "\n".join(lines)
  print(table)
  results["table"] = table
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(results, indent=1))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
