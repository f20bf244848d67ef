"""Training step of the audio branch alone, JAX vs the PyTorch original, side by side in one process.

    python -m benchmarks.audio_step --batch_size=8 --repeats=7 --steps=120

What an audio-only run of the trainer (`configs/ravdess.py:audio_only`) spends its time on: one step is forward + backward + the original's dampened
SGD update of `AudioClassifier` (JAX, jit) and of `AudioCNNPool` (PyTorch, the original's module, eager),
on the same random (batch, 156, 10) MFCCs. Each repeat times `--steps` consecutive steps per framework
(one epoch of the 960 train clips at batch 8 is 120 steps), alternating the frameworks so that both see
the same machine state; the medians over repeats and their ratio are reported, plus the evaluation forward
of 240 clips (one validation pass). Writes JSON with --json.

`--members=K` (JAX only) trains K independently initialised models in each step with `jax.vmap` (a seed
ensemble in one program): whether several small models share a step more cheaply than K separate steps.

    python -m benchmarks.audio_step --frameworks=jax --members=3 --repeats=3
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np


def _jax_runner(batch_size: int, steps: int, num_eval: int, members: int = 1):
  import jax
  from avtca_jax import compilation_cache
  compilation_cache.enable()  # $AVTCA_COMPILATION_CACHE=none: cold compiles
  import jax.numpy as jnp
  import optax

  from avtca_jax import steps as steps_lib
  from avtca_jax.models.avtca import AudioClassifier
  from configs import ravdess

  model = AudioClassifier()
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(steps, batch_size, 156, 10)).astype(np.float32))
  y = jnp.asarray(rng.integers(0, 8, size=(steps, batch_size)).astype(np.int32))
  x_eval = jnp.asarray(rng.normal(size=(num_eval, 156, 10)).astype(np.float32))
  config = ravdess.get_config("audio_only")
  optimizer = steps_lib.create_optimizer(config, steps_lib.create_learning_rate_fn(config, steps))
  if members > 1:  # K models with a leading member axis, each its own initialisation and batch
    variables = jax.vmap(lambda r: model.init(r, x[0, :1]))(jax.random.split(jax.random.PRNGKey(0), members))
    state = [variables["params"], variables["batch_stats"], jax.vmap(optimizer.init)(variables["params"])]
    x = jnp.stack([jnp.roll(x, i, axis=0) for i in range(members)], axis=1)  # (steps, K, batch, 156, 10)
    y = jnp.stack([jnp.roll(y, i, axis=0) for i in range(members)], axis=1)
  else:
    variables = model.init(jax.random.PRNGKey(0), x[0, :1])
    state = [variables["params"], variables["batch_stats"], optimizer.init(variables["params"])]

  def one_step(params, batch_stats, opt_state, xb, yb):
    def loss_fn(p):
      logits, updates = model.apply({"params": p, "batch_stats": batch_stats}, xb, train=True,
                                    mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean(), updates["batch_stats"]
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  def one_eval(params, batch_stats, xe):
    return model.apply({"params": params, "batch_stats": batch_stats}, xe, train=False)

  step = jax.jit(jax.vmap(one_step) if members > 1 else one_step)
  evaluate = jax.jit(jax.vmap(one_eval, in_axes=(0, 0, None)) if members > 1 else one_eval)

  start = time.perf_counter()
  jax.block_until_ready(step(*state, x[0], y[0]))
  jax.block_until_ready(evaluate(state[0], state[1], x_eval))
  compile_s = time.perf_counter() - start

  def run_steps():
    for i in range(steps):
      *new, loss = step(*state, x[i], y[i])
      state[:] = new
    jax.block_until_ready(loss)

  def run_eval():
    jax.block_until_ready(evaluate(state[0], state[1], x_eval))

  return run_steps, run_eval, compile_s


def _torch_runner(batch_size: int, steps: int, num_eval: int):
  import torch

  from avtca_jax.reference.torch_avtca import AudioCNNPool

  torch.manual_seed(0)
  model = AudioCNNPool(num_classes=8)
  optimizer = torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9, dampening=0.9, weight_decay=1e-3)
  loss_fn = torch.nn.CrossEntropyLoss()
  rng = np.random.default_rng(0)
  # The original feeds (B, 10, 156): coefficients as channels.
  x = torch.from_numpy(rng.normal(size=(steps, batch_size, 10, 156)).astype(np.float32))
  y = torch.from_numpy(rng.integers(0, 8, size=(steps, batch_size)).astype(np.int64))
  x_eval = torch.from_numpy(rng.normal(size=(num_eval, 10, 156)).astype(np.float32))

  def run_steps():
    model.train()
    for i in range(steps):
      optimizer.zero_grad()
      loss = loss_fn(model(x[i]), y[i])
      loss.backward()
      optimizer.step()

  def run_eval():
    model.eval()
    with torch.no_grad():
      model(x_eval)

  return run_steps, run_eval, 0.0


def measure(batch_size: int = 8, steps: int = 120, repeats: int = 7, num_eval: int = 240,
            frameworks=("jax", "torch"), members: int = 1) -> dict:
  runners = {}
  if "torch" in frameworks:
    runners["torch"] = _torch_runner(batch_size, steps, num_eval)  # torch first: it must precede TensorFlow
  if "jax" in frameworks:
    runners["jax"] = _jax_runner(batch_size, steps, num_eval, members)
  times = {name: {"steps": [], "eval": []} for name in runners}
  for name, (run_steps, run_eval, _) in runners.items():  # warm-up (allocator, caches)
    run_steps()
    run_eval()
  for _ in range(repeats):
    for name, (run_steps, run_eval, _) in runners.items():
      start = time.perf_counter()
      run_steps()
      times[name]["steps"].append(time.perf_counter() - start)
      start = time.perf_counter()
      run_eval()
      times[name]["eval"].append(time.perf_counter() - start)
  result = {"batch_size": batch_size, "members": members, "steps_per_repeat": steps, "repeats": repeats,
            "eval_clips": num_eval,
            "machine": {"platform": platform.platform(), "cpus": __import__("os").cpu_count()}}
  for name, (_, _, compile_s) in runners.items():
    per_steps = float(np.median(times[name]["steps"]))
    models = members if name == "jax" else 1
    result[name] = {"step_ms": 1e3 * per_steps / steps, "clips_per_s": steps * batch_size * models / per_steps,
                    "step_ms_per_model": 1e3 * per_steps / steps / models,
                    "steps_s": per_steps, "eval_s": float(np.median(times[name]["eval"])),
                    "steps_s_all": times[name]["steps"], "compile_s": compile_s}
  if len(runners) == 2 and members == 1:
    result["speedup"] = result["torch"]["step_ms"] / result["jax"]["step_ms"]
  return result


def markdown(result: dict) -> str:
  rows = [f"Batch {result['batch_size']}, {result.get('members', 1)} model(s) per JAX step.\n",
          "| framework | step (ms, median) | per model (ms) | clips/s | 120 steps + 240-clip eval (s) | compile (s) |",
          "| --- | ---: | ---: | ---: | ---: | ---: |"]
  for name in ("jax", "torch"):
    if name in result:
      r = result[name]
      rows.append(f"| {name} | {r['step_ms']:.2f} | {r['step_ms_per_model']:.2f} | {r['clips_per_s']:.0f} | "
                  f"{r['steps_s'] + r['eval_s']:.2f} | {r['compile_s']:.1f} |")
  if "speedup" in result:
    rows.append(f"\nJAX speed-up per training step: {result['speedup']:.2f}x")
  return "\n".join(rows)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--steps", type=int, default=120, help="steps per timed repeat (120 = one epoch at batch 8)")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--frameworks", default="jax,torch")
  parser.add_argument("--members", type=int, default=1, help="JAX: models trained together per step (jax.vmap)")
  parser.add_argument("--json", default="")
  args = parser.parse_args(argv)
  result = measure(args.batch_size, args.steps, args.repeats, frameworks=tuple(args.frameworks.split(",")),
                   members=args.members)
  print(markdown(result))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
