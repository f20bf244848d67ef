#!/usr/bin/env bash
# One GPU, one prepared script, under 10 minutes: the ahead-of-time estimate for this GPU (memory, largest
# batch, roofline clips/s of the trainer's bare step) and the step suite against the PyTorch original at
# batch 8, 32 and that largest batch, float32 and bfloat16, then both side by side.
#   bash benchmarks/gpu.sh            (writes $OUT or ./ : aot_local_<dtype>.json, gpu_step_<dtype>.json, gpu.md)
# The step is the trainer's for configs/ravdess.py:fold1 (224 px) without modality dropout or flip/rotate, as
# the PyTorch original's step. Needs jax with CUDA, flax, optax, orbax, ml_collections, numpy and torch; no
# TensorFlow (device-resident synthetic batches). On a machine without ml_collections, carry its wheel
# (docs/accelerators.md).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}"
mkdir -p "$out"
workdir="$(mktemp -d)"
bare=(--config=configs/ravdess.py:fold1 --config.modality_dropout=none --config.flip_rotate=False
      --config.conv_impl=grouped)
python -c "import jax, flax, optax, torch; print('jax', jax.__version__, jax.devices(), 'torch', torch.__version__)"
for dtype in float32 bfloat16; do
  # Largest per-device batch of the bare step from XLA's memory plan of real compiles (no out-of-memory runs).
  timeout 240 python -m benchmarks.aot --target=local "${bare[@]}" --config.dtype="$dtype" \
    --config.batch_size=32 --find_largest --max_compiles=2 --skip_eval_step --out="$out/aot_local_$dtype.json" || true
  largest=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['largest']['batch_per_device'])" \
            "$out/aot_local_$dtype.json" 2>/dev/null || echo 64)
  timeout 300 python -m benchmarks.run --suite=step "${bare[@]}" --config.dtype="$dtype" --probes="8,32,$largest" \
    --repeats=10 --warmup=3 --workdir="$workdir" --out="$out/gpu_step_$dtype.json" || true
done
python -m benchmarks.side_by_side "$out"/gpu_step_*.json "$out"/aot_local_*.json | tee "$out/gpu.md"
