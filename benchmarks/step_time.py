"""Training-step (and inference) time of the Flax AVT-CA against the PyTorch original, side by side.

    python -m benchmarks.step_time --batch_size=8 --dtype=float32 --repeats=7

`--image_size` other than 224 is only for quick checks of the script itself. `--remat` rematerialises
EfficientFace's blocks (jax.checkpoint, JAX only): less memory for more compute, for batches that do not fit.
Each framework runs in its own subprocess (so peak memory is its own) on the same synthetic inputs:
MFCC (B, 156, 10) / (B, 10, 156) and frames (B, 15, 224, 224, 3) / (B*15, 3, 224, 224), float32 in [0, 1].
A training step is forward + backward + optimizer update (the original recipe: SGD momentum 0.9,
dampening 0.9, weight decay 1e-3) with batch-norm statistics updated. Reported: compile time (JAX, first
call minus a steady-state step), median and spread of `repeats` timed steps after `warmup` steps, eval
forward time, XLA's FLOP count for the step, and peak resident memory (CPU) or peak device memory (GPU).
Needs jax, flax, optax, numpy and torch only (no TensorFlow), so it runs on a bare accelerator machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time

from benchmarks import processes

def _summary(times):
  return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "times_s": times}


def _peak_rss_mb():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def trainer_config(batch_size, dtype, fusion, conv_impl, image_size=224, remat=False):
  """The trainer's config for a bare step comparable to the PyTorch original's: configs/ravdess.py:fold1
  (SGD as the original) without modality dropout or flip/rotate, one device."""
  from avtca_jax import train
  config = train.default_config("fold1")
  config.batch_size = config.eval_batch_size = batch_size
  config.dtype, config.fusion, config.conv_impl = dtype, fusion, conv_impl
  config.image_size, config.remat = image_size, remat
  config.modality_dropout, config.flip_rotate = "none", False
  return config


def run_jax(batch_size, dtype, fusion, repeats, warmup, conv_impl, eval_repeats, image_size=224, remat=False):
  """Times the trainer's own train step (`steps_lib.make_train_step`: forward, backward, the original's SGD,
  batch-norm statistics, metrics) and eval step on one device, on device-resident synthetic inputs."""
  import jax
  import numpy as np
  import optax

  from avtca_jax import compilation_cache, evaluate as evaluate_lib, steps as steps_lib

  cache_dir = compilation_cache.enable()  # $AVTCA_COMPILATION_CACHE=none measures cold compiles
  config = trainer_config(batch_size, dtype, fusion, conv_impl, image_size, remat)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  platform = steps_lib.mesh_platform(mesh)
  model = steps_lib.create_model(config, platform)
  tx = steps_lib.create_optimizer(config, steps_lib.create_learning_rate_fn(config, 100))
  state = steps_lib.create_train_state(config, model, tx, mesh)
  rng = np.random.default_rng(0)
  batch = steps_lib.to_devices({"mfcc": rng.normal(-20, 60, (batch_size, 156, 10)).astype(np.float32),
                            "frames": rng.integers(0, 256, (batch_size, 15, image_size, image_size, 3), np.uint8),
                            "label": rng.integers(0, 8, batch_size).astype(np.int32),
                            "mask": np.ones(batch_size, bool)}, mesh)
  step = steps_lib.make_train_step(config, model, tx, mesh)
  no_stop = jax.device_put(np.zeros(1, np.int32), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
  lowered = step.lower(state, batch, no_stop)
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()  # XLA's buffer plan: temporaries are the activations kept for the backward
  temp_mb = memory.temp_size_in_bytes / 2**20 if memory is not None else None
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
  bytes_accessed = float(cost.get("bytes accessed", float("nan"))) if cost else float("nan")

  for _ in range(warmup):
    state, step_metrics = compiled(state, batch, no_stop)
  jax.block_until_ready(state)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    state, step_metrics = compiled(state, batch, no_stop)
    jax.block_until_ready(step_metrics)
    times.append(time.perf_counter() - start)
  loss = step_metrics["loss_sum"] / step_metrics["count"]

  predict = steps_lib.make_predict_step(config, model, mesh)
  weights = jax.device_put(evaluate_lib.removal_weights(None), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  jax.block_until_ready(predict(state, batch, weights))
  eval_times = []
  for _ in range(eval_repeats):
    start = time.perf_counter()
    jax.block_until_ready(predict(state, batch, weights))
    eval_times.append(time.perf_counter() - start)

  device = jax.devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  from benchmarks import hardware
  peaks = hardware.device_peaks(dtype)
  step_median = statistics.median(times)
  bound = hardware.roofline(flops, bytes_accessed, peaks)
  return {
      "framework": "jax",
      "versions": {"jax": jax.__version__, "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else "",
                   "flax": __import__("flax").__version__, "optax": optax.__version__},
      "device": f"{device.platform}:{device.device_kind}",
      "compile_s": compile_s,
      "step": _summary(times),
      "eval_forward": _summary(eval_times),
      "step_flops": flops,
      "step_bytes_accessed": bytes_accessed,
      "peaks": peaks,
      "mfu": flops / step_median / peaks["flops_per_s"],
      "roofline": bound,
      "step_over_roofline": step_median / bound["roofline_s"],
      "clips_per_s": batch_size / step_median,
      "images_per_s": 15 * batch_size / step_median,
      "final_loss": float(loss),
      "peak_rss_mb": _peak_rss_mb(),
      "peak_device_mb": (stats or {}).get("peak_bytes_in_use", 0) / 2**20 if stats else None,
      "conv_impl": steps_lib.layers.resolve_conv_impl(conv_impl, platform),
      "remat": remat,
      "matmul_precision": config.matmul_precision,
      "compilation_cache": cache_dir,
      "xla_temp_mb": temp_mb,
  }


def run_torch(batch_size, dtype, fusion, repeats, warmup, threads, eval_repeats, image_size=224):
  import numpy as np
  import torch

  from avtca_jax.reference.torch_avtca import MultiModalCNN

  if threads:
    torch.set_num_threads(threads)
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  torch.manual_seed(0)
  model = MultiModalCNN(fusion=fusion).to(device)
  sgd = trainer_config(batch_size, dtype, fusion, "auto", image_size)  # the same optimizer settings as JAX's
  optimizer = torch.optim.SGD(model.parameters(), lr=sgd.learning_rate, momentum=sgd.momentum,
                              dampening=sgd.dampening, weight_decay=sgd.weight_decay)
  rng = np.random.default_rng(0)
  x_audio = torch.from_numpy(rng.normal(-20, 60, (batch_size, 10, 156)).astype(np.float32)).to(device)
  x_visual = torch.from_numpy(rng.uniform(0, 1, (batch_size * 15, 3, image_size, image_size)).astype(np.float32)).to(device)
  labels = torch.from_numpy(rng.integers(0, 8, batch_size)).to(device)
  autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
  sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

  def step():
    optimizer.zero_grad(set_to_none=True)
    with autocast:
      loss = torch.nn.functional.cross_entropy(model(x_audio, x_visual), labels)
    loss.backward()
    optimizer.step()
    return loss

  model.train()
  for _ in range(warmup):
    step()
  sync()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    loss = step()
    sync()
    times.append(time.perf_counter() - start)

  model.eval()
  eval_times = []
  with torch.no_grad(), autocast:
    model(x_audio, x_visual)
    for _ in range(eval_repeats):
      start = time.perf_counter()
      model(x_audio, x_visual)
      sync()
      eval_times.append(time.perf_counter() - start)
  return {
      "framework": "torch",
      "versions": {"torch": torch.__version__},
      "device": f"{device.type}:{torch.cuda.get_device_name() if device.type == 'cuda' else platform.processor()}",
      "threads": torch.get_num_threads(),
      "step": _summary(times),
      "eval_forward": _summary(eval_times),
      "clips_per_s": batch_size / statistics.median(times),
      "images_per_s": 15 * batch_size / statistics.median(times),
      "final_loss": float(loss),
      "peak_rss_mb": _peak_rss_mb(),
      "peak_device_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
  }


def measure(framework, args):
  """Runs one framework in a fresh subprocess and returns its result dict. Raises
  processes.WorkerFailed (a CalledProcessError) saying how the worker ended, e.g. killed for memory."""
  cmd = [sys.executable, "-m", "benchmarks.step_time", "--worker", framework]
  for key in ("batch_size", "dtype", "fusion", "repeats", "warmup", "conv_impl", "threads", "eval_repeats",
              "image_size"):
    cmd += [f"--{key}", str(getattr(args, key))]
  if args.remat:
    cmd.append("--remat")
  out = processes.run(cmd, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  result = json.loads(out.stdout.strip().splitlines()[-1])
  result["worker_wall_s"] = out.wall_s
  return result


def markdown(results):
  jax_r, torch_r = results.get("jax"), results.get("torch")
  lines = ["| framework | device | step median (s) | min-max (s) | clips/s | eval forward (s) | compile (s) | peak mem (MB) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for name, r in (("jax", jax_r), ("torch", torch_r)):
    if r and "error" in r:
      lines.append(f"| {name} | failed: {r['error']} | | | | | | |")
    elif r:
      mem = r["peak_device_mb"] if r.get("peak_device_mb") else r["peak_rss_mb"]
      label = r["framework"] + (" (remat)" if r.get("remat") else "")
      lines.append(f"| {label} | {r['device']} | {r['step']['median_s']:.3f} | "
                   f"{r['step']['min_s']:.3f}-{r['step']['max_s']:.3f} | {r['clips_per_s']:.2f} | "
                   f"{r['eval_forward']['median_s']:.3f} | "
                   f"{r.get('compile_s', 0):.1f} | {mem:.0f} |")
  jax_r = jax_r if jax_r and "error" not in jax_r else None
  torch_r = torch_r if torch_r and "error" not in torch_r else None
  if jax_r:
    lines.append(f"\nJAX step: {jax_r['step_flops'] / 1e9:.1f} GFLOP, {jax_r['step_bytes_accessed'] / 1e9:.1f} GB accessed "
                 f"(XLA cost analysis); MFU {100 * jax_r['mfu']:.1f}% of {jax_r['peaks']['flops_per_s'] / 1e12:.2f} "
                 f"TFLOP/s ({jax_r['peaks']['source']}); roofline {jax_r['roofline']['roofline_s']:.3f} s "
                 f"({jax_r['roofline']['bound']}-bound), step/roofline {jax_r['step_over_roofline']:.1f}x")
  if jax_r and torch_r:
    lines.append(f"\nPyTorch / JAX step-time ratio: **{torch_r['step']['median_s'] / jax_r['step']['median_s']:.2f}x**"
                 f"; eval forward ratio {torch_r['eval_forward']['median_s'] / jax_r['eval_forward']['median_s']:.2f}x")
  return "\n".join(lines)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--fusion", default="it", choices=["it", "ia", "lt"])
  p.add_argument("--image_size", type=int, default=224, help="face-crop size (224 is the real model)")
  p.add_argument("--repeats", type=int, default=7)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--eval_repeats", type=int, default=5)
  p.add_argument("--conv_impl", default="auto", choices=["auto", "slices", "grouped"])
  p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
  p.add_argument("--remat", action="store_true", help="JAX: rematerialise EfficientFace's blocks (less memory)")
  p.add_argument("--frameworks", default="jax,torch")
  p.add_argument("--json", default="", help="write the results here")
  p.add_argument("--worker", default="", help=argparse.SUPPRESS)
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  if args.worker == "jax":
    print(json.dumps(run_jax(args.batch_size, args.dtype, args.fusion, args.repeats, args.warmup, args.conv_impl,
                             args.eval_repeats, args.image_size, args.remat)))
    return
  if args.worker == "torch":
    print(json.dumps(run_torch(args.batch_size, args.dtype, args.fusion, args.repeats, args.warmup, args.threads,
                               args.eval_repeats, args.image_size)))
    return
  results = {"config": vars(args), "command": " ".join(["python -m benchmarks.step_time"] + (argv or sys.argv[1:])),
             "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu_count": os.cpu_count(),
             "python": platform.python_version()}
  for framework in args.frameworks.split(","):
    try:
      results[framework] = measure(framework, args)
    except processes.WorkerFailed as failure:
      results[framework] = failure.as_dict()
      print(f"{framework}: {failure.message}", file=sys.stderr)
  print(markdown(results))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
