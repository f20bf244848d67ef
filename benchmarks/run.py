"""Benchmark suite: one entry point taking the trainer's config, JSON results.

    python -m benchmarks.run --suite=step --config=configs/ravdess.py:fold1 --config.modality_dropout=none \
        --config.flip_rotate=False --probes=8,32          # the trainer's step vs PyTorch's, batch 8 and 32
    python -m benchmarks.run --suite=train --config=configs/ravdess.py --config.num_train_steps=24 \
        --config.log_every_steps=4                          # the real training loop, input included, vs its step
    python -m benchmarks.run --suite=pipeline --config=configs/ravdess.py   # tf.data clips/s from TFRecord shards
    python -m benchmarks.run --suite=accuracy --config=configs/ravdess.py:audio_only   # cross-validation

Like the trainer, it takes `--config=configs/ravdess.py:VARIANT` and `--config.x=y` overrides, and the suites
run that config: the step suite at each batch size of `--probes` (default the config's), the train suite as
`python -m avtca_jax.train` with the same arguments for `config.num_train_steps` steps, the accuracy suite
as its cross-validation (the pipeline suite builds its own JPEG and raw datasets). Its own flags
say what to run and how often: --suite, --probes, --find_largest, --frameworks, --repeats, --warmup,
--compare_device_cache, --av_protocols, --workdir, --out. The PyTorch original's step has no modality
dropout or flip/rotate, so comparing against it needs `--config.modality_dropout=none
--config.flip_rotate=False`.

Results go to one JSON file (default benchmarks/results/run_<UTC time>.json) with the date, machine,
versions and command; `python -m benchmarks.report` regenerates benchmarks/RESULTS.md from such files.
The step suite needs only jax/flax/optax/numpy/ml_collections/torch, so it runs on a bare GPU machine
(device-resident synthetic batches); see benchmarks/gpu.sh and benchmarks/tpu.sh. A worker that dies
(killed for memory, a crash) is reported with how it ended (signal or exit code, its last error line, its
peak RSS), not just "failed".
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import tempfile
import types
from pathlib import Path
from typing import Optional, Sequence

from benchmarks import processes, records, step_time

REPO = records.REPO
SUITES = ("step", "pipeline", "accuracy", "train")


def _with_batch(config, batch_size: int):
  config = copy.deepcopy(config)
  config.batch_size = batch_size
  return config


def step_suite(config, args):
  """The trainer's train step and eval forward at each probed batch size, every framework side by side."""
  rows = []
  sizes = [int(b) for b in args.probes] or [config.batch_size]
  if args.find_largest:
    sizes.append(_largest_batch(config))
  timing = step_time.Timing(repeats=args.repeats, warmup=args.warmup, eval_repeats=args.repeats)
  for batch in sizes:
    row = {"batch_size": batch, "dtype": config.dtype, "image_size": config.image_size,
           "conv_impl": config.conv_impl, "remat": config.remat, "variant": config.variant}
    for framework in args.frameworks:
      try:
        row[framework] = step_time.measure(framework, _with_batch(config, batch), timing)
      except processes.WorkerFailed as failure:  # e.g. killed for memory at this batch size
        row[framework] = failure.as_dict()
        print(f"{framework} at batch {batch} {config.dtype}: {failure.message}", file=sys.stderr, flush=True)
    rows.append(row)
    print(_step_row_md(row), flush=True)
  return rows


def _largest_batch(config):
  """Doubles the JAX batch from 32 until a step fails (out of memory); returns the last that ran."""
  batch, last_ok = 32, 32
  while batch <= 4096:
    try:
      step_time.measure("jax", _with_batch(config, batch), step_time.Timing(repeats=1, warmup=0, eval_repeats=1))
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


def pipeline_suite(config, args):
  """tf.data clips/s from TFRecord shards of the RAVDESS clips under $AVTCA_RAVDESS_DIR (generated clips when
  it is unset)."""
  del config  # the pipeline benchmark builds its own datasets (JPEG and raw)
  out = Path(args.workdir) / "pipeline.json"
  cmd = [sys.executable, "-m", "benchmarks.input_pipeline_speed", f"--out={out}",
         f"--work_dir={Path(args.workdir) / 'pipeline_data'}"]
  ravdess_dir = os.environ.get("AVTCA_RAVDESS_DIR", "")
  if ravdess_dir and os.path.isdir(ravdess_dir):
    cmd.append(f"--manual_dir={ravdess_dir}")
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


def _step_only(results, config, args):
  """The step suite's JAX figure for the train run's config (its row when it ran that batch, else one worker)."""
  for row in results.get("step", []):
    if isinstance(row, dict) and row.get("batch_size") == config.batch_size and "step" in row.get("jax", {}):
      return dict(row["jax"], source="step suite row")
  timing = step_time.Timing(repeats=max(args.repeats, 3), warmup=1, eval_repeats=1)
  return dict(step_time.measure("jax", config, timing), source="step_time JAX worker, same config")


def train_suite(config, args, results, config_args: Sequence[str]):
  """The real trainer (`python -m avtca_jax.train` with the suite's config: its input pipeline, augmentation,
  metrics, checkpoints) for `config.num_train_steps` steps: its steady-state clips/s from metrics.jsonl
  beside the bare step's clips/s for the same config, so the input and loop overhead is a number. With
  --compare_device_cache a second run holds the training split on the devices (config.data.device_cache):
  its result is under 'device_cache_run' and in the same table."""
  if config.num_train_steps <= 0:
    raise SystemExit("error: the train suite times config.num_train_steps steps: add e.g. "
                     "--config.num_train_steps=24 --config.log_every_steps=4")
  result = _train_run(config, args, results, config_args, device_cache=config.data.device_cache)
  rows = [result]
  if args.compare_device_cache and not config.data.device_cache:
    result["device_cache_run"] = _train_run(config, args, results, config_args, device_cache=True,
                                            step_only=result.get("step_only"))
    rows.append(result["device_cache_run"])
  result["markdown"] = _train_md(rows)
  return result


def _train_run(config, args, results, config_args, device_cache: bool, step_only: Optional[dict] = None):
  batch = config.batch_size
  extra = ["--config.data.device_cache=True"] if device_cache and not config.data.device_cache else []
  workdir = tempfile.mkdtemp(prefix="train_", dir=args.workdir)
  cmd = [sys.executable, "-m", "avtca_jax.train", *config_args, *extra, f"--workdir={workdir}"]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  command = " ".join(["python -m avtca_jax.train", *config_args, *extra, "--workdir=DIR"])
  try:
    finished = processes.run(cmd, cwd=REPO, env=env)
    records_ = _train_records(os.path.join(workdir, "metrics.jsonl"))
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  if len(records_) < 2:
    raise ValueError(f"the training run logged {len(records_)} interval(s); need config.num_train_steps of at "
                     "least 2 x config.log_every_steps")
  intervals, steady = _loop_rates(records_, batch)
  first_step_s = records_[0]["train/step_time"]
  result = {"command": command, "variant": config.variant, "device_cache": device_cache, "batch_size": batch,
            "image_size": config.image_size, "prefetch": config.data.prefetch, "dtype": config.dtype,
            "conv_impl": config.conv_impl, "remat": config.remat, "data_source": config.data.source,
            "num_train_steps": config.num_train_steps, "intervals": intervals, "loop": steady,
            "first_step_s": first_step_s, "compile_s": first_step_s - steady["step_s"], "wall_s": finished.wall_s,
            "load_average": os.getloadavg(), "peak_rss_mb": finished.peak_rss_mb}
  try:
    if step_only and "clips_per_s" in step_only:  # the first run's measurement of the same step
      result["step_only"] = step_only
    else:
      only = _step_only(results, config, args)
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
  lines = [f"Training loop: `{first['command']}` (device cache: with `--config.data.device_cache=True`). "
           f"Loop figures: steps {first['loop']['steps']} (metrics.jsonl). Compile (estimate) = first step minus a "
           "steady step, so it includes the first batch. Step-only: the bare jitted step on device-resident "
           "synthetic batches, same config "
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


PUBLISHED = ("Published, for comparison: AVT-CA 96.11% accuracy / 93.78 F1 on its random 80/20 split "
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


def _av_protocol(workdir, data_dir, name, variant, runner, published):
  """Run one audio-video protocol when the ravdess tfds dataset is built (under `data_dir`, the config's
  data.data_dir); otherwise say how to get there."""
  builder_config = "av_with_video_only" if variant == "original" else "av"
  out = Path(workdir) / "accuracy" / name
  command = ([sys.executable, "-m", "avtca_jax.cross_validation", f"--config=configs/ravdess.py:{variant}",
              f"--workdir={out}"] if runner == "cross_validation" else
             [sys.executable, "-m", "avtca_jax.train", f"--config=configs/ravdess.py:{variant}", f"--workdir={out}"])
  if data_dir:
    command.append(f"--config.data.data_dir={data_dir}")
  shown = " ".join(["python"] + command[1:4] + ["--workdir=DIR"] + command[5:])
  if _tfds_dataset_dir(data_dir, builder_config) is None:
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
  return (f"Cross-validation of `{recipe}`:\n\n{audio_table}\n{PUBLISHED}\n\nAudio + video (AVT-CA `it`):\n\n"
          + "\n".join(rows))


def accuracy_suite(config, args, config_args: Sequence[str]):
  """Cross-validation of the suite's config through the one trainer (`avtca_jax.cross_validation`, every fold
  of its fold set; e.g. `:audio_only` on the real speech files), and the audio-video protocols (actor folds,
  the original's split, the paper's random split) where the ravdess tfds dataset is built."""
  out = Path(args.workdir) / "accuracy" / config.variant
  cmd = [sys.executable, "-m", "avtca_jax.cross_validation", *config_args, f"--workdir={out}", "--remove="]
  processes.run(cmd, cwd=REPO, capture=False)  # its progress stays on the terminal
  report = json.loads((out / "cross_validation.json").read_text())
  table = (out / "cross_validation.md").read_text()
  protocols = [p for p in AV_PROTOCOLS if p[0] in args.av_protocols]
  av_rows = [_av_protocol(args.workdir, config.data.data_dir, *p) for p in protocols]
  return {"audio": report, "av": av_rows, "markdown": _accuracy_md(table, config.variant, av_rows)}


def render(results: dict) -> str:
  """The markdown of one run's results (what `benchmarks.report` puts in RESULTS.md)."""
  sections = []
  for suite in SUITES:
    if suite not in results:
      continue
    if suite == "step" and isinstance(results["step"], list):
      sections.append(STEP_HEADER + "\n" + "\n".join(_step_row_md(r) for r in results["step"]))
    elif isinstance(results[suite], dict) and "markdown" in results[suite]:
      sections.append(results[suite]["markdown"])
  if isinstance(results.get("step"), list) and "pipeline_clips_per_s" in results.get("pipeline", {}):
    sections.append(_input_bound_md(results))
  return "\n\n".join(sections)


def define_flags():
  """The trainer's `--config` plus what to run and how often (defined only when run as a program)."""
  from absl import flags
  records.define_config_flag()
  flags.DEFINE_list("suite", ["step"], "step, pipeline, accuracy, train, all, or a comma list.")
  flags.DEFINE_list("probes", [], "Step suite: the batch sizes to time (default: the config's batch_size).")
  flags.DEFINE_bool("find_largest", False, "Step suite: also the largest batch that runs (doubling from 32).")
  flags.DEFINE_list("frameworks", ["jax", "torch"], "Step suite: jax, torch or both.")
  flags.DEFINE_integer("repeats", 5, "Step suite: timed steps (and eval forwards) per batch size.")
  flags.DEFINE_integer("warmup", 2, "Step suite: untimed steps before them.")
  flags.DEFINE_bool("compare_device_cache", True, "Train suite: a second run with the training split cached "
                    "on the devices (config.data.device_cache=True).")
  flags.DEFINE_list("av_protocols", ["av_folds", "av_original", "av_paper_split"],
                    "Accuracy suite: audio-video protocols to run when the ravdess tfds dataset is built.")
  flags.DEFINE_string("workdir", None, "Scratch folder for the runs (default: a new temporary folder).")
  flags.DEFINE_string("out", None, "JSON results file (default: benchmarks/results/run_<UTC time>.json).")
  flags.DEFINE_bool("verbose", False, "Full error tracebacks.")


def main(argv):
  del argv  # the command line is sys.argv (records.stamp); absl leaves only the program name here
  from absl import flags
  FLAGS = flags.FLAGS
  args = types.SimpleNamespace(**{name: FLAGS[name].value for name in (
      "suite", "probes", "find_largest", "frameworks", "repeats", "warmup", "compare_device_cache",
      "av_protocols", "workdir", "out")})
  config = records.require_config(FLAGS.config, "--config=configs/ravdess.py:fold1 "
                                  "--config.modality_dropout=none --config.flip_rotate=False")
  suites = list(SUITES) if args.suite == ["all"] else args.suite
  unknown = set(suites) - set(SUITES)
  if unknown:
    sys.exit(f"error: --suite: unknown suite(s) {sorted(unknown)}: expected step, pipeline, accuracy, train, all "
             "or a comma list")
  if "step" in suites and "torch" in args.frameworks and step_time.has_augmentation(config):
    sys.exit("error: --frameworks includes torch, whose original step has no modality dropout or flip/rotate: "
             "add --config.modality_dropout=none --config.flip_rotate=False, or --frameworks=jax")
  args.workdir = args.workdir or tempfile.mkdtemp(prefix="avtca_benchmarks_")
  os.makedirs(args.workdir, exist_ok=True)
  config_args = records.config_args(sys.argv[1:])
  results = {**records.stamp("benchmarks.run"), "config": config.to_dict()}
  for suite in suites:
    run_suite = {"step": lambda: step_suite(config, args), "pipeline": lambda: pipeline_suite(config, args),
                 "accuracy": lambda: accuracy_suite(config, args, config_args),
                 "train": lambda: train_suite(config, args, results, config_args)}[suite]
    try:
      results[suite] = run_suite()
    except processes.WorkerFailed as failure:  # one suite's dead worker does not lose the others' results
      results[suite] = dict(failure.as_dict(), markdown=f"{suite} suite failed: {failure.message}")
      print(f"{suite} suite failed: {failure.message}", file=sys.stderr, flush=True)
  out = records.write_json(args.out or records.default_output("run"), results)
  print(f"\n### {results['date']}: `{results['command']}`\n\n{render(results)}\n\nwritten: {out}")


if __name__ == "__main__":
  from absl import app
  from avtca_jax import console
  define_flags()
  app.run(main, flags_parser=console.parse_flags)
