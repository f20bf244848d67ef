#!/usr/bin/env bash
# Step-time suite on a Cloud TPU VM (single host: run on the VM; multi-host pod slices: run the same command on
# every worker, e.g. `gcloud compute tpus tpu-vm ssh NAME --worker=all --command="cd avtca-jax && bash benchmarks/tpu.sh"`;
# each host reports its own devices' figures and process 0's JSON is the one to keep).
# Setup on the VM:  pip install "jax[tpu]" flax optax && pip install --no-deps -e .   (torch CPU is optional:
# without it, run with FRAMEWORKS=jax).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}"
frameworks="${FRAMEWORKS:-jax}"
python -c "import jax; print('jax', jax.__version__, 'process', jax.process_index(), 'of', jax.process_count(), jax.devices())"
python -m benchmarks.run --suite=step --frameworks="$frameworks" --batch_sizes=8,32 --dtypes=float32,bfloat16 \
  --conv_impl=grouped --repeats=10 --warmup=3 --find_largest --no_append --workdir=/tmp/avtca_bench \
  --out="$out/tpu_step_$(hostname).json"
