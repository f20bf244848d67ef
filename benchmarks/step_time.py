"""Training-step (and inference) time of the trainer's step against the PyTorch original, side by side.

    python -m benchmarks.step_time --config=configs/ravdess.py:fold1 --config.modality_dropout=none \
        --config.flip_rotate=False --config.batch_size=8 --repeats=7
    python -m benchmarks.step_time --config=configs/ravdess.py:fold1 --config.modality_dropout=none \
        --config.flip_rotate=False --config.batch_size=32 --config.remat=True --frameworks=jax

The JAX step is the trainer's own for the config (`steps.build`: forward, backward, the configured optimizer,
batch-norm statistics, metrics, on one device). The PyTorch step is the original's: forward + backward + its
SGD (the config's learning rate, momentum, dampening, weight decay) with batch-norm statistics updated, at the
config's batch size, crop size, fusion and dtype (bfloat16: autocast). The original has no modality dropout
or flip/rotate, so a comparison with PyTorch needs a config without them (`--config.modality_dropout=none
--config.flip_rotate=False`); with either on, `--frameworks=jax` times the JAX step alone.

Each framework runs in its own subprocess (so peak memory is its own) on the same synthetic inputs:
MFCC (B, 156, 10) / (B, 10, 156) and frames (B, 15, S, S, 3) uint8 / (B*15, 3, S, S) float32. Reported:
compile time (JAX), median and spread of `--repeats` timed steps after `--warmup` steps, eval forward time,
XLA's FLOP count for the step, and peak resident memory (CPU) or peak device memory (GPU). Needs jax, flax,
optax, numpy, ml_collections and torch only (no TensorFlow), so it runs on a bare accelerator machine.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import resource
import statistics
import sys
import time

from benchmarks import processes, records


@dataclasses.dataclass(frozen=True)
class Timing:
  """How a step is timed (everything about the step itself is the trainer's config)."""
  repeats: int = 7
  warmup: int = 2
  eval_repeats: int = 5
  threads: int = 0  # torch intra-op threads (0: torch's default)


def _summary(times):
  return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "times_s": times}


def _peak_rss_mb():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def has_augmentation(config) -> bool:
  """True when the trainer's step does work the PyTorch original's step does not (modality dropout,
  flip/rotate): the two step times are then not comparable."""
  return config.modality_dropout != "none" or bool(config.flip_rotate)


def run_jax(config, timing: Timing):
  """Times the trainer's own train step and predict step (`steps.build`) for `config` on one device, on
  device-resident synthetic inputs."""
  import jax
  import numpy as np
  import optax

  from avtca_jax import compilation_cache, evaluate as evaluate_lib, steps as steps_lib

  cache_dir = compilation_cache.enable(config.compilation_cache_dir)  # 'none' measures cold compiles
  batch_size, image_size = config.batch_size, config.image_size
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  steps = steps_lib.build(config, mesh)
  state = steps.initial_state()
  rng = np.random.default_rng(0)
  batch = steps_lib.to_devices({"mfcc": rng.normal(-20, 60, (batch_size, 156, 10)).astype(np.float32),
                                "frames": rng.integers(0, 256, (batch_size, config.num_frames, image_size,
                                                                image_size, 3), np.uint8),
                                "label": rng.integers(0, 8, batch_size).astype(np.int32),
                                "mask": np.ones(batch_size, bool)}, mesh)
  if config.model == "audio":
    batch.pop("frames")
  no_stop = jax.device_put(np.zeros(1, np.int32), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
  lowered = steps.train_step.lower(state, batch, no_stop)
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()  # XLA's buffer plan: temporaries are the activations kept for the backward
  temp_mb = memory.temp_size_in_bytes / 2**20 if memory is not None else None
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
  bytes_accessed = float(cost.get("bytes accessed", float("nan"))) if cost else float("nan")

  for _ in range(timing.warmup):
    state, step_metrics = compiled(state, batch, no_stop)
  jax.block_until_ready(state)
  times = []
  for _ in range(timing.repeats):
    start = time.perf_counter()
    state, step_metrics = compiled(state, batch, no_stop)
    jax.block_until_ready(step_metrics)
    times.append(time.perf_counter() - start)
  loss = step_metrics["loss_sum"] / step_metrics["count"]

  weights = jax.device_put(evaluate_lib.removal_weights(None), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  jax.block_until_ready(steps.predict_step(state, batch, weights))
  eval_times = []
  for _ in range(timing.eval_repeats):
    start = time.perf_counter()
    jax.block_until_ready(steps.predict_step(state, batch, weights))
    eval_times.append(time.perf_counter() - start)

  device = jax.devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  from benchmarks import hardware
  peaks = hardware.device_peaks(config.dtype)
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
      "images_per_s": config.num_frames * batch_size / step_median,
      "final_loss": float(loss),
      "peak_rss_mb": _peak_rss_mb(),
      "peak_device_mb": (stats or {}).get("peak_bytes_in_use", 0) / 2**20 if stats else None,
      "conv_impl": steps_lib.layers.resolve_conv_impl(config.conv_impl, steps_lib.mesh_platform(mesh)),
      "remat": config.remat,
      "matmul_precision": config.matmul_precision,
      "compilation_cache": "on" if cache_dir else "off",
      "xla_temp_mb": temp_mb,
  }


def run_torch(config, timing: Timing):
  """The PyTorch original's training step and eval forward at the config's batch, crop size, fusion, dtype
  and SGD settings."""
  import numpy as np
  import torch

  from avtca_jax.reference.torch_avtca import MultiModalCNN

  if has_augmentation(config):
    raise ValueError("the PyTorch original's step has no modality dropout or flip/rotate: compare with "
                     "--config.modality_dropout=none --config.flip_rotate=False (or --frameworks=jax)")
  batch_size, dtype, image_size = config.batch_size, config.dtype, config.image_size
  repeats, warmup, eval_repeats = timing.repeats, timing.warmup, timing.eval_repeats
  if timing.threads:
    torch.set_num_threads(timing.threads)
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  torch.manual_seed(0)
  model = MultiModalCNN(fusion=config.fusion).to(device)
  optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=config.momentum,
                              dampening=config.dampening, weight_decay=config.weight_decay)
  rng = np.random.default_rng(0)
  x_audio = torch.from_numpy(rng.normal(-20, 60, (batch_size, 10, 156)).astype(np.float32)).to(device)
  frames = batch_size * config.num_frames
  x_visual = torch.from_numpy(rng.uniform(0, 1, (frames, 3, image_size, image_size)).astype(np.float32)).to(device)
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
      "images_per_s": config.num_frames * batch_size / statistics.median(times),
      "final_loss": float(loss),
      "peak_rss_mb": _peak_rss_mb(),
      "peak_device_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
  }


def measure(framework, config, timing: Timing = Timing()):
  """Runs one framework in a fresh subprocess and returns its result dict. Raises
  processes.WorkerFailed (a CalledProcessError) saying how the worker ended, e.g. killed for memory."""
  cmd = [sys.executable, "-m", "benchmarks.step_time", f"--worker={framework}",
         f"--worker_config={config.to_json()}", f"--repeats={timing.repeats}", f"--warmup={timing.warmup}",
         f"--eval_repeats={timing.eval_repeats}", f"--threads={timing.threads}"]
  out = processes.run(cmd, cwd=str(records.REPO))
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


def define_flags():
  """The trainer's `--config` plus how to time (defined only when run as a program)."""
  from absl import flags
  records.define_config_flag()
  flags.DEFINE_integer("repeats", 7, "Timed training steps.")
  flags.DEFINE_integer("warmup", 2, "Untimed steps before them.")
  flags.DEFINE_integer("eval_repeats", 5, "Timed eval forward passes.")
  flags.DEFINE_integer("threads", 0, "torch intra-op threads (0: torch's default).")
  flags.DEFINE_list("frameworks", ["jax", "torch"], "jax, torch or both.")
  flags.DEFINE_string("json", "", "Write the results here (with date, machine, versions and command).")
  flags.DEFINE_string("worker", "", "(internal) time one framework in this process.")
  flags.DEFINE_string("worker_config", "", "(internal) the config of a worker, as JSON.")


def main(argv):
  del argv  # the command line is sys.argv (records.stamp); absl leaves only the program name here
  from absl import flags
  FLAGS = flags.FLAGS
  timing = Timing(FLAGS.repeats, FLAGS.warmup, FLAGS.eval_repeats, FLAGS.threads)
  if FLAGS.worker:
    config = records.config_from_json(FLAGS.worker_config)
    print(json.dumps({"jax": run_jax, "torch": run_torch}[FLAGS.worker](config, timing)))
    return
  config = records.require_config(FLAGS.config, "--config=configs/ravdess.py:fold1 "
                                  "--config.modality_dropout=none --config.flip_rotate=False")
  if "torch" in FLAGS.frameworks and has_augmentation(config):
    sys.exit("error: --frameworks includes torch, whose original step has no modality dropout or flip/rotate: "
             "add --config.modality_dropout=none --config.flip_rotate=False, or time --frameworks=jax alone")
  results = {**records.stamp("benchmarks.step_time"), "timing": dataclasses.asdict(timing),
             "config": config.to_dict()}
  for framework in FLAGS.frameworks:
    try:
      results[framework] = measure(framework, config, timing)
    except processes.WorkerFailed as failure:
      results[framework] = failure.as_dict()
      print(f"{framework}: {failure.message}", file=sys.stderr)
  print(markdown(results))
  if FLAGS.json:
    records.write_json(FLAGS.json, results)


if __name__ == "__main__":
  from absl import app
  from avtca_jax import console
  define_flags()
  app.run(main, flags_parser=console.parse_flags)
