"""Benchmark suite: one entry point, JSON results, a human table appended to benchmarks/RESULTS.md.

    python -m benchmarks.run --suite=step            # Flax vs PyTorch train step + inference, batch 8/32, f32/bf16
    python -m benchmarks.run --suite=pipeline        # tf.data clips/s from TFRecord shards vs the step's consumption
    python -m benchmarks.run --suite=accuracy        # audio-only 5-fold cross-validation on real RAVDESS speech
    python -m benchmarks.run --suite=all
    python -m benchmarks.run --suite=step --quick    # tiny configuration (CI): checks the machinery, not the speed

Options: --batch_sizes=8,32 --dtypes=float32,bfloat16 --find_largest (accelerators: double the batch until
out of memory) --out=results.json --no_append. The step suite needs only jax/flax/optax/numpy/torch, so it
runs on a bare GPU machine (device-resident synthetic batches); see benchmarks/gpu.sh and benchmarks/tpu.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import step_time

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
                                  f"--image_size={args.image_size}", f"--conv_impl={args.conv_impl}"])
      row = {"batch_size": batch, "dtype": dtype}
      for framework in args.frameworks.split(","):
        try:
          row[framework] = step_time.measure(framework, cfg)
        except subprocess.CalledProcessError as e:  # e.g. out of memory at this batch size
          row[framework] = {"error": (e.stderr or "")[-2000:]}
      rows.append(row)
      print(_step_row_md(row), flush=True)
  return rows


def _largest_batch(dtype, args):
  """Doubles the JAX batch from 32 until a step fails (out of memory); returns the last that ran."""
  batch, last_ok = 32, 32
  while batch <= 4096:
    cfg = step_time.parse_args([f"--batch_size={batch}", f"--dtype={dtype}", "--repeats=1", "--warmup=0",
                                "--eval_repeats=1", f"--image_size={args.image_size}"])
    try:
      step_time.measure("jax", cfg)
    except subprocess.CalledProcessError:
      break
    last_ok, batch = batch, batch * 2
  return last_ok


STEP_HEADER = ("| batch | dtype | device | JAX step (s) | PyTorch step (s) | speed-up | JAX clips/s | PyTorch clips/s "
               "| JAX eval (s) | PyTorch eval (s) | JAX compile (s) | GFLOP/step | MFU | step/roofline | JAX mem (MB) "
               "| PyTorch mem (MB) |\n" + "| --- " * 16 + "|")


def _mem(r):
  return r.get("peak_device_mb") or r.get("peak_rss_mb") or float("nan")


def _step_row_md(row):
  j, t = row.get("jax", {}), row.get("torch", {})
  if "step" not in j:
    return f"| {row['batch_size']} | {row['dtype']} | - | failed | | | | | | | | | | | | |"
  speedup = t["step"]["median_s"] / j["step"]["median_s"] if "step" in t else float("nan")
  tf = lambda key, fmt: format(t[key]["median_s"], fmt) if key in t else "-"
  return (f"| {row['batch_size']} | {row['dtype']} | {j['device']} | {j['step']['median_s']:.3f} | {tf('step', '.3f')} "
          f"| {speedup:.2f}x | {j['clips_per_s']:.2f} | {t.get('clips_per_s', float('nan')):.2f} "
          f"| {j['eval_forward']['median_s']:.3f} | {tf('eval_forward', '.3f')} | {j['compile_s']:.1f} "
          f"| {j['step_flops'] / 1e9:.1f} | {100 * j['mfu']:.1f}% | {j['step_over_roofline']:.1f}x | {_mem(j):.0f} "
          f"| {_mem(t) if t else float('nan'):.0f} |")


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
  subprocess.run(cmd, check=True, cwd=REPO)
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


PUBLISHED = ("Published, for comparison (spec 7): AVT-CA 96.11% accuracy / 93.78 F1 on its random 80/20 split "
             "(leaks actors; secondary sources); Chumachenko et al. 81.58% actor-independent (IA fusion); the "
             "PyTorch original's audio branch on these folds, this machine: 62.1/74.2/50.4/56.7/62.5 (mean 61.2%).")


def accuracy_suite(args):
  """Audio-only actor-independent folds on the real speech files (the protocol runnable without videos)."""
  out = Path(args.workdir) / "accuracy"
  folds = "1" if args.quick else "1,2,3,4,5"
  cmd = [sys.executable, "-m", "avtca_jax.audio_recipe", f"--folds={folds}", f"--recipe={args.recipe}",
         f"--out={out}"]
  if args.quick:
    cmd += ["--set", "epochs=1"]
  subprocess.run(cmd, check=True, cwd=REPO)
  per_fold = [json.loads((out / f"fold{k}.json").read_text()) for k in folds.split(",")]
  table = (out / "results.md").read_text()
  return {"folds": per_fold, "markdown": f"Audio-only, recipe `{args.recipe}`:\n\n{table}\n{PUBLISHED}"}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--suite", default="step", choices=["step", "pipeline", "accuracy", "all"])
  p.add_argument("--quick", action="store_true", help="tiny configuration for CI: checks fields, not speed")
  p.add_argument("--batch_sizes", default="8,32")
  p.add_argument("--dtypes", default="float32,bfloat16")
  p.add_argument("--frameworks", default="jax,torch")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--image_size", type=int, default=224)
  p.add_argument("--conv_impl", default="auto")
  p.add_argument("--find_largest", action="store_true")
  p.add_argument("--recipe", default="original", help="accuracy suite: avtca_jax.audio_recipe recipe")
  p.add_argument("--workdir", default="/tmp/avtca_benchmarks")
  p.add_argument("--out", default="", help="JSON results file (default: WORKDIR/results.json)")
  p.add_argument("--no_append", action="store_true", help="do not append the table to benchmarks/RESULTS.md")
  args = p.parse_args(argv)
  if args.quick:
    args.batch_sizes, args.dtypes, args.repeats, args.warmup, args.image_size = "1", "float32", 1, 0, 32
    args.conv_impl = "grouped"  # compiles faster; speed is not the point of --quick
  os.makedirs(args.workdir, exist_ok=True)
  command = "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:])
  results = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
             "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
             "versions": _versions(), "quick": args.quick}
  suites = ["step", "pipeline", "accuracy"] if args.suite == "all" else [args.suite]
  sections = []
  for suite in suites:
    results[suite] = {"step": step_suite, "pipeline": pipeline_suite, "accuracy": accuracy_suite}[suite](args)
    if suite == "step":
      sections.append(STEP_HEADER + "\n" + "\n".join(_step_row_md(r) for r in results["step"]))
    elif isinstance(results[suite], dict) and "markdown" in results[suite]:
      sections.append(results[suite]["markdown"])
  if "step" in results and "pipeline" in results:
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
