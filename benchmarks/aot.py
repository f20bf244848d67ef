"""Compile the trainer's train and eval steps for a TPU or GPU target on this (CPU-only) machine, ahead of time.

    python -m benchmarks.aot --list
    python -m benchmarks.aot --target=v5e-8 --config=configs/ravdess.py:fold1 --config.dtype=bfloat16 \
        --config.batch_size=64 --find_largest --out=runs/aot/v5e-8.json
    python -m benchmarks.aot --target=h100-1 --config=configs/ravdess.py:fold1 --config.dtype=float32 \
        --config.batch_size=32 --config.remat=True

Like MaxText's train_compile.py: the trainer's own config (`--config=configs/ravdess.py:VARIANT` and
`--config.x=y` overrides, as `python -m avtca_jax.train` takes them; `fold1` is the real-data recipe at
224 px) plus the flags of the compile itself: the target topology, the batch probes of the search, the
output file. `config.batch_size` is the global batch, as in training: the per-device batch is
`batch_size / devices of the target`.

What a user renting a v5e-8 or an H100 wants to know before paying for it: does the step compile, which
per-device batch fits in HBM, and what throughput to expect. XLA answers all three without the hardware:

- TPU targets compile through libtpu's deviceless topologies (`pip install -r requirements-tpu.txt`);
  multi-host slices (v5e 4x4, v4-32) compile the one SPMD program every host runs.
- GPU targets compile through the CUDA plugin against a GpuTargetConfig built from `hardware.CHIPS`
  (`pip install -r requirements-gpu.txt`). Without a device there is no autotuning, so Triton GEMM fusion is
  switched off for the compile (cuBLAS GEMMs instead); the memory plan is otherwise the real one.

The steps are the trainer's: `steps.build(config, mesh)` (the one assembly of model, optimizer, state and
jitted steps; backend choices made for the target platform) on a mesh of the target's devices, with the
batch shapes of `steps.abstract_batch`.

Reported per device (JSON, with the date, machine, versions and command; `python -m benchmarks.report`
turns the reports into benchmarks/RESULTS.md):
- memory: arguments (state + batch), outputs, aliased (donated), temporaries, and the total against HBM;
- the largest per-device batch that fits (`--find_largest`: a linear memory model from two compiles, then
  compiles that confirm the prediction; TPU: the compiler's own out-of-memory verdict; GPU: the total
  against `--gpu_memory_fraction` of HBM, JAX's default preallocation being 75%);
- FLOPs and bytes accessed per clip from XLA's cost analysis (the GPU compiler gives none: those come from
  a CPU compile of the same step at the same per-device batch);
- a roofline estimate: clips/s per chip = 1 / max(FLOPs/peak, bytes/bandwidth), datasheet peaks from
  `benchmarks/hardware.py` (sources in docs/accelerators.md). An upper bound, not a measurement;
- compile time (this machine);
- with `--buffers[=N]`, the train step's N largest buffers from XLA's buffer assignment (dtype, shape, tiled
  layout, padded size, defining instruction and its op_name) and the bytes per part of the model
  (benchmarks/buffers.py; docs/accelerators.md says how to read them).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import shutil
import sys
import time
from typing import Dict, Optional, Tuple

from benchmarks import hardware, records

# Places the learning-rate schedule's epoch boundaries (constants of the program); the trainer takes it from
# its data, which an ahead-of-time compile does not read. It changes no shape or buffer.
STEPS_PER_EPOCH = 120


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


def config_for_batch(config, batch_per_device: int, num_devices: int):
  """A copy of `config` whose global batch puts `batch_per_device` clips on each of `num_devices`."""
  config = copy.deepcopy(config)
  config.batch_size = batch_per_device * num_devices
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


def compile_step(config, mesh, which: str = "train", stored_image_size: Optional[int] = None,
                 buffers: int = 0, dump_dir: str = "") -> dict:
  """Lower and compile the trainer's train (or eval) step for `mesh`; memory, cost and compile time.

  `buffers` > 0: compile with XLA's dumps (into a temporary folder) and add the `buffers` account of the
  compiled program's buffer assignment (benchmarks/buffers.py), its `buffers` largest buffers listed.
  `dump_dir`: write the dumps there and keep them (otherwise a temporary folder, removed afterwards)."""
  import tempfile
  import jax
  from jax.sharding import NamedSharding, PartitionSpec as P
  from avtca_jax import steps as steps_lib

  steps = steps_lib.build(config, mesh, steps_per_epoch=STEPS_PER_EPOCH)
  if which == "train":
    batch_size = config.batch_size
    batch = steps_lib.abstract_batch(config, batch_size, mesh, stored_image_size)
    stop_flags = jax.ShapeDtypeStruct((mesh.size,), jax.numpy.int32, sharding=NamedSharding(mesh, P("data")))
    step, args = steps.train_step, (steps.abstract_state, batch, stop_flags)
  else:
    batch_size = config.eval_batch_size or config.batch_size
    batch = steps_lib.abstract_batch(config, batch_size, mesh, stored_image_size)
    weights = jax.ShapeDtypeStruct((4,), jax.numpy.float32, sharding=NamedSharding(mesh, P()))
    step, args = steps.predict_step, (steps.abstract_state, batch, weights)
  keep_dump = bool(dump_dir) and bool(buffers)
  if keep_dump:
    os.makedirs(dump_dir, exist_ok=True)
  else:
    dump_dir = tempfile.mkdtemp(prefix="avtca_aot_dump_") if buffers else None
  start = time.perf_counter()
  lowered = step.lower(*args)
  try:
    compiled = lowered.compile(compiler_options=buffer_dump_options(dump_dir)) if dump_dir else lowered.compile()
  except Exception as error:  # XLA raises XlaRuntimeError; its text says RESOURCE_EXHAUSTED on OOM
    if dump_dir and not keep_dump:
      shutil.rmtree(dump_dir, ignore_errors=True)
    text = str(error)
    if "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text or "out of memory" in text.lower():
      raise OutOfMemory(text.splitlines()[0][:300]) from None
    raise
  seconds = time.perf_counter() - start
  hlo = compiled.as_text() or ""
  result = {"compile_s": seconds, "memory": _memory(compiled), "cost": _cost(compiled),
            "batch_per_device": batch_size // mesh.size, "devices": mesh.size, **hlo_facts(hlo)}
  if dump_dir:
    from benchmarks import buffers as buffers_lib
    try:
      result["buffers"] = buffers_lib.account_from_dump(dump_dir, top=buffers)
    finally:
      if not keep_dump:
        shutil.rmtree(dump_dir, ignore_errors=True)
  return result


def buffer_dump_options(dump_dir: str) -> dict:
  """XLA debug options that write the optimised HLO and its buffer assignment to `dump_dir`
  (`*after_optimizations.txt`, `*after_optimizations-buffer-assignment.txt` and `-values.txt`). Debug output
  only: the compiled program is the same."""
  return {"xla_dump_to": dump_dir, "xla_dump_hlo_as_text": True}


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
    reference_flops = min(_flops_per_clip(r, b) for b, (ok, r) in tried.items() if ok and not r.get("recomputes"))
    if tried[batch][0] and recomputes(tried[batch][1], batch, fixed, per_clip, reference_flops):
      # The compiler rematerialised to stay under its memory limit (XLA:TPU and XLA:GPU do, given the
      # device's memory): it fits only by recomputing activations.
      log(f"  batch {batch}/device: {tried[batch][1]['memory']['total'] / 2**30:.2f} GiB (the line's "
          f"{(fixed + batch * per_clip) / 2**30:.2f}), {_flops_per_clip(tried[batch][1], batch) / 1e9:.1f} GFLOP "
          f"per clip (smaller batches {reference_flops / 1e9:.1f}): the compiler recomputes to fit; counted "
          "as not fitting")
      tried[batch] = (False, dict(tried[batch][1], recomputes=True))
    if tried[batch][0]:
      best = max(best, batch)
    failing = [b for b, (ok, _) in tried.items() if not ok]
    if failing and min(failing) - best <= multiple:
      break
    batch = batch + multiple if tried[batch][0] else batch - multiple
  # Each probe keeps its cost analysis too: XLA's bytes per clip can change with the batch (a larger batch
  # may spill more), so the roofline is per batch.
  probes_out = [{"batch_per_device": b, "fits": ok, "total_bytes": (r or {}).get("memory", {}).get("total"),
                 "compile_s": (r or {}).get("compile_s"), "recomputes": bool((r or {}).get("recomputes")),
                 "cost": (r or {}).get("cost")}
                for b, (ok, r) in sorted(tried.items())]
  bracketed = any(not ok and b == best + multiple for b, (ok, _) in tried.items())
  return best, tried[best][1], probes_out, {"fixed_bytes": fixed, "bytes_per_clip": per_clip,
                                            "predicted_largest": predicted, "bracketed": bracketed}


def _flops_per_clip(result: dict, batch: int) -> float:
  flops = (result.get("cost") or {}).get("flops")
  return flops / batch if flops else float("inf")


def recomputes(result: dict, batch: int, fixed: float, per_clip: float, reference_flops: float = float("inf"),
               tolerance: float = 0.03) -> bool:
  """True when the compiler rematerialised activations to fit its memory limit instead of keeping them:
  the step's memory is well below the batch's linear memory model, or its FLOPs per clip are well above
  `reference_flops` (the fewest per clip of the smaller batches that fit). Either alone can show it: a
  recompute may spare little memory, and the memory model is only a line through two probes."""
  below_line = result["memory"]["total"] < (1.0 - tolerance) * (fixed + batch * per_clip)
  return below_line or _flops_per_clip(result, batch) > (1.0 + tolerance) * reference_flops


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
          f"{_largest_cell(largest)} | {_estimate_cells(est)} | {r['at_batch']['compile_s']:.0f} |")


def _estimate_cells(est: dict) -> str:
  """GFLOP/clip | GB/clip | roofline: '-' where the report has no estimate (memory-only GPU compiles)."""
  if not est:
    return "- | - | -"
  return (f"{est['flops_per_clip'] / 1e9:.1f} | {est['bytes_per_clip'] / 1e9:.2f} | "
          f"{est['roofline_clips_per_s']:.0f} ({est['bound']})")


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


DEFAULT_BUFFERS = 20  # `--buffers` without a number


@dataclasses.dataclass(frozen=True)
class Options:
  """The compile's own settings (everything else is the trainer's config)."""
  target: str = "local"
  find_largest: bool = False
  max_compiles: int = 3
  probes: Tuple[int, ...] = ()
  skip_eval_step: bool = False
  cost_from: str = ""
  skip_cpu_cost: bool = False
  gpu_memory_fraction: float = 0.75
  buffers: int = 0  # > 0: list this many of the train step's largest buffers (benchmarks/buffers.py)
  dump_dir: str = ""  # with buffers: keep XLA's dumps of the train step in this folder


def run(config, args, log=print) -> dict:
  """Compile `config`'s steps for `args.target` (a target of TARGETS or 'local'); the report as a dict."""
  import jax
  from avtca_jax import compilation_cache, steps as steps_lib
  # A deviceless executable cannot be loaded back from JAX's persistent cache (no client to load it into:
  # "PjRtCompiler must be constructed with a Client"), so the cache serves `--target=local` only.
  compilation_cache.enable(config.compilation_cache_dir if args.target == "local" else "none")
  if args.target == "local":
    target, devices = local_target()
  else:
    target = TARGETS[args.target]
    devices = target_devices(target)
  mesh = data_mesh(devices)
  chip = target.hardware
  records.require_config(config, "", num_devices=target.num_devices)
  batch_per_device = config.batch_size // target.num_devices

  def config_fn(batch, num_devices=target.num_devices):
    return config_for_batch(config, batch, num_devices)

  report = {"target": target.name, "chip": chip.name, "platform": target.platform, "devices": target.num_devices,
            "hosts": target.num_hosts, "topology": target.topology, "hbm_bytes": chip.hbm_bytes,
            "dtype": config.dtype, "remat": config.remat, "variant": config.variant, "fusion": config.fusion,
            "image_size": config.image_size, "num_frames": config.num_frames,
            "modality_dropout": config.modality_dropout, "flip_rotate": config.flip_rotate,
            "matmul_precision": config.matmul_precision,
            "conv_impl": steps_lib.layers.resolve_conv_impl(config.conv_impl, target.platform),
            "channel_shuffle": steps_lib.efficientface.shuffle_impl_for(target.platform),
            "hand_written_backward": steps_lib.layers.hand_written_backward_for(config.hand_written_backward,
                                                                               target.platform),
            "jax": jax.__version__, "peaks": {"flops_per_s": hardware.peak_flops(chip, config.dtype),
                                              "bandwidth_bytes_per_s": chip.hbm_bandwidth, "source": chip.source},
            "config": config.to_dict()}
  log(f"{target.name}: {target.num_devices} x {chip.name} on {target.num_hosts} host(s), {config.dtype}, "
      f"remat={config.remat}, {config.image_size} px, {config.modality_dropout} dropout")
  at_batch = compile_step(config, mesh, buffers=args.buffers, dump_dir=args.dump_dir)
  at_batch["fits"] = fits(at_batch, chip, target.platform, args.gpu_memory_fraction)
  report["at_batch"] = at_batch
  log(f"  train step at {batch_per_device}/device: compiled in {at_batch['compile_s']:.0f} s, total "
      f"{at_batch['memory']['total'] / 2**30:.2f} GiB")
  if at_batch.get("buffers"):
    from benchmarks import buffers as buffers_lib
    log(buffers_lib.format_account(at_batch["buffers"]))
  if not args.skip_eval_step:
    report["eval"] = compile_step(config, mesh, which="eval")
    log(f"  eval step at {report['eval']['batch_per_device']}/device: compiled in {report['eval']['compile_s']:.0f} s, "
        f"total {report['eval']['memory']['total'] / 2**30:.2f} GiB")
  best_batch, best = batch_per_device, at_batch
  if args.find_largest:
    best_batch, best, probes, model = find_largest(
        config_fn, mesh, chip, target.platform, args.gpu_memory_fraction, probes=args.probes or (),
        max_compiles=args.max_compiles, log=log, known={batch_per_device: at_batch})
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
    cost_batch = min(best_batch, 8)  # per-clip FLOPs do not depend on the batch (bytes may: an estimate)
    cpu_config = config_fn(cost_batch, num_devices=1)
    cpu_config.conv_impl = report["conv_impl"]  # the target's formulation, not the CPU's
    cost = compile_step(cpu_config, data_mesh(jax.devices("cpu")[:1]))["cost"]
    cost = {k: v * best_batch / cost_batch for k, v in cost.items()}
    cost_source = "cpu compile of the same step"
  report["cost_source"] = cost_source
  report["estimate"] = estimate(cost, best_batch, chip, config.dtype)
  report["estimate"]["at_batch_per_device"] = best_batch
  log(markdown_row(report))
  return report


def define_flags():
  """The trainer's `--config` plus the flags of the compile itself (defined only when run as a program)."""
  from absl import flags
  records.define_config_flag()
  flags.DEFINE_string("target", None, "A target of --list, or 'local' for this machine's own GPUs/TPUs.")
  flags.DEFINE_bool("list", False, "List the targets and exit.")
  flags.DEFINE_bool("find_largest", False, "Search the largest per-device batch that fits.")
  flags.DEFINE_integer("max_compiles", 3, "Compiles the batch search may add.")
  flags.DEFINE_list("probes", [], "Per-device batches to compile before the search predicts (e.g. 16).")
  flags.DEFINE_bool("skip_eval_step", False, "Compile the train step only.")
  flags.DEFINE_string("cost_from", "", "GPU targets: per-clip FLOPs and bytes from an earlier report of the "
                      "same step (its JSON).")
  flags.DEFINE_bool("skip_cpu_cost", False, "GPU targets: no CPU compile for FLOPs and bytes (memory only).")
  flags.DEFINE_float("gpu_memory_fraction", 0.75, "Share of GPU memory a program may use (JAX preallocates "
                     "75% by default).")
  flags.DEFINE_integer("buffers", 0, "List the train step's N largest buffers from XLA's buffer assignment, and "
                       "the bytes per part of the model (benchmarks/buffers.py); `--buffers` alone lists "
                       f"{DEFAULT_BUFFERS}.")
  flags.DEFINE_string("dump_dir", "", "With --buffers: keep XLA's dumps of the train step (optimised HLO, buffer "
                      "assignment) in this folder.")
  flags.DEFINE_string("out", None, "Write the JSON report here.")
  flags.DEFINE_bool("verbose", False, "Library log messages and full error tracebacks.")


def main(argv):
  del argv  # the command line is sys.argv (records.stamp); absl leaves only the program name here
  from absl import flags
  FLAGS = flags.FLAGS
  if FLAGS.list:
    for t in TARGETS.values():
      print(f"{t.name:8s} {t.num_devices:2d} x {t.hardware.name} on {t.num_hosts} host(s) ({t.topology})")
    return 0
  if FLAGS.target is None or FLAGS.target not in list(TARGETS) + ["local"]:
    sys.exit(f"error: --target={FLAGS.target}: expected one of {', '.join(sorted(TARGETS))} or local (--list)")
  if FLAGS.target != "local":
    prepare_environment(TARGETS[FLAGS.target])
  from avtca_jax import console
  console.configure_logging(FLAGS.verbose)
  args = dataclasses.replace(Options(), target=FLAGS.target, find_largest=FLAGS.find_largest,
                             max_compiles=FLAGS.max_compiles, probes=tuple(int(p) for p in FLAGS.probes),
                             skip_eval_step=FLAGS.skip_eval_step, cost_from=FLAGS.cost_from,
                             skip_cpu_cost=FLAGS.skip_cpu_cost, gpu_memory_fraction=FLAGS.gpu_memory_fraction,
                             buffers=FLAGS.buffers, dump_dir=FLAGS.dump_dir)
  stamp = records.stamp("benchmarks.aot")
  try:
    report = run(records.require_config(FLAGS.config, "--config=configs/ravdess.py:fold1"), args)
  except ImportError as error:
    extra = "requirements-gpu.txt" if FLAGS.target.startswith(("h", "a")) else "requirements-tpu.txt"
    sys.exit(f"error: {error}; install the accelerator compiler with `pip install -r {extra}`")
  report = {**stamp, **report}
  if FLAGS.out:
    records.write_json(FLAGS.out, report)
  return 0


def parse_flags(argv):
  """The trainer's flag parsing, with `--buffers` alone meaning `--buffers=DEFAULT_BUFFERS`."""
  from avtca_jax import console
  return console.parse_flags([f"--buffers={DEFAULT_BUFFERS}" if a == "--buffers" else a for a in argv])


if __name__ == "__main__":
  from absl import app
  define_flags()
  app.run(main, flags_parser=parse_flags)
