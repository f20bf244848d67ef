#!/usr/bin/env bash
# Step-time suite on one GPU: Flax vs PyTorch, batch 8, 32 and the largest JAX batch that fits, f32 and bf16.
# Needs only jax[cuda], flax, optax, numpy and torch (no TensorFlow): batches are device-resident synthetic
# inputs. Writes $OUT/gpu_step.json (or ./gpu_step.json) and prints the markdown table; paste the table into
# benchmarks/RESULTS.md with the date and device.
#   bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}"
python -c "import jax, flax, optax, torch; print('jax', jax.__version__, jax.devices(), 'torch', torch.__version__)"
python -m benchmarks.run --suite=step --batch_sizes=8,32 --dtypes=float32,bfloat16 --conv_impl=grouped \
  --repeats=10 --warmup=3 --find_largest --no_append --workdir=/tmp/avtca_bench --out="$out/gpu_step.json"
