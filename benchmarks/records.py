"""What every benchmark JSON carries beside its figures, and the trainer's `--config` flag for benchmarks.

Each result file a benchmark writes has `date`, `machine`, `versions` and `command` at its top level, so that
`python -m benchmarks.report` can print them beside every figure in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"

PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "ml-collections", "torch", "tensorflow", "tensorflow-cpu",
            "tensorflow-datasets", "libtpu", "jax-cuda13-plugin")


def versions() -> dict:
  """Python and the installed versions of the packages a benchmark may use (those not installed are left
  out: a GPU machine without TensorFlow)."""
  from importlib import metadata
  out = {"python": platform.python_version()}
  for name in PACKAGES:
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      pass
  return out


def machine() -> dict:
  return {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()}


def command(module: str, argv: Optional[Sequence[str]] = None) -> str:
  """The command line that reproduces this run (`python -m MODULE ARGS`). An absolute path given to a flag
  (a scratch folder, an output file) is this machine's, so it is written as DIR or FILE."""
  args = list(sys.argv[1:] if argv is None else argv)

  out = []
  for i, arg in enumerate(args):
    flag, sep, value = arg.partition("=")
    if not sep and i > 0 and args[i - 1].startswith("--") and "=" not in args[i - 1]:
      flag, value = args[i - 1], arg  # `--flag VALUE`
    if flag.startswith("--") and os.path.isabs(value):
      placeholder = "DIR" if "dir" in flag else "FILE"
      arg = f"{flag}={placeholder}" if sep else placeholder
    out.append(shlex.quote(arg))
  return " ".join(["python -m " + module] + out)


def stamp(module: str, argv: Optional[Sequence[str]] = None) -> dict:
  """{date, machine, versions, command} of a run that starts now."""
  return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
          "versions": versions(), "command": command(module, argv)}


def write_json(path, result: dict) -> Path:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(result, indent=1) + "\n")
  return path


def default_output(name: str) -> Path:
  """benchmarks/results/NAME_<UTC time>.json: where a run's JSON goes unless `--out` says otherwise."""
  return RESULTS_DIR / f"{name}_{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.json"


# ---- The trainer's config on a benchmark's command line ------------------------------------------------


def define_config_flag() -> None:
  """`--config=configs/ravdess.py[:VARIANT]` with `--config.x=y` overrides, exactly as avtca_jax.train."""
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "Trainer config (configs/ravdess.py[:variant]) and "
                                  "--config.x=y overrides, as `python -m avtca_jax.train` takes them.",
                                  lock_config=True)


def require_config(config, example: str, num_devices: Optional[int] = None):
  """The parsed `--config`, checked as the trainer checks it (every key and value; with `num_devices`, that
  the batches divide over them), or a one-line error saying what to change."""
  if config is None:
    sys.exit(f"error: --config is required (the trainer's config), e.g. {example}")
  from avtca_jax import config_validation
  try:
    config_validation.validate(config)
    if num_devices:
      config_validation.check_batch_sizes(config, num_devices)
  except config_validation.ConfigError as error:
    sys.exit(f"error: {error}")
  return config


def config_args(argv: Sequence[str]) -> List[str]:
  """The `--config` and `--config.x=y` arguments of a command line, to hand the same config to a trainer
  subprocess (`--config` first)."""
  args, i = [], 0
  argv = list(argv)
  while i < len(argv):
    arg = argv[i]
    value_follows = i + 1 < len(argv) and not argv[i + 1].startswith("--")
    if (arg == "--config" or (arg.startswith("--config.") and "=" not in arg)) and value_follows:
      args.append(arg + "=" + argv[i + 1])  # the `--config X` form
      i += 2
      continue
    if arg.startswith("--config=") or arg.startswith("--config."):
      args.append(arg)
    i += 1
  args.sort(key=lambda a: not a.startswith("--config="))
  return args


def config_from_json(text: str):
  """A config a worker process received as JSON (`ConfigDict.to_json()`)."""
  import ml_collections
  return ml_collections.ConfigDict(json.loads(text))
