#!/usr/bin/env bash
# The accelerator table of docs/accelerators.md and benchmarks/RESULTS.md: the trainer's fold1 step (224 px,
# softhard dropout, flip + rotation, bfloat16) compiled ahead of time for every target, one JSON report each.
#   bash benchmarks/aot_targets.sh                       # every target below, into benchmarks/aot_results/<UTC date>/
#   TARGETS="v5e-8 h100-1" FIND_LARGEST=0 bash benchmarks/aot_targets.sh
# TPU targets need requirements-tpu.txt, GPU targets requirements-gpu.txt (docs/accelerators.md). TPU slices compile
# at 8 clips per chip and GPUs at 96 per device (the batches of the table); FIND_LARGEST=1 (default) also searches
# the largest batch that fits (a few more compiles each). GPU targets take FLOPs and bytes per clip from this run's
# v5e-8 report when there is one (--cost_from; the GPU compiler reports none), else report memory only.
# Then: python -m benchmarks.report
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/aot_results/$(date -u +%F)}"
targets="${TARGETS:-v5e-8 v4-8 v5p-8 v6e-8 v5e-16 h100-1 h200-1 a100-1}"
find_largest="${FIND_LARGEST:-1}"
mkdir -p "$out"
for target in $targets; do
  devices=$(python -c "from benchmarks.aot import TARGETS; print(TARGETS['$target'].num_devices)")
  case "$target" in
    h*|a*) per_device=96; extra=(--probes=96,128) ;;
    *) per_device=8; extra=(--probes=8,16) ;;
  esac
  flags=(--target="$target" --config=configs/ravdess.py:fold1 --config.dtype=bfloat16
         --config.batch_size=$((per_device * devices)) --skip_eval_step --out="$out/${target}_bf16.json")
  if [ "$find_largest" = 1 ]; then flags+=(--find_largest "${extra[@]}"); fi
  case "$target" in
    h*|a*) if [ -f "$out/v5e-8_bf16.json" ]; then flags+=(--cost_from="$out/v5e-8_bf16.json"); else flags+=(--skip_cpu_cost); fi ;;
  esac
  echo "== $target: python -m benchmarks.aot ${flags[*]}"
  python -m benchmarks.aot "${flags[@]}"
done
