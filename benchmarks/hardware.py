"""Datasheet figures of the accelerators we estimate for, and roofline arithmetic.

One table (`CHIPS`) serves the step benchmark on a real device (MFU, roofline of a measured step) and the
ahead-of-time tool (`benchmarks/aot.py`: memory against HBM, clips/s estimates for chips we do not have).
Peaks are dense (no sparsity), per chip (a TPU v4/v5p chip's two TensorCores together, as JAX shows one
device per chip there). Sources are listed per chip and in docs/accelerators.md.

float32 peaks assume `config.matmul_precision='highest'` (the trainer's default, needed for parity): on
NVIDIA GPUs that is the CUDA-core FP32 rate (no TF32); on TPUs float32 products run as 6 bfloat16 MXU passes
(jax.lax.Precision.HIGHEST), so the float32 matrix peak is a sixth of the bfloat16 one.

A CPU has no trustworthy datasheet figure inside a VM, so its peaks are *measured*: the best of a few large
matrix products (compute) and of a large array copy (bandwidth). Measured peaks flatter utilisation less than
theoretical ones would; say which was used when quoting MFU.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Optional, Tuple

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  device_kinds: Tuple[str, ...]  # jax Device.device_kind strings of this chip
  hbm_bytes: int
  bfloat16_flops: float  # dense matrix-unit peak, FLOP/s
  float32_flops: float  # at matmul precision 'highest' (see the module docstring)
  hbm_bandwidth: float  # bytes/s
  source: str
  # GPU only: what XLA's GPU compiler needs to compile without the device (GpuTargetConfig).
  gpu: Optional[dict] = None


CHIPS = {
    "tpu-v4": Chip("TPU v4", ("TPU v4",), 32 * GiB, 275e12, 275e12 / 6, 1228e9,
                   "https://cloud.google.com/tpu/docs/v4 (275 TFLOPs bf16, 32 GiB HBM2, 1,228 GB/s)"),
    "tpu-v5e": Chip("TPU v5e", ("TPU v5 lite", "TPU v5e"), 16 * GiB, 197e12, 197e12 / 6, 819e9,
                    "https://cloud.google.com/tpu/docs/v5e (197 TFLOPs bf16, 16 GiB HBM2, 819 GB/s)"),
    "tpu-v5p": Chip("TPU v5p", ("TPU v5", "TPU v5p"), 95 * GiB, 459e12, 459e12 / 6, 2765e9,
                    "https://cloud.google.com/tpu/docs/v5p (459 TFLOPs bf16, 95 GiB HBM2e, 2,765 GB/s)"),
    "tpu-v6e": Chip("TPU v6e", ("TPU v6 lite", "TPU v6e"), 32 * GiB, 918e12, 918e12 / 6, 1640e9,
                    "https://cloud.google.com/tpu/docs/v6e (918 TFLOPs bf16, 32 GiB HBM, 1,640 GB/s)"),
    "h100": Chip("NVIDIA H100 SXM 80GB", ("H100",), 80 * 10**9, 989e12, 67e12, 3.35e12,
                 "https://www.nvidia.com/en-us/data-center/h100/ (SXM: 989 TFLOPs bf16 dense, 67 TFLOPs FP32, "
                 "80 GB HBM3, 3.35 TB/s)",
                 gpu=dict(cc=(9, 0), cores=132, clock_ghz=1.98, l2=50 * 2**20, smem_block_optin=232448,
                          smem_core=233472)),
    "h200": Chip("NVIDIA H200 SXM 141GB", ("H200",), 141 * 10**9, 989e12, 67e12, 4.8e12,
                 "https://www.nvidia.com/en-us/data-center/h200/ (SXM: 989 TFLOPs bf16 dense, 67 TFLOPs FP32, "
                 "141 GB HBM3e, 4.8 TB/s)",
                 gpu=dict(cc=(9, 0), cores=132, clock_ghz=1.98, l2=50 * 2**20, smem_block_optin=232448,
                          smem_core=233472)),
    "a100": Chip("NVIDIA A100 SXM 80GB", ("A100",), 80 * 10**9, 312e12, 19.5e12, 2.039e12,
                 "https://www.nvidia.com/en-us/data-center/a100/ (SXM 80GB: 312 TFLOPs bf16 dense, 19.5 TFLOPs "
                 "FP32, 2,039 GB/s)",
                 gpu=dict(cc=(8, 0), cores=108, clock_ghz=1.41, l2=40 * 2**20, smem_block_optin=166912,
                          smem_core=167936)),
}


def chip_for_device_kind(kind: str) -> Optional[Chip]:
  """The table entry whose device kind is a prefix of (or equal to) jax's `device_kind`; None if unknown.
  Longest match first, so 'TPU v5 lite' is not taken for 'TPU v5'."""
  matches = [(len(k), chip) for chip in CHIPS.values() for k in chip.device_kinds if k.lower() in kind.lower()]
  return max(matches, key=lambda m: m[0])[1] if matches else None


def peak_flops(chip: Chip, dtype: str) -> float:
  return chip.bfloat16_flops if dtype == "bfloat16" else chip.float32_flops


def _best_time(fn, repeats):
  import jax
  jax.block_until_ready(fn())
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - start)
  return best


def measure_peaks(dtype: str = "float32", size: int = 2048, repeats: int = 5) -> dict:
  """Best observed matmul FLOP/s and copy bandwidth (bytes/s) on jax.devices()[0]."""
  import jax
  import jax.numpy as jnp

  jdtype = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
  a = jnp.ones((size, size), jdtype)
  matmul = jax.jit(lambda x: x @ x)
  flops = 2 * size**3 / _best_time(lambda: matmul(a), repeats)
  big = jnp.ones((64 * 2**20,), jnp.float32)  # 256 MiB
  copy = jax.jit(lambda x: x * 1.0001)
  bandwidth = 2 * big.nbytes / _best_time(lambda: copy(big), repeats)  # read + write
  return {"flops_per_s": flops, "bandwidth_bytes_per_s": bandwidth, "source": "measured"}


def device_peaks(dtype: str = "float32") -> dict:
  """Datasheet peaks of jax.devices()[0] when it is in `CHIPS`, else measured ones."""
  import jax

  chip = chip_for_device_kind(jax.devices()[0].device_kind)
  if chip is not None:
    return {"flops_per_s": peak_flops(chip, dtype), "bandwidth_bytes_per_s": chip.hbm_bandwidth,
            "source": f"datasheet {chip.name}"}
  return measure_peaks(dtype)


def roofline(flops: float, bytes_accessed: float, peaks: dict) -> dict:
  """Lower bound on a step's time from its FLOPs and bytes: the slower of compute and memory traffic."""
  compute_s = flops / peaks["flops_per_s"]
  memory_s = bytes_accessed / peaks["bandwidth_bytes_per_s"]
  return {"roofline_s": max(compute_s, memory_s), "compute_s": compute_s, "memory_s": memory_s,
          "bound": "compute" if compute_s >= memory_s else "memory"}
