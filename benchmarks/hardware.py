"""Peak compute and memory bandwidth of the current JAX device, for MFU and roofline estimates.

Accelerators use their datasheet peaks (dense, no sparsity). A CPU has no trustworthy datasheet figure
inside a VM, so its peaks are *measured*: the best of a few large matrix products (compute) and of a large
array copy (bandwidth). Measured peaks flatter utilisation less than theoretical ones would; say which was
used when quoting MFU.
"""

from __future__ import annotations

import time

# (float32 non-tensor-core, bf16 dense tensor-core) FLOP/s, and HBM bytes/s. NVIDIA datasheets (SXM parts);
# TPU figures from the Cloud TPU system-architecture pages.
DATASHEET = {
    "H100": {"float32": 67e12, "bfloat16": 989e12, "bandwidth": 3.35e12},
    "H200": {"float32": 67e12, "bfloat16": 989e12, "bandwidth": 4.8e12},
    "A100": {"float32": 19.5e12, "bfloat16": 312e12, "bandwidth": 2.0e12},
    "TPU v4": {"float32": 275e12, "bfloat16": 275e12, "bandwidth": 1.2e12},
    "TPU v5 lite": {"float32": 197e12, "bfloat16": 197e12, "bandwidth": 0.82e12},
    "TPU v5p": {"float32": 459e12, "bfloat16": 459e12, "bandwidth": 2.76e12},
    "TPU v6 lite": {"float32": 918e12, "bfloat16": 918e12, "bandwidth": 1.64e12},
}


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
  import jax

  kind = jax.devices()[0].device_kind
  for name, peaks in DATASHEET.items():
    if name.lower() in kind.lower():
      return {"flops_per_s": peaks[dtype], "bandwidth_bytes_per_s": peaks["bandwidth"], "source": f"datasheet {name}"}
  return measure_peaks(dtype)


def roofline(flops: float, bytes_accessed: float, peaks: dict) -> dict:
  compute_s = flops / peaks["flops_per_s"]
  memory_s = bytes_accessed / peaks["bandwidth_bytes_per_s"]
  return {"roofline_s": max(compute_s, memory_s), "compute_s": compute_s, "memory_s": memory_s,
          "bound": "compute" if compute_s >= memory_s else "memory"}
