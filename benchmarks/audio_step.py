"""Training step of the audio branch alone, JAX vs the PyTorch original, side by side in one process.

    python -m benchmarks.audio_step --batch_size=8 --repeats=7 --steps=120

What an audio-only run of the trainer (`configs/ravdess.py:audio_only`) spends its time on: one step is the
trainer's own (`steps.build`: forward + backward + the original's dampened SGD update of `AudioClassifier`,
batch-norm statistics, metrics; jit) against the original's `AudioCNNPool` step (PyTorch, eager, the same
SGD settings), on the same random (batch, 156, 10) MFCCs. Each repeat times `--steps` consecutive steps per framework
(one epoch of the 960 train clips at batch 8 is 120 steps), alternating the frameworks so that both see
the same machine state; the medians over repeats and their ratio are reported, plus the evaluation forward
of 240 clips (one validation pass). Writes JSON with --json.

`--members=K` (JAX only) trains K independently initialised models in each step with `jax.vmap` (a seed
ensemble in one program): whether several small models share a step more cheaply than K separate steps.

    python -m benchmarks.audio_step --frameworks=jax --members=3 --repeats=3
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from benchmarks import records


def audio_config(batch_size: int):
  """configs/ravdess.py:audio_only (the original's SGD) at `batch_size`."""
  from avtca_jax import config_validation
  config = config_validation.default_config("audio_only")
  config.batch_size = batch_size
  return config


def _jax_runner(batch_size: int, steps: int, num_eval: int, members: int = 1):
  """The trainer's audio step (`steps.build` for configs/ravdess.py:audio_only on one device); with
  `members` > 1, K copies of its model and optimizer trained by one `jax.vmap`-ed step."""
  import jax
  import jax.numpy as jnp
  import optax
  from jax.sharding import NamedSharding, PartitionSpec as P

  from avtca_jax import compilation_cache, evaluate as evaluate_lib, steps as steps_lib

  config = audio_config(batch_size)
  compilation_cache.enable(config.compilation_cache_dir)  # 'none' ($AVTCA_COMPILATION_CACHE): cold compiles
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  built = steps_lib.build(config, mesh, steps_per_epoch=steps)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(steps, batch_size, 156, 10)).astype(np.float32)
  y = rng.integers(0, 8, size=(steps, batch_size)).astype(np.int32)
  x_eval = rng.normal(size=(num_eval, 156, 10)).astype(np.float32)

  if members == 1:  # the trainer's own train and predict steps
    state = [built.initial_state()]
    batches = [steps_lib.to_devices({"mfcc": x[i], "label": y[i], "mask": np.ones(batch_size, bool)}, mesh)
               for i in range(steps)]
    eval_batch = steps_lib.to_devices({"mfcc": x_eval, "label": np.zeros(num_eval, np.int32),
                                       "mask": np.ones(num_eval, bool)}, mesh)
    no_stop = jax.device_put(np.zeros(1, np.int32), NamedSharding(mesh, P("data")))
    weights = jax.device_put(evaluate_lib.removal_weights(None), NamedSharding(mesh, P()))

    def train_one(i):
      state[0], metrics = built.train_step(state[0], batches[i], no_stop)
      return metrics

    def evaluate():
      return built.predict_step(state[0], eval_batch, weights)
  else:  # K models with a leading member axis, each its own initialisation and batch
    model, optimizer = built.model, built.tx
    xs, ys = jnp.asarray(x), jnp.asarray(y)
    variables = jax.vmap(lambda r: model.init(r, xs[0, :1]))(jax.random.split(jax.random.PRNGKey(0), members))
    state = [variables["params"], variables["batch_stats"], jax.vmap(optimizer.init)(variables["params"])]
    xs = jnp.stack([jnp.roll(xs, i, axis=0) for i in range(members)], axis=1)  # (steps, K, batch, 156, 10)
    ys = jnp.stack([jnp.roll(ys, i, axis=0) for i in range(members)], axis=1)

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

    step = jax.jit(jax.vmap(one_step))
    eval_step = jax.jit(jax.vmap(one_eval, in_axes=(0, 0, None)))
    x_eval = jnp.asarray(x_eval)

    def train_one(i):
      *new, loss = step(*state, xs[i], ys[i])
      state[:] = new
      return loss

    def evaluate():
      return eval_step(state[0], state[1], x_eval)

  start = time.perf_counter()
  jax.block_until_ready(train_one(0))
  jax.block_until_ready(evaluate())
  compile_s = time.perf_counter() - start

  def run_steps():
    for i in range(steps):
      out = train_one(i)
    jax.block_until_ready(out)

  def run_eval():
    jax.block_until_ready(evaluate())

  return run_steps, run_eval, compile_s


def _torch_runner(batch_size: int, steps: int, num_eval: int):
  import torch

  from avtca_jax.reference.torch_avtca import AudioCNNPool

  torch.manual_seed(0)
  model = AudioCNNPool(num_classes=8)
  sgd = audio_config(batch_size)  # the same optimizer settings as the JAX side
  optimizer = torch.optim.SGD(model.parameters(), lr=sgd.learning_rate, momentum=sgd.momentum,
                              dampening=sgd.dampening, weight_decay=sgd.weight_decay)
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
    records.write_json(args.json, {**records.stamp("benchmarks.audio_step", argv), **result})


if __name__ == "__main__":
  main()
