"""Model summary: parameter counts per part and one forward pass.

    python -m avtca_jax.models.summary --fusion=it [--batch_size=2] [--dtype=bfloat16]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from avtca_jax.models.avtca import AVTCA, MFCC_SHAPE, count_params, init_variables

# Used parameters of the original PyTorch model (docs/original.md#parameter-counts), without its unused per-branch heads and,
# for ia/lt, without the instantiated-but-unused projections and final attention.
ORIGINAL_USED_PARAMS = {"it": 2_002_398, "ia": 1_832_030, "lt": 2_043_486}


def summarize(fusion: str = "it", batch_size: int = 2, dtype: str = "float32", seed: int = 0) -> dict:
  model = AVTCA(fusion=fusion, dtype=jnp.dtype(dtype))
  variables = init_variables(model, jax.random.PRNGKey(seed))
  parts = {name: count_params(tree) for name, tree in variables["params"].items()}
  rng = np.random.default_rng(seed)
  mfcc = jnp.asarray(rng.normal(-20, 50, (batch_size,) + MFCC_SHAPE), jnp.float32)
  frames = jnp.asarray(rng.uniform(0, 1, (batch_size, model.num_frames, 224, 224, 3)), jnp.float32)
  forward = jax.jit(lambda v, a, f: model.apply(v, a, f, train=False))
  start = time.perf_counter()
  logits = jax.block_until_ready(forward(variables, mfcc, frames))
  compile_and_run = time.perf_counter() - start
  start = time.perf_counter()
  jax.block_until_ready(forward(variables, mfcc, frames))
  run = time.perf_counter() - start
  return {
      "fusion": fusion,
      "parts": parts,
      "params": count_params(variables["params"]),
      "batch_stats": count_params(variables["batch_stats"]),
      "original_used_params": ORIGINAL_USED_PARAMS[fusion],
      "logits_shape": tuple(logits.shape),
      "logits_finite": bool(jnp.all(jnp.isfinite(logits))),
      "first_call_s": compile_and_run,
      "forward_s": run,
      "backend": jax.default_backend(),
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--fusion", default="it", choices=sorted(ORIGINAL_USED_PARAMS))
  parser.add_argument("--batch_size", type=int, default=2)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  args = parser.parse_args(argv)
  s = summarize(args.fusion, args.batch_size, args.dtype)
  print(f"AVT-CA fusion={s['fusion']} compute dtype={args.dtype} backend={s['backend']}")
  width = max(len(k) for k in s["parts"])
  for name, count in s["parts"].items():
    print(f"  {name:<{width}}  {count:>10,}")
  print(f"  {'total params':<{width}}  {s['params']:>10,}  (original, used: {s['original_used_params']:,})")
  print(f"  {'batch-norm statistics':<{width}}  {s['batch_stats']:>10,}")
  print(f"forward batch {args.batch_size}: logits {s['logits_shape']}, finite={s['logits_finite']}, "
        f"first call (compile) {s['first_call_s']:.1f} s, then {s['forward_s']:.2f} s")


if __name__ == "__main__":
  main()
