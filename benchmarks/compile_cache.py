"""First and second compile of the trainer's train step, with JAX's persistent compilation cache.

    python -m benchmarks.compile_cache --variant=fold1 --protocols=fold1,fold2 --batch_size=8

Each compile runs in a fresh process (as the next `cross_validation` fold, seed or a resumed run would), with
one cache folder that starts empty: the first process compiles and stores, every later one should load.
Protocols after the first check that the next fold is the same program (folds of one protocol have equal
training-clip counts, so equal steps per epoch and learning-rate boundaries). Reported per process: compile
seconds (`benchmarks.aot.compile_step`: lower and compile), and JAX's cache events (hits, misses).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(variant: str, protocol: str, batch_size: int, image_size: int) -> dict:
  import jax
  from avtca_jax import compilation_cache, steps as steps_lib, train
  from benchmarks import aot

  events = []
  jax.monitoring.register_event_listener(lambda name, **kwargs: events.append(name))
  folder = compilation_cache.enable()
  config = train.default_config(variant)
  config.data.protocol, config.batch_size = protocol, batch_size
  if image_size:
    config.image_size = image_size
  seconds = aot.compile_step(config, steps_lib.create_mesh())["compile_s"]  # the trainer's step, lower + compile
  return {"protocol": protocol, "compile_s": seconds, "cache": folder,
          "hits": events.count("/jax/compilation_cache/cache_hits"),
          "misses": events.count("/jax/compilation_cache/cache_misses")}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--variant", default="fold1")
  p.add_argument("--protocols", default="fold1,fold2")
  p.add_argument("--repeat_first", type=int, default=1, help="extra processes of the first protocol")
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--image_size", type=int, default=0, help="0: the variant's")
  p.add_argument("--json", default="")
  p.add_argument("--worker", default="", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.worker:
    print(json.dumps(worker(args.variant, args.worker, args.batch_size, args.image_size)))
    return
  protocols = args.protocols.split(",")
  order = [protocols[0]] * (1 + args.repeat_first) + protocols[1:]
  rows = []
  with tempfile.TemporaryDirectory() as cache:
    env = dict(os.environ, AVTCA_COMPILATION_CACHE=cache, TF_CPP_MIN_LOG_LEVEL="3")
    for protocol in order:
      cmd = [sys.executable, "-m", "benchmarks.compile_cache", "--worker", protocol, "--variant", args.variant,
             "--batch_size", str(args.batch_size), "--image_size", str(args.image_size)]
      out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=True)
      rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
      print(f"{protocol}: compile {rows[-1]['compile_s']:.1f} s, cache hits {rows[-1]['hits']}, "
            f"misses {rows[-1]['misses']}", flush=True)
  result = {"command": "python -m benchmarks.compile_cache " + " ".join(argv if argv is not None else sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_average": os.getloadavg(),
            "runs": rows}
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
