"""Benchmark suite: one entry point, JSON results, a human table appended to benchmarks/RESULTS.md.

    python -m benchmarks.run --suite=step            # Flax vs PyTorch train step + inference, batch 8/32, f32/bf16
    python -m benchmarks.run --suite=pipeline        # tf.data clips/s from TFRecord shards vs the step's consumption
    python -m benchmarks.run --suite=accuracy        # audio-only 5-fold cross-validation on real RAVDESS speech
    python -m benchmarks.run --suite=train           # the real training loop (input included): clips/s vs the step
    python -m benchmarks.run --suite=all
    python -m benchmarks.run --suite=step --quick    # tiny configuration (CI): checks the machinery, not the speed

Options: --batch_sizes=8,32 --dtypes=float32,bfloat16 --remat (JAX: rematerialise EfficientFace's blocks)
--find_largest (accelerators: double the batch until out of memory) --out=results.json --no_append;
train suite: --train_variant --train_batch_size --train_image_size --train_steps --train_log_every
--train_prefetch --no-train_device_cache.
The step suite needs only jax/flax/optax/numpy/torch, so it runs on a bare GPU machine (device-resident
synthetic batches); see benchmarks/gpu.sh and benchmarks/tpu.sh. A worker that dies (killed for memory, a
crash) is reported with how it ended (signal or exit code, its last error line, its peak RSS), not just
"failed".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from benchmarks import processes, step_time

REPO = Path(__file__).resolve().parents[1]
RESULTS_MD = REPO / "benchmarks" / "RESULTS.md"


def _versions():
  out = {"python": platform.python_version()}
  for name in ("jax", "jaxlib", "flax", "optax", "torch", "tensorflow"):
    try:
      out[name] = __import__(name).__version__
    except Exception:  # not installed on this machine (e.g. no TensorFlow on a GPU box)
      pass
  return out


def step_suite(args):
  """Train step + eval forward for each batch size and dtype, both frameworks side by side."""
  rows = []
  batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
  for dtype in args.dtypes.split(","):
    sizes = list(batch_sizes)
    if args.find_largest:
      sizes.append(_largest_batch(dtype, args))
    for batch in sizes:
      cfg = step_time.parse_args([f"--batch_size={batch}", f"--dtype={dtype}", f"--repeats={args.repeats}",
                                  f"--warmup={args.warmup}", f"--eval_repeats={args.repeats}",
                                  f"--image_size={args.image_size}", f"--conv_impl={args.conv_impl}"]
                                 + (["--remat"] if args.remat else []))
      row = {"batch_size": batch, "dtype": dtype, "image_size": args.image_size, "conv_impl": args.conv_impl,
             "remat": args.remat}
      for framework in args.frameworks.split(","):
        try:
          row[framework] = step_time.measure(framework, cfg)
        except processes.WorkerFailed as failure:  # e.g. killed for memory at this batch size
          row[framework] = failure.as_dict()
          print(f"{framework} at batch {batch} {dtype}: {failure.message}", file=sys.stderr, flush=True)
      rows.append(row)
      print(_step_row_md(row), flush=True)
  return rows


def _largest_batch(dtype, args):
  """Doubles the JAX batch from 32 until a step fails (out of memory); returns the last that ran."""
  batch, last_ok = 32, 32
  while batch <= 4096:
    cfg = step_time.parse_args([f"--batch_size={batch}", f"--dtype={dtype}", "--repeats=1", "--warmup=0",
                                "--eval_repeats=1", f"--image_size={args.image_size}"]
                               + (["--remat"] if args.remat else []))
    try:
      step_time.measure("jax", cfg)
    except processes.WorkerFailed:
      break
    last_ok, batch = batch, batch * 2
  return last_ok


STEP_HEADER = ("| batch | dtype | device | JAX step (s) | PyTorch step (s) | speed-up | JAX clips/s | PyTorch clips/s "
               "| JAX eval (s) | PyTorch eval (s) | JAX compile (s) | GFLOP/step | MFU | step/roofline | JAX mem (MB) "
               "| PyTorch mem (MB) |\n" + "| --- " * 16 + "|")


def _mem(r):
  return r.get("peak_device_mb") or r.get("peak_rss_mb") or float("nan")


def _step_row_md(row):
  """One table row. A framework whose worker died shows how it ended in its step cell; the other's figures
  stay."""
  j, t = row.get("jax", {}), row.get("torch", {})
  j_ok, t_ok = "step" in j, "step" in t

  def step_cell(r, ok):
    return f"{r['step']['median_s']:.3f}" if ok else (f"failed: {r['error']}" if "error" in r else "-")

  def cell(ok, value, spec, suffix=""):
    return format(value(), spec) + suffix if ok else "-"

  cells = [f"{row['batch_size']}, remat" if row.get("remat") else row["batch_size"], row["dtype"],
           j["device"] if j_ok else t.get("device", "-"), step_cell(j, j_ok), step_cell(t, t_ok),
           cell(j_ok and t_ok, lambda: t["step"]["median_s"] / j["step"]["median_s"], ".2f", "x"),
           cell(j_ok, lambda: j["clips_per_s"], ".2f"), cell(t_ok, lambda: t["clips_per_s"], ".2f"),
           cell(j_ok, lambda: j["eval_forward"]["median_s"], ".3f"),
           cell(t_ok, lambda: t["eval_forward"]["median_s"], ".3f"), cell(j_ok, lambda: j["compile_s"], ".1f"),
           cell(j_ok, lambda: j["step_flops"] / 1e9, ".1f"), cell(j_ok, lambda: j["mfu"], ".1%"),
           cell(j_ok, lambda: j["step_over_roofline"], ".1f", "x"), cell(j_ok, lambda: _mem(j), ".0f"),
           cell(t_ok, lambda: _mem(t), ".0f")]
  return "| " + " | ".join(str(c) for c in cells) + " |"


def pipeline_suite(args):
  """tf.data clips/s from TFRecord shards of the real shared clips (generated clips when they are absent)."""
  out = Path(args.workdir) / "pipeline.json"
  cmd = [sys.executable, "-m", "benchmarks.input_pipeline_speed", f"--out={out}",
         f"--work_dir={Path(args.workdir) / 'pipeline_data'}"]
  shared = REPO.parent / "shared" / "data" / "ravdess"
  if shared.is_dir():
    cmd.append(f"--manual_dir={shared}")
  if args.quick:
    cmd += ["--batches=3", "--warmup=1"]
  processes.run(cmd, cwd=REPO, capture=False)  # its progress stays on the terminal
  result = json.loads(out.read_text())
  result["markdown"] = result.get("table", "")
  return result


def _input_bound_md(results):
  """Pipeline delivery rate next to the step's consumption rate: is training input-bound?"""
  rates = results["pipeline"]["pipeline_clips_per_s"]
  lines = ["| pipeline setting | clips/s delivered | step consumes (clips/s) | headroom |", "| --- | --- | --- | --- |"]
  for row in results["step"]:
    if "clips_per_s" not in row.get("jax", {}):
      continue
    for key in ("jpeg", "jpeg+cache"):
      if key in rates:
        consume = row["jax"]["clips_per_s"]
        lines.append(f"| {key} (step: batch {row['batch_size']} {row['dtype']}, {row['jax']['device']}) | "
                     f"{rates[key]:.1f} | {consume:.2f} | {rates[key] / consume:.1f}x |")
  return "\n".join(lines)


def _train_records(metrics_path):
  with open(metrics_path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return [r for r in records if "train/step_time" in r]


def _loop_rates(records, batch_size):
  """Per-log-interval timings of the loop and the steady state (every interval after the first two: the
  first holds the compilation, the second the first steady steps after it)."""
  intervals, previous = [], 0
  for r in records:
    steps = r["step"] - previous
    intervals.append({"steps": f"{previous + 1}-{r['step']}", "num_steps": steps, "step_s": r["train/step_time"],
                      "clips_per_s": r["train/clips_per_second"]})
    previous = r["step"]
  steady = intervals[2:] or intervals[1:]
  steady_steps = sum(i["num_steps"] for i in steady)
  steady_s = sum(i["num_steps"] * i["step_s"] for i in steady)
  return intervals, {"steps": f"{steady[0]['steps'].split('-')[0]}-{records[-1]['step']}", "num_steps": steady_steps,
                     "step_s": steady_s / steady_steps, "clips_per_s": batch_size * steady_steps / steady_s,
                     # The fastest interval: on a machine shared with other jobs, the least disturbed figure.
                     "best_interval_step_s": min(i["step_s"] for i in steady)}


def _step_only(results, args, batch_size, image_size):
  """The step suite's JAX figure for the train run's settings (its row when it ran them, else one worker)."""
  for row in results.get("step", []):
    if (row.get("batch_size"), row.get("dtype"), row.get("image_size"), row.get("conv_impl"), row.get("remat")) == (
        batch_size, args.train_dtype, image_size, args.train_conv_impl, args.remat) and "step" in row.get("jax", {}):
      return dict(row["jax"], source="step suite row")
  cfg = step_time.parse_args([f"--batch_size={batch_size}", f"--dtype={args.train_dtype}",
                              f"--image_size={image_size}", f"--conv_impl={args.train_conv_impl}",
                              f"--repeats={max(args.repeats, 3)}", "--warmup=1", "--eval_repeats=1"]
                             + (["--remat"] if args.remat else []))
  return dict(step_time.measure("jax", cfg), source="step_time JAX worker, same settings")


def train_suite(args, results):
  """The real trainer (`python -m avtca_jax.train`, tf.data input, augmentation, metrics, checkpoint) for a
  fixed number of steps: its steady-state clips/s from metrics.jsonl beside the bare step's clips/s at the
  same batch, crop size, dtype and conv form, so the input and loop overhead is a number. With
  --train_device_cache a second run holds the training split on the devices (config.data.device_cache):
  its result is under 'device_cache_run' and in the same table."""
  result = _train_run(args, results, device_cache=False)
  rows = [result]
  if args.train_device_cache:
    result["device_cache_run"] = _train_run(args, results, device_cache=True, step_only=result.get("step_only"))
    rows.append(result["device_cache_run"])
  result["markdown"] = _train_md(rows)
  return result


def _train_run(args, results, device_cache: bool, step_only: Optional[dict] = None):
  batch, size, steps, log_every = args.train_batch_size, args.train_image_size, args.train_steps, args.train_log_every
  overrides = [f"--config.batch_size={batch}", f"--config.image_size={size}", f"--config.num_train_steps={steps}",
               f"--config.log_every_steps={log_every}", f"--config.dtype={args.train_dtype}",
               f"--config.conv_impl={args.train_conv_impl}", "--config.evaluate_test=False",
               "--config.progress_bar=False", f"--config.data.prefetch={args.train_prefetch}"]
  if device_cache:
    overrides.append("--config.data.device_cache=True")
  if args.remat:
    overrides.append("--config.remat=True")
  if args.quick:  # in-memory generated clips: no tfds dataset to build on a fresh CI machine
    overrides.append("--config.data.source=synthetic")
  workdir = tempfile.mkdtemp(prefix="train_", dir=args.workdir)
  cmd = [sys.executable, "-m", "avtca_jax.train", f"--config=configs/ravdess.py:{args.train_variant}",
         f"--workdir={workdir}", *overrides]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  command = "python -m avtca_jax.train " + " ".join(cmd[3:4] + ["--workdir=DIR"] + overrides)
  try:
    finished = processes.run(cmd, cwd=REPO, env=env)
    records = _train_records(os.path.join(workdir, "metrics.jsonl"))
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  if len(records) < 2:
    raise ValueError(f"the training run logged {len(records)} interval(s); need --train_steps >= 2")
  intervals, steady = _loop_rates(records, batch)
  first_step_s = records[0]["train/step_time"]
  result = {"command": command, "variant": args.train_variant, "device_cache": device_cache, "batch_size": batch,
            "image_size": size, "prefetch": args.train_prefetch,
            "dtype": args.train_dtype, "conv_impl": args.train_conv_impl, "remat": args.remat,
            "data_source": "synthetic (in memory)" if args.quick else "the variant's", "num_train_steps": steps,
            "intervals": intervals, "loop": steady, "first_step_s": first_step_s,
            "compile_s": first_step_s - steady["step_s"], "wall_s": finished.wall_s,
            "load_average": os.getloadavg(),
            "peak_rss_mb": finished.peak_rss_mb}
  try:
    if step_only and "clips_per_s" in step_only:  # the first run's measurement of the same step
      result["step_only"] = step_only
    else:
      only = _step_only(results, args, batch, size)
      result["step_only"] = {k: only[k] for k in ("source", "clips_per_s", "compile_s", "peak_rss_mb", "device")}
      result["step_only"]["step_s"] = only["step"]["median_s"]
      result["step_only"]["min_step_s"] = only["step"]["min_s"]
    result["input_overhead"] = 1 - steady["clips_per_s"] / result["step_only"]["clips_per_s"]
    if "min_step_s" in result["step_only"]:
      result["input_overhead_best"] = steady["best_interval_step_s"] / result["step_only"]["min_step_s"] - 1
  except processes.WorkerFailed as failure:
    result["step_only"] = failure.as_dict()
  return result


def _train_md(rows):
  first = rows[0]
  only = first.get("step_only", {})
  lines = [f"Training loop: `{first['command']}` (device cache: the same plus `--config.data.device_cache=True`). "
           f"Loop figures: steps {first['loop']['steps']} (metrics.jsonl). Compile (estimate) = first step minus a "
           "steady step, so it includes the first batch. Step-only: the bare jitted step on device-resident "
           "synthetic batches at the same batch, crop size, dtype and conv form "
           f"({only.get('source', 'not measured')}); the overhead is input (host pipeline or on-device gather, "
           "on-device augmentation and resize) plus the loop's own work. Best: the loop's fastest log interval "
           "against the bare step's fastest repeat (less disturbed by other jobs). Load average at the end of each "
           "run (1, 5, 15 min) on this machine's CPUs.", "",
           "| variant | input | batch | crop px | loop clips/s | loop step (s) | step-only clips/s | step-only step (s) "
           "| input + loop overhead | best loop interval / best step (s) | overhead, best | first step (s) "
           "| compile (s, est.) | wall (s) | peak RSS (MB) | load average |",
           "| --- " * 16 + "|"]
  for r in rows:
    only = r.get("step_only", {})
    has_only = "clips_per_s" in only
    source = "device cache" if r["device_cache"] else f"host pipeline, prefetch {r['prefetch']}"
    lines.append(
        f"| {r['variant']}{', remat' if r['remat'] else ''} | {source} | {r['batch_size']} | {r['image_size']} "
        f"| {r['loop']['clips_per_s']:.2f} | {r['loop']['step_s']:.3f} "
        f"| {format(only['clips_per_s'], '.2f') if has_only else only.get('error', '-')} "
        f"| {format(only['step_s'], '.3f') if has_only else '-'} "
        f"| {format(r['input_overhead'], '.0%') if has_only else '-'} "
        f"| {r['loop']['best_interval_step_s']:.3f} / {format(only.get('min_step_s', float('nan')), '.3f')} "
        f"| {format(r.get('input_overhead_best', float('nan')), '.0%')} | {r['first_step_s']:.1f} "
        f"| {r['compile_s']:.1f} | {r['wall_s']:.0f} | {r['peak_rss_mb'] or float('nan'):.0f} "
        f"| {', '.join(f'{x:.1f}' for x in r['load_average'])} |")
  return "\n".join(lines)


PUBLISHED = ("Published, for comparison (spec 7): AVT-CA 96.11% accuracy / 93.78 F1 on its random 80/20 split "
             "(leaks actors; secondary sources); Chumachenko et al. 81.58% actor-independent (IA fusion). The "
             "PyTorch original's audio loop on the same folds and seeds: `python -m benchmarks.audio_fold` "
             "(docs/audio_only.md).")


# Audio-video protocols of the accuracy table: (name, config variant, runner, published figure).
AV_PROTOCOLS = (
    ("av_folds", "fold1", "cross_validation", "Chumachenko et al. 81.58% (IA fusion, one actor split)"),
    ("av_original", "original", "train", "none published (the public code's own split, test actors 1-4)"),
    ("av_paper_split", "paper_split", "train", "AVT-CA 96.11% / F1 93.78 (random 80/20 split, leaks actors)"),
)


def _tfds_dataset_dir(data_dir: str, config_name: str) -> Optional[Path]:
  """The prepared `ravdess/<config_name>` tfds directory under data_dir (tfds layout), or None."""
  root = Path(data_dir or os.environ.get("TFDS_DATA_DIR", "") or Path.home() / "tensorflow_datasets")
  versions = sorted((root / "ravdess" / config_name).glob("*/dataset_info.json"))
  return versions[-1].parent if versions else None


def _av_protocol(args, name, variant, runner, published):
  """Run one audio-video protocol when the ravdess tfds dataset is built; otherwise say how to get there."""
  builder_config = "av_with_video_only" if variant == "original" else "av"
  out = Path(args.workdir) / "accuracy" / name
  command = ([sys.executable, "-m", "avtca_jax.cross_validation", f"--config=configs/ravdess.py:{variant}",
              f"--workdir={out}"] if runner == "cross_validation" else
             [sys.executable, "-m", "avtca_jax.train", f"--config=configs/ravdess.py:{variant}", f"--workdir={out}"])
  if args.data_dir:
    command.append(f"--config.data.data_dir={args.data_dir}")
  if args.init_checkpoint:
    command.append(f"--config.init_checkpoint={args.init_checkpoint}")
  shown = " ".join(["python"] + command[1:])
  if _tfds_dataset_dir(args.data_dir, builder_config) is None:
    return {"protocol": name, "status": "not run", "command": shown, "published": published,
            "reason": f"tfds dataset ravdess/{builder_config} not found (build it from the full RAVDESS download: "
                      f"python -m data.ravdess.build data/ravdess --config {builder_config} --manual_dir DIR "
                      "--data_dir DIR; docs/data.md)"}
  processes.run(command, cwd=REPO, capture=False)
  if runner == "cross_validation":
    report = json.loads((out / "cross_validation.json").read_text())
    both = report["summary"]["both"]
    metrics = {m: both[m]["mean"] for m in ("accuracy", "uar", "macro_f1")}
    metrics["accuracy_std"] = both["accuracy"]["fold_std"]
  else:
    metrics = json.loads((out / "test_metrics.json").read_text())
  return {"protocol": name, "status": "done", "command": shown, "published": published, "test": metrics}


def _accuracy_md(audio_table: str, recipe: str, av_rows) -> str:
  rows = ["| protocol | status | test accuracy | command | published |", "| --- | --- | --- | --- | --- |"]
  for r in av_rows:
    if r["status"] == "done":
      t = r["test"]
      value = f"{100 * t['accuracy']:.1f}%" + (f" ± {100 * t['accuracy_std']:.1f}" if "accuracy_std" in t else "")
    else:
      value = f"not run: {r['reason']}"
    rows.append(f"| {r['protocol']} | {r['status']} | {value} | `{r['command']}` | {r['published']} |")
  return (f"Audio-only, recipe `{recipe}`:\n\n{audio_table}\n{PUBLISHED}\n\nAudio + video (AVT-CA `it`):\n\n"
          + "\n".join(rows))


def accuracy_suite(args):
  """Audio-only actor-independent folds on the real speech files through the one trainer
  (`cross_validation`), and the audio-video protocols (actor folds, the original's split, the paper's
  random split) where the ravdess tfds dataset is built."""
  out = Path(args.workdir) / "accuracy" / args.recipe
  folds = "1" if args.quick else "1,2,3,4,5"
  audio_dir = os.path.join(os.environ.get("AVTCA_RAVDESS_DIR", ""), "audio_speech_22k")
  cmd = [sys.executable, "-m", "avtca_jax.cross_validation", f"--config=configs/ravdess.py:{args.recipe}",
         f"--workdir={out}", f"--folds={folds}", "--remove=", "--config.progress_bar=False"]
  if os.environ.get("AVTCA_RAVDESS_DIR"):
    cmd.append(f"--config.data.path={audio_dir}")
  if args.quick:
    cmd += ["--config.num_train_steps=2"]
  processes.run(cmd, cwd=REPO, capture=False)  # its progress stays on the terminal
  report = json.loads((out / "cross_validation.json").read_text())
  table = (out / "cross_validation.md").read_text()
  protocols = [p for p in AV_PROTOCOLS if p[0] in args.av_protocols.split(",")]
  av_rows = [_av_protocol(args, *p) for p in protocols]
  return {"audio": report, "av": av_rows, "markdown": _accuracy_md(table, args.recipe, av_rows)}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--suite", default="step", help="step, pipeline, accuracy, train, all, or a comma list")
  p.add_argument("--quick", action="store_true", help="tiny configuration for CI: checks fields, not speed")
  p.add_argument("--batch_sizes", default="8,32")
  p.add_argument("--dtypes", default="float32,bfloat16")
  p.add_argument("--frameworks", default="jax,torch")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--image_size", type=int, default=224)
  p.add_argument("--conv_impl", default="auto")
  p.add_argument("--remat", action="store_true", help="JAX: rematerialise EfficientFace's blocks (less memory)")
  p.add_argument("--find_largest", action="store_true")
  p.add_argument("--recipe", default="audio_only",
                 help="accuracy suite: audio config variant (audio_only: the fast recipe; audio_original)")
  p.add_argument("--av_protocols", default="av_folds,av_original,av_paper_split",
                 help="accuracy suite: audio-video protocols to run when the ravdess tfds dataset is built")
  p.add_argument("--data_dir", default="", help="accuracy suite: tfds data_dir holding ravdess/av")
  p.add_argument("--init_checkpoint", default="", help="accuracy suite: converted EfficientFace for the AV runs")
  p.add_argument("--train_variant", default="default", help="train suite: configs/ravdess.py variant")
  p.add_argument("--train_batch_size", type=int, default=8)
  p.add_argument("--train_image_size", type=int, default=32, help="model input (the generated clips are 64 px)")
  p.add_argument("--train_dtype", default="float32")
  p.add_argument("--train_conv_impl", default="auto")
  p.add_argument("--train_steps", type=int, default=24, help="within one epoch (32 steps of 8 on the default)")
  p.add_argument("--train_log_every", type=int, default=4)
  p.add_argument("--train_prefetch", type=int, default=2, help="train suite: config.data.prefetch")
  p.add_argument("--train_device_cache", action=argparse.BooleanOptionalAction, default=True,
                 help="train suite: also run with the training split cached on the devices")
  p.add_argument("--workdir", default="/tmp/avtca_benchmarks")
  p.add_argument("--out", default="", help="JSON results file (default: WORKDIR/results.json)")
  p.add_argument("--no_append", action="store_true", help="do not append the table to benchmarks/RESULTS.md")
  args = p.parse_args(argv)
  if args.quick:
    args.batch_sizes, args.dtypes, args.repeats, args.warmup, args.image_size = "1", "float32", 1, 0, 32
    args.conv_impl = "grouped"  # compiles faster; speed is not the point of --quick
    # Batch 1 like the step suite's quick row, so a `--suite=step,train --quick` run reuses that row.
    args.train_batch_size, args.train_steps, args.train_log_every, args.train_conv_impl = 1, 6, 2, "grouped"
    args.train_device_cache = False  # CI time; the trainer's tests cover the device cache
  os.makedirs(args.workdir, exist_ok=True)
  command = "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:])
  results = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
             "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
             "versions": _versions(), "quick": args.quick}
  suites = ["step", "pipeline", "accuracy", "train"] if args.suite == "all" else args.suite.split(",")
  unknown = set(suites) - {"step", "pipeline", "accuracy", "train"}
  if unknown:
    p.error(f"unknown suite(s) {sorted(unknown)}: expected step, pipeline, accuracy, train, all or a comma list")
  sections = []
  for suite in suites:
    run_suite = {"step": step_suite, "pipeline": pipeline_suite, "accuracy": accuracy_suite,
                 "train": lambda a: train_suite(a, results)}[suite]
    try:
      results[suite] = run_suite(args)
    except processes.WorkerFailed as failure:  # one suite's dead worker does not lose the others' results
      results[suite] = dict(failure.as_dict(), markdown=f"{suite} suite failed: {failure.message}")
      print(f"{suite} suite failed: {failure.message}", file=sys.stderr, flush=True)
    if suite == "step":
      sections.append(STEP_HEADER + "\n" + "\n".join(_step_row_md(r) for r in results["step"]))
    elif isinstance(results[suite], dict) and "markdown" in results[suite]:
      sections.append(results[suite]["markdown"])
  if "step" in results and "pipeline_clips_per_s" in results.get("pipeline", {}):
    sections.append(_input_bound_md(results))
  out = Path(args.out or Path(args.workdir) / "results.json")
  out.write_text(json.dumps(results, indent=1))
  text = (f"\n### {results['date']}: `{command}`\n\nMachine: {results['machine']}; versions: {results['versions']}\n\n"
          + "\n\n".join(sections) + "\n")
  print(text)
  if not args.no_append and not args.quick:
    with open(RESULTS_MD, "a") as f:
      f.write(text)
  return results


if __name__ == "__main__":
  main()
