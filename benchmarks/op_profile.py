"""Per-stage forward and forward+backward times of the Flax EfficientFace at the real training shapes.

    python -m benchmarks.op_profile                      # all stages, N = 120 frames (batch 8 x 15)
    python -m benchmarks.op_profile --stages=stem,local --frames=120 --repeats=5

Each stage (stem conv + BN + ReLU, max-pool, stage2, modulator, local, stage3, stage4, conv5 + GAP) is
jitted on its own with its real input shape, in train mode (batch statistics). "fwd" is the forward pass;
"fwd+bwd" is `jax.vjp` plus the pullback of a random cotangent, with gradients for the parameters and
for the stage input (except the stem, whose input is data), which is what the training step computes.
Stages are timed round-robin (one call of each per round) so that load from other processes spreads
evenly; medians are reported. The sum over stages is close to the backbone's share of the training step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from avtca_jax.models import efficientface as ef
from avtca_jax.models.layers import BatchNorm, Conv, Conv1x1


class Stem(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = Conv(29, (3, 3), strides=2, padding=1, name="conv1_0")(x)
    return nn.relu(BatchNorm(False, name="conv1_1")(x))


class MaxPool(nn.Module):
  @nn.compact
  def __call__(self, x):
    return ef.max_pool_3x3_s2(x)


class Stage(nn.Module):
  repeats: int
  out_features: int

  @nn.compact
  def __call__(self, x):
    for unit in range(self.repeats):
      x = ef.InvertedResidual(self.out_features, 2 if unit == 0 else 1, True, name=f"unit{unit}")(x)
    return x


class Head(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(BatchNorm(False, name="conv5_1")(Conv1x1(1024, name="conv5_0")(x)))
    return jnp.mean(x, axis=(1, 2))


def stages(n):
  """name -> (module, input shape, differentiate w.r.t. the input)."""
  return {
      "stem": (Stem(), (n, 224, 224, 3), False),
      "maxpool": (MaxPool(), (n, 112, 112, 29), True),
      "stage2": (Stage(4, 116), (n, 56, 56, 29), True),
      "modulator": (ef.Modulator(True), (n, 28, 28, 116), True),
      "local": (ef.LocalFeatureExtractor(116, True), (n, 56, 56, 29), True),
      "stage3": (Stage(8, 232), (n, 28, 28, 116), True),
      "stage4": (Stage(4, 464), (n, 14, 14, 232), True),
      "conv5+gap": (Head(), (n, 7, 7, 464), True),
  }


def build(module, shape, input_grad, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(0, 1, shape).astype(np.float32))
  variables = module.init(jax.random.PRNGKey(seed), x)
  params = variables.get("params", {})
  rest = {k: v for k, v in variables.items() if k != "params"}

  def apply(params, x):
    if not rest:
      return module.apply({"params": params}, x)
    return module.apply({"params": params, **rest}, x, mutable=list(rest))[0]

  fwd = jax.jit(apply)
  cot = jnp.asarray(rng.normal(0, 1, jax.eval_shape(apply, params, x).shape).astype(np.float32))

  @jax.jit
  def fwd_bwd(params, x):
    if input_grad:
      out, pullback = jax.vjp(apply, params, x)
    else:
      out, pullback = jax.vjp(lambda p: apply(p, x), params)
    return pullback(cot)

  return (lambda: fwd(params, x)), (lambda: fwd_bwd(params, x))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--frames", type=int, default=120, help="N = batch x 15 frames")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--stages", default="", help="comma-separated subset (default: all)")
  args = p.parse_args(argv)
  table = stages(args.frames)
  names = args.stages.split(",") if args.stages else list(table)
  fns = {}
  for name in names:
    fwd, fwd_bwd = build(*table[name])
    jax.block_until_ready(fwd())
    jax.block_until_ready(fwd_bwd())
    fns[name] = (fwd, fwd_bwd)
  times = {name: ([], []) for name in names}
  for _ in range(args.repeats):
    for name in names:
      for fn, out in zip(fns[name], times[name]):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        out.append(time.perf_counter() - start)
  print(f"N = {args.frames}, float32, median of {args.repeats}, load average {os.getloadavg()[0]:.1f}")
  print("| stage | fwd (ms) | fwd+bwd (ms) |\n| --- | --- | --- |")
  total = [0.0, 0.0]
  for name in names:
    med = [1000 * statistics.median(t) for t in times[name]]
    total = [a + b for a, b in zip(total, med)]
    print(f"| {name} | {med[0]:.0f} | {med[1]:.0f} |")
  print(f"| total | {total[0]:.0f} | {total[1]:.0f} |")


if __name__ == "__main__":
  main()
