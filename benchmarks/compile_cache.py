"""First and second compile of the trainer's train step, with JAX's persistent compilation cache.

    python -m benchmarks.compile_cache --config=configs/ravdess.py:fold1 --protocols=fold1,fold2 --json=FILE

Each compile runs in a fresh process (as the next `cross_validation` fold, seed or a resumed run would), with
one cache folder that starts empty: the first process compiles and stores, every later one should load.
Protocols after the first (`config.data.protocol` of each process) check that the next fold is the same
program (folds of one protocol have equal training-clip counts, so equal steps per epoch and learning-rate
boundaries). Reported per process: compile seconds (`benchmarks.aot.compile_step`: the trainer's step from
`steps.build`, lowered and compiled), and JAX's cache events (hits, misses).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile

from benchmarks import records


def worker(config) -> dict:
  import jax
  from avtca_jax import compilation_cache, steps as steps_lib
  from benchmarks import aot

  events = []
  jax.monitoring.register_event_listener(lambda name, **kwargs: events.append(name))
  folder = compilation_cache.enable()  # the folder the parent process chose ($AVTCA_COMPILATION_CACHE)
  seconds = aot.compile_step(config, steps_lib.create_mesh())["compile_s"]  # the trainer's step, lower + compile
  return {"protocol": config.data.protocol, "compile_s": seconds, "cache": "on" if folder else "off",
          "hits": events.count("/jax/compilation_cache/cache_hits"),
          "misses": events.count("/jax/compilation_cache/cache_misses")}


def define_flags():
  from absl import flags
  records.define_config_flag()
  flags.DEFINE_list("protocols", ["fold1", "fold2"], "config.data.protocol of each process after the first.")
  flags.DEFINE_integer("repeat_first", 1, "Extra processes of the first protocol.")
  flags.DEFINE_string("json", "", "Write the results here (with date, machine, versions and command).")
  flags.DEFINE_string("worker_config", "", "(internal) compile this config (JSON) in this process.")


def main(argv):
  del argv  # the command line is sys.argv (records.stamp); absl leaves only the program name here
  from absl import flags
  FLAGS = flags.FLAGS
  if FLAGS.worker_config:
    print(json.dumps(worker(records.config_from_json(FLAGS.worker_config))))
    return
  config = records.require_config(FLAGS.config, "--config=configs/ravdess.py:fold1")
  protocols = FLAGS.protocols
  order = [protocols[0]] * (1 + FLAGS.repeat_first) + protocols[1:]
  result = records.stamp("benchmarks.compile_cache")
  rows = []
  with tempfile.TemporaryDirectory() as cache:
    env = dict(os.environ, AVTCA_COMPILATION_CACHE=cache, TF_CPP_MIN_LOG_LEVEL="3")
    for protocol in order:
      one = copy.deepcopy(config)
      one.data.protocol = protocol
      cmd = [sys.executable, "-m", "benchmarks.compile_cache", f"--worker_config={one.to_json()}"]
      out = subprocess.run(cmd, cwd=records.REPO, env=env, capture_output=True, text=True, check=True)
      rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
      print(f"{protocol}: compile {rows[-1]['compile_s']:.1f} s, cache hits {rows[-1]['hits']}, "
            f"misses {rows[-1]['misses']}", flush=True)
  result.update(load_average=os.getloadavg(), runs=rows)
  if FLAGS.json:
    records.write_json(FLAGS.json, result)


if __name__ == "__main__":
  from absl import app
  from avtca_jax import console
  define_flags()
  app.run(main, flags_parser=console.parse_flags)
