"""Compile the trainer's train and eval steps for a TPU or GPU target on this (CPU-only) machine, ahead of time.

    python -m benchmarks.aot --target=v5e-8 --dtype=bfloat16 --find_largest --out=runs/aot/v5e-8.json
    python -m benchmarks.aot --target=h100-1 --dtype=float32 --batch_per_device=32 --remat
    python -m benchmarks.aot --list

What a user renting a v5e-8 or an H100 wants to know before paying for it: does the step compile, which
per-device batch fits in HBM, and what throughput to expect. XLA answers all three without the hardware
(MaxText's train_compile.py does the same for its models):

- TPU targets compile through libtpu's deviceless topologies (`pip install -r requirements-tpu.txt`);
  multi-host slices (v5e 4x4, v4-32) compile the one SPMD program every host runs.
- GPU targets compile through the CUDA plugin against a GpuTargetConfig built from `hardware.CHIPS`
  (`pip install -r requirements-gpu.txt`). Without a device there is no autotuning, so Triton GEMM fusion is
  switched off for the compile (cuBLAS GEMMs instead); the memory plan is otherwise the real one.

The step is the trainer's own: `steps_lib.create_model` (backend choices made for the target platform),
`create_optimizer`, `create_train_state`, `make_train_step` / `make_predict_step` (shard_map over a `data`
axis of every chip, donated state) and `abstract_batch`, on a mesh of the target's devices. The config is a
variant of configs/ravdess.py (default `fold1`: the real-data recipe at 224 px with softhard modality
dropout, which turns each clip into 4 model samples inside the step) with the flags' overrides.

Reported per device (JSON, and one markdown row per run for benchmarks/RESULTS.md):
- memory: arguments (state + batch), outputs, aliased (donated), temporaries, and the total against HBM;
- the largest per-device batch that fits (`--find_largest`: a linear memory model from two compiles, then
  compiles that confirm the prediction; TPU: the compiler's own out-of-memory verdict; GPU: the total
  against `--gpu_memory_fraction` of HBM, JAX's default preallocation being 75%);
- FLOPs and bytes accessed per clip from XLA's cost analysis (the GPU compiler gives none: those come from
  a CPU compile of the same step at the same per-device batch);
- a roofline estimate: clips/s per chip = 1 / max(FLOPs/peak, bytes/bandwidth), datasheet peaks from
  `benchmarks/hardware.py` (sources in docs/accelerators.md). An upper bound, not a measurement;
- compile time (this machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
from typing import Dict, Optional, Tuple

from benchmarks import hardware


@dataclasses.dataclass(frozen=True)
class Target:
  name: str
  chip: str  # key of hardware.CHIPS
  platform: str  # 'tpu' or 'cuda'
  num_devices: int
  num_hosts: int
  topology: str  # TPU: libtpu topology name; GPU: 'slices x hosts x devices per host'
  chips_per_host_bounds: Optional[Tuple[int, int, int]] = None  # TPU hosts with 8 chips (v5e-8, v6e-8)
  chip_config_name: Optional[str] = None  # 'megacore': one JAX device per v4/v5p chip (two TensorCores)

  @property
  def hardware(self) -> hardware.Chip:
    return hardware.CHIPS[self.chip]


TARGETS: Dict[str, Target] = {t.name: t for t in (
    Target("v4-8", "tpu-v4", "tpu", 4, 1, "v4:2x2x1", chip_config_name="megacore"),
    Target("v4-32", "tpu-v4", "tpu", 16, 4, "v4:2x2x4", chip_config_name="megacore"),
    Target("v5e-4", "tpu-v5e", "tpu", 4, 1, "v5e:2x2"),
    Target("v5e-8", "tpu-v5e", "tpu", 8, 1, "v5e:2x4", chips_per_host_bounds=(2, 4, 1)),
    Target("v5e-16", "tpu-v5e", "tpu", 16, 4, "v5e:4x4"),
    Target("v5p-8", "tpu-v5p", "tpu", 4, 1, "v5p:2x2x1", chip_config_name="megacore"),
    Target("v6e-8", "tpu-v6e", "tpu", 8, 1, "v6e:2x4", chips_per_host_bounds=(2, 4, 1)),
    Target("v6e-16", "tpu-v6e", "tpu", 16, 4, "v6e:4x4"),
    Target("h100-1", "h100", "cuda", 1, 1, "1x1x1"),
    Target("h100-8", "h100", "cuda", 8, 1, "1x1x8"),
    Target("h200-1", "h200", "cuda", 1, 1, "1x1x1"),
    Target("h200-8", "h200", "cuda", 8, 1, "1x1x8"),
    Target("a100-1", "a100", "cuda", 1, 1, "1x1x1"),
    Target("a100-8", "a100", "cuda", 8, 1, "1x1x8"),
)}


# ---- Environment: must be set before jax is imported ---------------------------------------------------


def prepare_environment(target: Target) -> None:
  """Process environment for a deviceless compile of `target` (call before importing jax)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  if target.platform == "tpu":
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # several compiles side by side (no device)
    # libtpu looks for the VM's metadata otherwise, and warns at length that it cannot find it.
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_WORKER_ID", "0")
  else:
    os.environ["CUDA_VISIBLE_DEVICES"] = "-1"  # never touch a local GPU: the target is described, not found
    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")  # no driver to check against
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_gpu_enable_triton_gemm" not in flags:  # Triton GEMM tiles need autotuning on a device
      os.environ["XLA_FLAGS"] = (flags + " --xla_gpu_enable_triton_gemm=false").strip()


def gpu_target_config(chip: hardware.Chip) -> str:
  """GpuTargetConfig text proto for XLA's deviceless GPU compiler, from the chip's datasheet entry."""
  g = chip.gpu
  major, minor = g["cc"]
  return f"""
gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {g['smem_core']}
  threads_per_core_limit: 2048
  core_count: {g['cores']}
  fpus_per_core: {128 if major >= 9 else 64}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(chip.hbm_bandwidth)}
  l2_cache_size: {g['l2']}
  clock_rate_ghz: {g['clock_ghz']}
  device_memory_size: {chip.hbm_bytes}
  shared_memory_per_block_optin: {g['smem_block_optin']}
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 patch: 0 }}
device_description_str: "{chip.name}"
"""


def target_devices(target: Target):
  from jax.experimental import topologies
  if target.platform == "tpu":
    kwargs = {}
    if target.chips_per_host_bounds:
      kwargs["chips_per_host_bounds"] = target.chips_per_host_bounds
    if target.chip_config_name:
      kwargs["chip_config_name"] = target.chip_config_name
    topology = topologies.get_topology_desc(platform="tpu", topology_name=target.topology, **kwargs)
  else:
    topology = topologies.get_topology_desc(platform="cuda", topology=target.topology,
                                            target_config=gpu_target_config(target.hardware))
  devices = list(topology.devices)
  if len(devices) != target.num_devices:
    raise RuntimeError(f"{target.name}: topology {target.topology} has {len(devices)} devices, expected "
                       f"{target.num_devices}")
  hosts = len({d.process_index for d in devices})
  if hosts != target.num_hosts:
    raise RuntimeError(f"{target.name}: topology {target.topology} spans {hosts} hosts, expected {target.num_hosts}")
  return devices


def data_mesh(devices):
  """One `data` axis over every device, as the trainer's create_mesh does for real devices."""
  import numpy as np
  import jax
  return jax.sharding.Mesh(np.array(devices), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


# ---- Config and compile --------------------------------------------------------------------------------


def step_config(variant: str, batch_per_device: int, num_devices: int, dtype: str, remat: bool,
                fusion: Optional[str] = None, image_size: Optional[int] = None, num_frames: Optional[int] = None,
                modality_dropout: Optional[str] = None):
  """configs/ravdess.py:`variant` with the AOT overrides; the global batch covers every device."""
  from avtca_jax import train
  config = train.default_config(variant)
  config.batch_size = batch_per_device * num_devices
  config.eval_batch_size = config.batch_size
  config.dtype = dtype
  config.remat = remat
  if fusion:
    config.fusion = fusion
  if image_size:
    config.image_size = image_size
  if num_frames:
    config.num_frames = num_frames
  if modality_dropout:
    config.modality_dropout = modality_dropout
  return config


def _memory(compiled) -> Optional[dict]:
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  out = {k: int(getattr(stats, f"{k}_size_in_bytes")) for k in
         ("argument", "output", "alias", "temp", "generated_code")}
  # Donated outputs reuse their argument buffers: what the device must hold at once.
  out["total"] = out["argument"] + out["output"] - out["alias"] + out["temp"] + out["generated_code"]
  return out


def _cost(compiled) -> Optional[dict]:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return {"flops": float(cost["flops"]), "bytes_accessed": float(cost.get("bytes accessed", 0.0))}


class OutOfMemory(Exception):
  """The compiler itself refused the program for lack of device memory."""


def compile_step(config, mesh, which: str = "train", stored_image_size: Optional[int] = None) -> dict:
  """Lower and compile the trainer's train (or eval) step for `mesh`; memory, cost and compile time."""
  import jax
  from jax.sharding import NamedSharding, PartitionSpec as P
  from avtca_jax import steps as steps_lib

  platform = steps_lib.mesh_platform(mesh)
  model = steps_lib.create_model(config, platform)
  steps_per_epoch = 120  # the schedule's boundaries only; they do not change the compiled program's shape
  tx = steps_lib.create_optimizer(config, steps_lib.create_learning_rate_fn(config, steps_per_epoch))
  state = steps_lib.create_train_state(config, model, tx, mesh, abstract=True)
  batch = steps_lib.abstract_batch(config, config.batch_size, mesh, stored_image_size)
  if which == "train":
    step = steps_lib.make_train_step(config, model, tx, mesh)
    stop_flags = jax.ShapeDtypeStruct((mesh.size,), jax.numpy.int32, sharding=NamedSharding(mesh, P("data")))
    args = (state, batch, stop_flags)
  else:
    step = steps_lib.make_predict_step(config, model, mesh)
    batch = {k: v for k, v in batch.items()}
    args = (state, batch, jax.ShapeDtypeStruct((4,), jax.numpy.float32, sharding=NamedSharding(mesh, P())))
  start = time.perf_counter()
  lowered = step.lower(*args)
  try:
    compiled = lowered.compile()
  except Exception as error:  # XLA raises XlaRuntimeError; its text says RESOURCE_EXHAUSTED on OOM
    text = str(error)
    if "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text or "out of memory" in text.lower():
      raise OutOfMemory(text.splitlines()[0][:300]) from None
    raise
  seconds = time.perf_counter() - start
  hlo = compiled.as_text() or ""
  return {"compile_s": seconds, "memory": _memory(compiled), "cost": _cost(compiled),
          "batch_per_device": config.batch_size // mesh.size, "devices": mesh.size, **hlo_facts(hlo)}


def hlo_facts(hlo: str) -> dict:
  """What the compiled (partitioned) program itself says: how many devices it is partitioned over, the
  per-device shapes of its entry parameters, and its all-reduces. Checked by tests/test_aot.py."""
  partitions = re.search(r"num_partitions=(\d+)", hlo)
  entry = hlo[hlo.find("\nENTRY"):] if "\nENTRY" in hlo else ""
  entry = entry[:entry.find("\n}")] if "\n}" in entry else entry
  parameters = re.findall(r"= ([a-z0-9]+\[[\d,]*\])\S* parameter\((\d+)\)", entry)
  return {"num_partitions": int(partitions.group(1)) if partitions else 1,
          "entry_parameters": [shape for shape, _ in sorted(parameters, key=lambda p: int(p[1]))],
          "all_reduce_ops": len(re.findall(r"\ball-reduce(?:-start)?\(", hlo))}


def fits(result: dict, chip: hardware.Chip, platform: str, gpu_memory_fraction: float) -> bool:
  memory = result.get("memory")
  if memory is None:
    return True
  budget = chip.hbm_bytes * (gpu_memory_fraction if platform == "cuda" else 1.0)
  return memory["total"] <= budget


def _try(config_fn, mesh, chip, platform, fraction, batch, log) -> Tuple[bool, Optional[dict]]:
  try:
    result = compile_step(config_fn(batch), mesh)
  except OutOfMemory as error:
    log(f"  batch {batch}/device: compiler out of memory ({error})")
    return False, None
  ok = fits(result, chip, platform, fraction)
  log(f"  batch {batch}/device: total {result['memory']['total'] / 2**30:.2f} GiB "
      f"({'fits' if ok else 'does not fit'}), compile {result['compile_s']:.0f} s")
  return ok, result


def batch_bytes_per_device(config, batch_per_device: int) -> int:
  """Bytes of one device's share of the input batch (a step argument that grows with the batch)."""
  import numpy as np
  import jax
  from avtca_jax import steps as steps_lib
  mesh = data_mesh(jax.devices("cpu")[:1])
  shapes = steps_lib.abstract_batch(config, batch_per_device, mesh)
  return int(sum(np.prod(s.shape) * np.dtype(s.dtype).itemsize for s in shapes.values()))


def find_largest(config_fn, mesh, chip, platform, fraction, probes=(8,), multiple: int = 8,
                 max_compiles: int = 4, log=print, known: Optional[Dict[int, dict]] = None
                 ) -> Tuple[int, dict, list]:
  """Largest per-device batch (a multiple of `multiple`) whose train step fits.

  Memory is the state (parameters, batch statistics, optimizer: independent of the batch) plus what grows
  with the batch (inputs, activations kept for the backward). With one probe, total(b) = state + b *
  (total(probe) - state) / probe (conservative when the temporaries have a fixed part); with two or more,
  a straight line through the two largest that fit. The predicted largest batch is compiled to confirm it,
  then the search steps one multiple up (if it fits) or down (if not) until the boundary is bracketed or
  `max_compiles` compiles are spent. Returns (batch, its result, every probe with its verdict).
  """
  tried = {b: (fits(r, chip, platform, fraction), r) for b, r in (known or {}).items()}
  for batch in probes:
    if batch not in tried:
      tried[batch] = _try(config_fn, mesh, chip, platform, fraction, batch, log)
  fitting = sorted(b for b, (ok, _) in tried.items() if ok)
  if not fitting:
    raise RuntimeError(f"none of {sorted(tried)} clips per device fit")
  budget = chip.hbm_bytes * (fraction if platform == "cuda" else 1.0)
  b1 = fitting[-1]
  r1 = tried[b1][1]["memory"]["total"]
  if len(fitting) >= 2:
    b0 = fitting[-2]
    per_clip = (r1 - tried[b0][1]["memory"]["total"]) / (b1 - b0)
  else:
    state = tried[b1][1]["memory"]["argument"] - batch_bytes_per_device(config_fn(b1), b1)
    per_clip = (r1 - state) / b1
  fixed = r1 - b1 * per_clip
  batch = max(int((budget - fixed) / max(per_clip, 1.0)) // multiple * multiple, multiple)
  predicted = batch
  log(f"  memory model: {fixed / 2**30:.2f} GiB + {per_clip / 2**30:.3f} GiB per clip -> predicted largest "
      f"{batch} clips per device")
  best = fitting[-1]
  while len(tried) < max_compiles + len(known or {}) and batch not in tried:
    tried[batch] = _try(config_fn, mesh, chip, platform, fraction, batch, log)
    if tried[batch][0] and recomputes(tried[batch][1], batch, fixed, per_clip):
      # Below the line: the compiler rematerialised to stay under its memory limit (XLA:GPU does, given
      # the device's memory): it fits only by recomputing activations, i.e. more FLOPs per clip.
      log(f"  batch {batch}/device: {tried[batch][1]['memory']['total'] / 2**30:.2f} GiB is below the line's "
          f"{(fixed + batch * per_clip) / 2**30:.2f} GiB: the compiler recomputes to fit; counted as not fitting")
      tried[batch] = (False, dict(tried[batch][1], recomputes=True))
    if tried[batch][0]:
      best = max(best, batch)
    failing = [b for b, (ok, _) in tried.items() if not ok]
    if failing and min(failing) - best <= multiple:
      break
    batch = batch + multiple if tried[batch][0] else batch - multiple
  # Each probe keeps its cost analysis too: XLA's bytes per clip change with the batch (the TPU compile of
  # fold1 reads about twice the bytes per clip at 16 clips per chip as at 8), so the roofline is per batch.
  probes_out = [{"batch_per_device": b, "fits": ok, "total_bytes": (r or {}).get("memory", {}).get("total"),
                 "compile_s": (r or {}).get("compile_s"), "recomputes": bool((r or {}).get("recomputes")),
                 "cost": (r or {}).get("cost")}
                for b, (ok, r) in sorted(tried.items())]
  bracketed = any(not ok and b == best + multiple for b, (ok, _) in tried.items())
  return best, tried[best][1], probes_out, {"fixed_bytes": fixed, "bytes_per_clip": per_clip,
                                            "predicted_largest": predicted, "bracketed": bracketed}


def recomputes(result: dict, batch: int, fixed: float, per_clip: float, tolerance: float = 0.03) -> bool:
  """True when a compiled step's memory is well below the batch's linear memory model: the compiler
  rematerialised activations to fit its memory limit instead of keeping them."""
  return result["memory"]["total"] < (1.0 - tolerance) * (fixed + batch * per_clip)


def estimate(cost: dict, batch_per_device: int, chip: hardware.Chip, dtype: str) -> dict:
  """Per-clip FLOPs and bytes, and the roofline clips/s of one chip."""
  flops = cost["flops"] / batch_per_device
  bytes_accessed = cost["bytes_accessed"] / batch_per_device
  peaks = {"flops_per_s": hardware.peak_flops(chip, dtype), "bandwidth_bytes_per_s": chip.hbm_bandwidth}
  bound = hardware.roofline(flops, bytes_accessed, peaks)
  return {"flops_per_clip": flops, "bytes_per_clip": bytes_accessed, "roofline_clips_per_s": 1.0 / bound["roofline_s"],
          "bound": bound["bound"]}


# ---- Command line --------------------------------------------------------------------------------------


def markdown_row(report: dict) -> str:
  r = report
  mem = r["at_batch"]["memory"]
  largest = r.get("largest") or {}
  est = r.get("estimate") or {}
  gib = lambda b: f"{b / 2**30:.1f}" if b is not None else "-"
  return (f"| {r['target']} | {r['devices']} ({r['hosts']} host{'s' if r['hosts'] > 1 else ''}) | {r['dtype']} | "
          f"{'yes' if r['remat'] else 'no'} | {r['at_batch']['batch_per_device']} | {gib(mem['argument'])} / "
          f"{gib(mem['temp'])} / {gib(mem['total'])} of {gib(r['hbm_bytes'])} | "
          f"{_largest_cell(largest)} | "
          f"{est.get('flops_per_clip', 0) / 1e9:.1f} | {est.get('bytes_per_clip', 0) / 1e9:.2f} | "
          f"{est.get('roofline_clips_per_s', 0):.0f} ({est.get('bound', '-')}) | {r['at_batch']['compile_s']:.0f} |")


def _largest_cell(largest: dict) -> str:
  """'24' when the boundary was compiled on both sides, '24 (predicted 32)' when the prediction is above the
  largest batch compiled to fit, '>= 16 (predicted 32)' when nothing larger was compiled."""
  if not largest:
    return "-"
  batch = largest["batch_per_device"]
  model = largest.get("memory_model") or {}
  predicted = model.get("predicted_largest")
  if model.get("bracketed"):
    return str(batch)
  if predicted is not None and predicted > batch:
    compiled_above = any(not p["fits"] and p["batch_per_device"] > batch for p in largest.get("probes", []))
    return f"{batch} (predicted {predicted})" if compiled_above else f">= {batch} (predicted {predicted})"
  return str(batch)


MARKDOWN_HEADER = ("| target | devices | dtype | remat | batch/device | args / temp / total GiB of HBM | "
                   "largest batch/device | GFLOP/clip | GB/clip | roofline clips/s/chip | compile s |\n"
                   "|---|---|---|---|---|---|---|---|---|---|---|")


def local_target():
  """The devices of this machine as a target (`--target=local`: on a GPU or TPU host, compile for its real
  devices, with autotuning, to set the estimate beside measured step times)."""
  import jax
  devices = jax.devices()
  kind = devices[0].device_kind
  chip = hardware.chip_for_device_kind(kind)
  if chip is None:
    raise SystemExit(f"error: no datasheet entry for device kind {kind!r} in benchmarks/hardware.py")
  key = next(k for k, c in hardware.CHIPS.items() if c is chip)
  platform = "tpu" if devices[0].platform == "tpu" else "cuda"
  return Target("local", key, platform, len(devices), jax.process_count(), "local"), devices


def run(args, log=print) -> dict:
  import jax
  from avtca_jax import compilation_cache, steps as steps_lib
  # A deviceless executable cannot be loaded back from JAX's persistent cache (no client to load it into:
  # "PjRtCompiler must be constructed with a Client"), so the cache serves `--target=local` only.
  compilation_cache.enable(args.compilation_cache if args.target == "local" else "none")
  if args.target == "local":
    target, devices = local_target()
  else:
    target = TARGETS[args.target]
    devices = target_devices(target)
  mesh = data_mesh(devices)
  chip = target.hardware

  def config_fn(batch, num_devices=target.num_devices):
    config = step_config(args.variant, batch, num_devices, args.dtype, args.remat, args.fusion,
                         args.image_size, args.num_frames, args.modality_dropout)
    if args.conv_impl:
      config.conv_impl = args.conv_impl
    if args.hand_written_backward:
      config.hand_written_backward = args.hand_written_backward
    if args.bare:  # the step benchmarks.step_time times against PyTorch's
      config.modality_dropout, config.flip_rotate = "none", False
    return config

  config = config_fn(args.batch_per_device)
  report = {"target": target.name, "chip": chip.name, "platform": target.platform, "devices": target.num_devices,
            "hosts": target.num_hosts, "topology": target.topology, "hbm_bytes": chip.hbm_bytes,
            "dtype": args.dtype, "remat": args.remat, "variant": args.variant, "fusion": config.fusion,
            "image_size": config.image_size, "num_frames": config.num_frames,
            "modality_dropout": config.modality_dropout, "flip_rotate": config.flip_rotate,
            "matmul_precision": config.matmul_precision,
            "conv_impl": steps_lib.layers.resolve_conv_impl(config.conv_impl, target.platform),
            "jax": jax.__version__, "peaks": {"flops_per_s": hardware.peak_flops(chip, args.dtype),
                                              "bandwidth_bytes_per_s": chip.hbm_bandwidth, "source": chip.source}}
  log(f"{target.name}: {target.num_devices} x {chip.name} on {target.num_hosts} host(s), {args.dtype}, "
      f"remat={args.remat}, {config.image_size} px, {config.modality_dropout} dropout")
  report["hand_written_backward"] = steps_lib.layers.hand_written_backward_for(config.hand_written_backward,
                                                                          target.platform)
  at_batch = compile_step(config, mesh)
  at_batch["fits"] = fits(at_batch, chip, target.platform, args.gpu_memory_fraction)
  report["at_batch"] = at_batch
  log(f"  train step at {args.batch_per_device}/device: compiled in {at_batch['compile_s']:.0f} s, total "
      f"{at_batch['memory']['total'] / 2**30:.2f} GiB")
  if not args.skip_eval_step:
    report["eval"] = compile_step(config, mesh, which="eval")
    log(f"  eval step at {args.batch_per_device}/device: compiled in {report['eval']['compile_s']:.0f} s, total "
        f"{report['eval']['memory']['total'] / 2**30:.2f} GiB")
  best_batch, best = args.batch_per_device, at_batch
  if args.find_largest:
    best_batch, best, probes, model = find_largest(
        config_fn, mesh, chip, target.platform, args.gpu_memory_fraction, probes=args.probes or (),
        max_compiles=args.max_compiles, log=log, known={args.batch_per_device: at_batch})
    report["largest"] = {"batch_per_device": best_batch, "memory": best["memory"], "probes": probes,
                         "memory_model": model}
  cost, cost_source = best.get("cost"), target.platform
  if cost is None and args.skip_cpu_cost:
    report["estimate"] = None
    log(markdown_row(report))
    return report
  if cost is None and args.cost_from:  # per-clip FLOPs and bytes of the same step from an earlier report
    with open(args.cost_from) as f:
      donor = json.load(f)
    same = all(donor.get(k) == report.get(k) for k in ("dtype", "remat", "variant", "fusion", "image_size", "num_frames",
                                                  "modality_dropout", "flip_rotate", "conv_impl", "matmul_precision",
                                                  "hand_written_backward"))
    if not same:
      raise SystemExit(f"error: --cost_from {args.cost_from} is a report of another step configuration")
    est = donor["estimate"]
    cost = {"flops": est["flops_per_clip"] * best_batch, "bytes_accessed": est["bytes_per_clip"] * best_batch}
    cost_source = f"{donor['cost_source']} (from {os.path.basename(args.cost_from)})"
  if cost is None:  # the GPU compiler gives no cost analysis: the same step compiled for the CPU
    cost_batch = min(best_batch, 8)  # FLOPs and bytes per clip do not depend on the batch
    cpu_config = config_fn(cost_batch, num_devices=1)
    cpu_config.conv_impl = report["conv_impl"]  # the target's formulation, not the CPU's
    cost = compile_step(cpu_config, data_mesh(jax.devices("cpu")[:1]))["cost"]
    cost = {k: v * best_batch / cost_batch for k, v in cost.items()}
    cost_source = "cpu compile of the same step"
  report["cost_source"] = cost_source
  report["estimate"] = estimate(cost, best_batch, chip, args.dtype)
  report["estimate"]["at_batch_per_device"] = best_batch
  log(markdown_row(report))
  return report


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--target", choices=sorted(TARGETS) + ["local"],
                      help="a target of --list, or 'local' for this machine's own GPUs/TPUs")
  parser.add_argument("--bare", action="store_true",
                      help="no modality dropout or flip/rotate: the step benchmarks.step_time times")
  parser.add_argument("--list", action="store_true", help="list the targets and exit")
  parser.add_argument("--table", nargs="+", default=None, metavar="JSON",
                      help="print the markdown table of saved reports and exit")
  parser.add_argument("--variant", default="fold1", help="configs/ravdess.py variant (default fold1)")
  parser.add_argument("--batch_per_device", type=int, default=8)
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
  parser.add_argument("--remat", action="store_true")
  parser.add_argument("--fusion", choices=("it", "ia", "lt"), default=None)
  parser.add_argument("--image_size", type=int, default=None)
  parser.add_argument("--num_frames", type=int, default=None)
  parser.add_argument("--modality_dropout", choices=("softhard", "noise", "none"), default=None)
  parser.add_argument("--find_largest", action="store_true", help="search the largest per-device batch")
  parser.add_argument("--max_compiles", type=int, default=3, help="compiles the batch search may add")
  parser.add_argument("--probes", type=lambda v: tuple(int(x) for x in v.split(",") if x), default=(),
                      help="extra per-device batches to compile before predicting (e.g. 16)")
  parser.add_argument("--skip_eval_step", action="store_true", help="compile the train step only")
  parser.add_argument("--cost_from", default="", metavar="JSON",
                      help="GPU targets: per-clip FLOPs and bytes from an earlier report of the same step")
  parser.add_argument("--skip_cpu_cost", action="store_true",
                      help="GPU targets: no CPU compile for FLOPs and bytes (memory only)")
  parser.add_argument("--conv_impl", choices=("auto", "grouped", "slices"), default=None,
                      help="depthwise-conv form (default: the config's 'auto', chosen for the target platform)")
  parser.add_argument("--hand_written_backward", choices=("auto", "on", "off"), default=None,
                      help="batch-norm and max-pool backward passes written for XLA:CPU (auto: CPU only)")
  parser.add_argument("--gpu_memory_fraction", type=float, default=0.75,
                      help="share of GPU memory a program may use (JAX preallocates 75%% by default)")
  parser.add_argument("--compilation_cache", default="",
                      help="JAX's persistent compilation cache folder ('' = the project default, 'none' = off)")
  parser.add_argument("--out", default=None, help="write the JSON report here")
  args = parser.parse_args(argv)
  if not args.list and not args.table and not args.target:
    parser.error("--target is required (see --list)")
  return args


def main(argv=None):
  args = parse_args(argv)
  if args.table:
    print(MARKDOWN_HEADER)
    for path in args.table:
      with open(path) as f:
        print(markdown_row(json.load(f)))
    return 0
  if args.list:
    for t in TARGETS.values():
      print(f"{t.name:8s} {t.num_devices:2d} x {t.hardware.name} on {t.num_hosts} host(s) ({t.topology})")
    return 0
  if args.target != "local":
    prepare_environment(TARGETS[args.target])
  try:
    report = run(args)
  except ImportError as error:
    extra = "requirements-gpu.txt" if args.target.startswith(("h", "a")) else "requirements-tpu.txt"
    sys.exit(f"error: {error}; install the accelerator compiler with `pip install -r {extra}`")
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(report, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
