#!/usr/bin/env bash
# Step-time suite on a Cloud TPU VM (single host: run on the VM; multi-host pod slices: run the same command on
# every worker, e.g. `gcloud compute tpus tpu-vm ssh NAME --worker=all --command="cd avtca-jax && bash benchmarks/tpu.sh"`;
# each host reports its own devices' figures and process 0's JSON is the one to keep).
# Setup on the VM:  pip install "jax[tpu]" flax optax ml_collections && pip install --no-deps -e .   (torch CPU
# is optional: without it, run with FRAMEWORKS=jax).
# The step is the trainer's for configs/ravdess.py:fold1 (224 px) without modality dropout or flip/rotate, as
# the PyTorch original's step; float32 and bfloat16, batch 8, 32 and the largest that runs.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}"
frameworks="${FRAMEWORKS:-jax}"
workdir="$(mktemp -d)"
python -c "import jax; print('jax', jax.__version__, 'process', jax.process_index(), 'of', jax.process_count(), jax.devices())"
for dtype in float32 bfloat16; do
  python -m benchmarks.run --suite=step --config=configs/ravdess.py:fold1 --config.modality_dropout=none \
    --config.flip_rotate=False --config.conv_impl=grouped --config.dtype="$dtype" --frameworks="$frameworks" \
    --probes=8,32 --repeats=10 --warmup=3 --find_largest --workdir="$workdir" \
    --out="$out/tpu_step_${dtype}_$(hostname).json"
done
