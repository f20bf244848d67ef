"""Measured step times beside the ahead-of-time estimate for the same device: one markdown table.

    python -m benchmarks.side_by_side gpu_step_float32.json gpu_step_bfloat16.json aot_local_*.json

Inputs: step-suite results (`benchmarks.run --suite=step --out=...`) and `benchmarks.aot --target=local`
reports of the same config. For each measured row: JAX and PyTorch step times and their ratio, JAX clips/s, the roofline clips/s
of the same step from the AOT report of that dtype (per-clip FLOPs and bytes, datasheet peaks), and the share
of the roofline reached (the last columns). Used by benchmarks/gpu.sh.
"""

from __future__ import annotations

import json
import sys


def load(paths):
  steps, estimates = [], {}
  for path in paths:
    try:
      with open(path) as f:
        data = json.load(f)
    except (OSError, ValueError) as error:
      print(f"skipped {path}: {error}", file=sys.stderr)
      continue
    if "estimate" in data:
      estimates[data["dtype"]] = data
    else:
      steps.extend(r for r in data.get("step", []) if isinstance(r, dict))
  return steps, estimates


def table(steps, estimates) -> str:
  lines = ["| dtype | batch | JAX step (s) | PyTorch step (s) | PyTorch / JAX | JAX clips/s | roofline clips/s | "
           "% of roofline | largest batch (AOT) |", "|---|---|---|---|---|---|---|---|---|"]
  for row in steps:
    jax_r, torch_r = row.get("jax", {}), row.get("torch", {})
    if "step" not in jax_r:
      continue
    j = jax_r["step"]["median_s"]
    t = torch_r["step"]["median_s"] if "step" in torch_r else None
    est = estimates.get(row["dtype"], {})
    roof = (est.get("estimate") or {}).get("roofline_clips_per_s")
    clips = row["batch_size"] / j
    lines.append(f"| {row['dtype']} | {row['batch_size']} | {j:.4f} | {f'{t:.4f}' if t else '-'} | "
                 f"{f'{t / j:.2f}x' if t else '-'} | {clips:.1f} | {f'{roof:.0f}' if roof else '-'} | "
                 f"{f'{100 * clips / roof:.0f}%' if roof else '-'} | "
                 f"{(est.get('largest') or {}).get('batch_per_device', '-')} |")
  return "\n".join(lines)


def main(argv=None):
  steps, estimates = load(argv if argv is not None else sys.argv[1:])
  print(table(steps, estimates))


if __name__ == "__main__":
  main()
