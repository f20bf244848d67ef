"""Train and evaluate AVT-CA: `python -m avtca_jax.train --config=configs/ravdess.py --workdir=DIR`.

Reads top to bottom like flax's imagenet example: setup, mesh, data, model and optimizer, step functions,
checkpoint restore, loop, evaluation. Design notes and measurements: docs/training.md.

- One `jax.jit`-compiled step, data-parallel with pmap semantics: `jax.shard_map` over the `data` axis of
  a mesh of every device of every host; each device gets its slice of the global batch, gradients are
  averaged over the axis; the state is replicated and donated. Batch-norm statistics are per device or
  global (`config.batch_norm`).
- Metrics stay on the devices until a log step. The host reads one scalar per step, the stop vote of the
  step STOP_LAG steps back (already finished), so it never runs more than STOP_LAG steps ahead.
- Batch n+1 is copied to the devices while step n runs (`prefetch_to_devices`, a bounded double buffer), or
  the whole training split lives on the devices (`config.data.device_cache`, data_sources.DeviceCache).
- Every process runs the same steps per epoch (the data source's `steps_per_epoch`, the shortest host's).
- Restarting with the same workdir resumes: state (params, batch statistics, optimizer), step, data
  position and RNG. SIGTERM to any process stops every process at the same step, within STOP_LAG + 1 steps
  of the signal, with one checkpoint, and exits 0. A NaN/inf loss or gradient stops the run (exit 1)
  without saving the bad state.
- Every file goes through etils.epath (as orbax and tfds do), so the workdir may be gs://bucket/run.
"""

from __future__ import annotations

import collections
import difflib
import json
import os
import signal
import sys
import time
from typing import Any, Dict, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging
import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from ml_collections import config_flags

from avtca_jax import (checkpointing, compilation_cache, console, data_sources, evaluate as evaluate_lib,
                       metric_writers, splits, steps as steps_lib)
from avtca_jax.models import avtca
from avtca_jax.steps import ConfigError

Array = jax.Array


class NonFiniteLossError(FloatingPointError):
  pass


# ---- Setup ---------------------------------------------------------------------------------------------


def default_config(variant: str = "default") -> ml_collections.ConfigDict:
  from avtca_jax import bundled  # configs/ravdess.py, from a checkout or an installed wheel
  return bundled.ravdess_config().get_config(variant)


def _flat_keys(config, prefix=""):
  out = set()
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out |= _flat_keys(value, f"{prefix}{key}.")
    else:
      out.add(prefix + key)
  return out


def validate_config(config) -> None:
  """Unknown keys and bad values, with a message that says what to change."""
  reference = default_config(config.get("variant", "default") or "default")
  unknown = sorted(_flat_keys(config) - _flat_keys(reference))
  if unknown:
    hints = []
    for key in unknown:
      close = difflib.get_close_matches(key, sorted(_flat_keys(reference)), n=1)
      hints.append(f"{key}" + (f" (did you mean {close[0]}?)" if close else ""))
    raise ConfigError(f"unknown config key(s): {', '.join(hints)}")
  choices = {"model": ("avtca", "audio"), "fusion": avtca.FUSIONS, "dtype": ("float32", "bfloat16"),
             "batch_norm": ("per_device", "global"), "optimizer": ("sgd", "adam", "adamw"),
             "schedule": ("multistep", "cosine", "constant"), "channel_order": ("rgb", "bgr"),
             "modality_dropout": ("softhard", "noise", "none"),
             "matmul_precision": ("highest", "high", "default", "float32", "tensorfloat32", "bfloat16"),
             "hand_written_backward": ("auto", "on", "off")}
  for key, allowed in choices.items():
    if config[key] not in allowed:
      raise ConfigError(f"config.{key}={config[key]!r}: expected one of {allowed}")
  if not splits.is_protocol(config.data.protocol):
    raise ConfigError(f"config.data.protocol={config.data.protocol!r}: expected one of {splits.PROTOCOLS} "
                      "or inner_<protocol>_<1..4>")
  if config.batch_size <= 0:
    raise ConfigError(f"config.batch_size must be positive, got {config.batch_size}")


def initialize_distributed(config) -> None:
  """Multi-host: one process per host (or several on one machine for tests, with CPU collectives)."""
  dist = config.distributed
  if not dist.coordinator_address:
    return
  try:  # CPU processes (tests, CPU clusters) need a collectives backend; harmless elsewhere
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except Exception:  # a jax without the option: its default works
    pass
  if dist.coordinator_address == "auto":  # TPU pods / SLURM: everything is discovered
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(coordinator_address=dist.coordinator_address,
                               num_processes=dist.num_processes, process_id=dist.process_id)


def train_batch_stream(source, start_step: int, steps_per_epoch: int, global_batch: int, seed: int):
  """Training batches from `start_step` on, epoch after epoch, exactly `steps_per_epoch` per epoch on every
  process (a process whose slice holds more batches leaves them out). One stream across epochs lets the
  prefetch cross epoch boundaries."""
  epoch, position = divmod(start_step, steps_per_epoch)
  while True:
    batches = source.train_batches(epoch, position, global_batch, seed)
    for _ in range(position, steps_per_epoch):
      yield next(batches)
    epoch, position = epoch + 1, 0


# ---- Preemption ----------------------------------------------------------------------------------------


STOP_LAG = 2  # steps between a stop vote entering a step and every process reading it


class StopRequest:
  """SIGTERM (TPU preemption, `kill`) to any process stops every process after the same step.

  Each step takes this process's flag as an input and sums every device's flag into its metrics
  (`make_train_step`); after dispatching step n, every process reads the sum of step n - STOP_LAG, which
  has finished or is about to, and all of them stop after step n when it is positive. So a signal stops
  the run within STOP_LAG + 1 steps, with no extra collective, and the host never runs more than STOP_LAG
  steps ahead of the devices (enough to keep them busy).
  """

  def __init__(self, mesh):
    self.requested = False
    self.signal_step: Optional[int] = None
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    sharding = NamedSharding(mesh, P("data"))
    local = len(mesh.local_devices)
    self._flags = [jax.make_array_from_process_local_data(sharding, np.full((local,), value, np.int32))
                   for value in (0, 1)]
    self._votes = collections.deque()

  def _handle(self, signum, frame):
    self.requested = True

  def flags(self, step: int) -> Array:
    """This process's stop flags for `step` (the step's input)."""
    if self.requested and self.signal_step is None:
      self.signal_step = step
      logging.warning("SIGTERM before step %d: every process stops within %d steps", step + 1, STOP_LAG + 1)
    return self._flags[int(self.requested)]

  def should_stop(self, step_metrics) -> bool:
    """True on every process at once: some process asked to stop STOP_LAG steps ago (or earlier)."""
    self._votes.append(step_metrics["stop"])
    if len(self._votes) <= STOP_LAG:
      return False
    return int(self._votes.popleft()) > 0

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


# ---- Loop ----------------------------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       allow_config_change: bool = False) -> Dict[str, Any]:
  """Runs (or resumes) training in `workdir`; returns the final validation / test metrics and 'status'.

  A workdir is one run: resuming it with a config of another run identity (`checkpointing.fingerprint`)
  stops here, before any compilation, naming the differing keys, unless `allow_config_change`."""
  # Setup: everything that can fail on a bad input fails here, before any compilation.
  validate_config(config)
  compilation_cache.enable(config.compilation_cache_dir)
  workdir = checkpointing.absolute(workdir)
  same_run = checkpointing.check_workdir(workdir, config, allow_change=allow_config_change)
  is_main = jax.process_index() == 0
  workdir.mkdir(parents=True, exist_ok=True)

  # Mesh: every device of every host on one `data` axis.
  mesh = steps_lib.create_mesh()
  num_devices, num_processes = jax.device_count(), jax.process_count()
  if config.batch_size % num_devices:
    raise ConfigError(f"config.batch_size={config.batch_size} is not divisible by the {num_devices} devices "
                      f"(global batch = devices x per-device batch); use a multiple of {num_devices}")
  eval_batch_size = config.eval_batch_size or config.batch_size
  if eval_batch_size % num_devices:
    raise ConfigError(f"config.eval_batch_size={eval_batch_size} is not divisible by the {num_devices} devices")

  # Data.
  source = data_sources.create_source(config, jax.process_index(), num_processes)
  if config.model == "avtca" and not source.has_frames:
    raise ConfigError("config.model='avtca' needs video frames, but this data source has audio only; "
                      "use config.model='audio'")
  if source.has_frames:
    frames, size = source.frame_shape()[0], source.frame_shape()[1]
    if frames != config.num_frames or size < config.image_size:
      raise ConfigError(f"dataset frames are {tuple(source.frame_shape())}; the config wants {config.num_frames} "
                        f"frames of {config.image_size} px (crops are resized down on the device, never up): "
                        "set config.num_frames / config.image_size")
  train_source = source
  if config.data.device_cache:  # the whole training split on every device, batches gathered there
    keys = ("mfcc", "label") if config.model == "audio" else ("mfcc", "frames", "label")
    train_source = data_sources.DeviceCache(source.split_arrays("train"), mesh, keys)
    logging.info("training split on the devices: %d clips, %.2f GB per device", train_source.num_examples,
                 train_source.nbytes / 1e9)
  # The same on every process, whatever its slice of the split holds (the source's shortest slice).
  steps_per_epoch = train_source.steps_per_epoch(config.batch_size)
  if steps_per_epoch == 0:
    raise ConfigError(f"the training split has {source.num_examples(config.data.train_split)} clips, fewer "
                      f"than one batch of {config.batch_size} (over {num_processes} processes)")
  num_steps = steps_lib.total_train_steps(config, steps_per_epoch)
  has_eval = source.num_examples(config.data.eval_split) > 0

  # The run's identity, once the config and data have passed every check (still before any compilation).
  if not same_run or allow_config_change:
    checkpointing.write_config(workdir, config)

  # Model, optimizer, state and compiled steps.
  steps = steps_lib.build(config, mesh, steps_per_epoch)
  learning_rate_fn, abstract_state = steps.learning_rate_fn, steps.abstract_state
  checkpoints = checkpointing.Checkpoints(workdir, keep=config.keep_checkpoints)

  # Checkpoint restore, or a fresh state.
  start_step = checkpoints.latest_step()
  if start_step is not None:
    state, meta = checkpoints.restore(abstract_state, start_step)
    logging.info("resumed from step %d (epoch %d, batch %d)", start_step, meta["epoch"], meta["position"])
  else:
    start_step = 0
    state = steps.initial_state()
    checkpointing.write_model_json(workdir, config)
    if is_main:
      normalization = getattr(source, "mfcc_normalization", {"mode": "none"})
      if normalization["mode"] != "none":  # predict applies the same statistics to new clips
        (workdir / data_sources.NORMALIZATION_FILE).write_text(json.dumps(normalization, indent=1))
  logging.info("%d devices on %d processes, %d steps (%d per epoch), batch %d (%d per device)", num_devices,
               num_processes, num_steps, steps_per_epoch, config.batch_size, config.batch_size // num_devices)

  train_step, predict_step = steps.train_step, steps.predict_step

  writer = metric_writers.MetricWriter(workdir, enabled=is_main)
  stop = StopRequest(mesh)
  progress = None
  if is_main and config.progress_bar and sys.stderr.isatty():
    from tqdm import tqdm
    progress = tqdm(total=num_steps, initial=start_step, unit="step", dynamic_ncols=True)

  def meta_of(step):
    epoch, position = divmod(step, steps_per_epoch)
    return {"step": step, "epoch": epoch, "position": position, "model": checkpointing.model_descriptor(config)}

  def save(step):
    checkpoints.save(state, meta_of(step))

  # Loop.
  pending = []  # per-step metrics, still on the devices
  batches = steps_lib.prefetch_to_devices(
      train_batch_stream(train_source, start_step, steps_per_epoch, config.batch_size, config.seed), mesh,
      size=config.data.prefetch)
  last_log_time, last_log_step = time.time(), start_step
  summary: Dict[str, Any] = {}
  status = "finished"
  try:
    for step in range(start_step, num_steps):
      state, step_metrics = train_step(state, next(batches), stop.flags(step))
      pending.append(step_metrics)
      stop_now = stop.should_stop(step_metrics)  # reads step - STOP_LAG: the same answer on every process
      done = step + 1
      end_of_epoch = done % steps_per_epoch == 0
      save_now = (done % config.checkpoint_every_steps == 0 if config.checkpoint_every_steps > 0
                  else end_of_epoch) or done == num_steps
      eval_now = has_eval and end_of_epoch and (done // steps_per_epoch) % config.eval_every_epochs == 0
      # Saving (also after SIGTERM) and evaluating are log steps: a state is never saved unchecked.
      log_now = (done % config.log_every_steps == 0 or done == start_step + 1 or save_now or eval_now
                 or stop_now)
      if progress is not None:
        progress.update(1)

      if log_now:  # the only host synchronisation
        host = jax.device_get(pending)
        pending = []
        nonfinite = sum(int(m["nonfinite"]) for m in host)
        if nonfinite:
          raise NonFiniteLossError(
              f"non-finite loss or gradient in the {len(host)} steps up to step {done} (lr "
              f"{float(learning_rate_fn(done - 1)):.3g}). Stopped without saving; the last good checkpoint "
              f"is step {checkpoints.latest_step()} in {workdir / 'checkpoints'}. Lower the learning rate "
              "or check the inputs.")
        now = time.time()
        count = sum(float(m["count"]) for m in host)
        record = {"train/loss": sum(float(m["loss_sum"]) for m in host) / count,
                  "train/accuracy": sum(float(m["correct"]) for m in host) / count,
                  "train/learning_rate": float(learning_rate_fn(done - 1)),
                  "train/step_time": (now - last_log_time) / (done - last_log_step),
                  "train/clips_per_second": config.batch_size * (done - last_log_step) / (now - last_log_time),
                  "epoch": done / steps_per_epoch}
        writer.write(done, record)
        if progress is not None:
          progress.set_postfix(loss=f"{record['train/loss']:.3f}", acc=f"{record['train/accuracy']:.3f}")
        elif is_main:
          logging.info("step %d: loss %.4f accuracy %.3f lr %.3g %.1f clips/s", done, record["train/loss"],
                       record["train/accuracy"], record["train/learning_rate"], record["train/clips_per_second"])
        last_log_time, last_log_step = time.time(), done

      if eval_now:
        val = evaluate_lib.evaluate_split(predict_step, state, source, config.data.eval_split, eval_batch_size, mesh,
                             config.num_classes)
        writer.write(done, {f"validation/{k}": v for k, v in val.items()})
        if is_main:
          logging.info("step %d (epoch %d) validation: accuracy %.4f UAR %.4f macro-F1 %.4f", done,
                       done // steps_per_epoch, val["accuracy"], val["uar"], val["macro_f1"])
        checkpoints.save_best(state, meta_of(done), val["accuracy"])
        summary["validation"] = val
        last_log_time = time.time()  # evaluation time is not training time
      if save_now:
        save(done)
      if stop_now:
        save(done)
        status = "preempted"
        logging.warning("stopped at step %d after SIGTERM; rerun the same command to resume", done)
        break
    else:
      if start_step >= num_steps:
        logging.info("nothing to do: the workdir's run already reached step %d", start_step)
    checkpoints.wait()

    # Evaluation: the test split with the best-validation checkpoint (the original's protocol, spec 6).
    if status == "finished" and config.evaluate_test and source.num_examples(config.data.test_split) > 0:
      use_best = checkpoints.best.best_step() is not None
      test_state = checkpoints.restore(abstract_state, best=True)[0] if use_best else state
      test = evaluate_lib.evaluate_split(predict_step, test_state, source, config.data.test_split, eval_batch_size, mesh,
                            config.num_classes)
      test["checkpoint_step"] = int(checkpoints.best.best_step() if use_best else num_steps)
      writer.write(num_steps, {f"test/{k}": v for k, v in test.items()})
      summary["test"] = test
      if is_main:
        logging.info("test (%s, step %d): accuracy %.4f UAR %.4f macro-F1 %.4f",
                     "best validation checkpoint" if use_best else "final parameters", test["checkpoint_step"],
                     test["accuracy"], test["uar"], test["macro_f1"])
        (workdir / "test_metrics.json").write_text(json.dumps(test, indent=1))
  finally:
    batches.close()  # ends the input pipeline's iterators
    if progress is not None:
      progress.close()
    writer.close()
    stop.restore()
    checkpoints.wait()
    checkpoints.close()
  summary["status"] = status
  return summary


# ---- Command line --------------------------------------------------------------------------------------

FLAGS = flags.FLAGS


def define_flags():
  """Command-line flags (defined only when run as a program, so the module can be imported anywhere)."""
  flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics; rerun with it to resume.")
  config_flags.DEFINE_config_file("config", None, "Training config (configs/ravdess.py[:variant]).",
                                  lock_config=True)
  flags.DEFINE_bool("verbose", False, "Library log messages (orbax, absl, jax, tfds) and full error tracebacks.")
  flags.DEFINE_bool("resume_with_changed_config", False,
                    "Resume a workdir whose stored config differs from this one (normally refused).")


def main(argv):
  del argv
  console.configure_logging(FLAGS.verbose)  # libraries' log lines (orbax: hundreds per run) only with --verbose
  try:
    config = FLAGS.config
    initialize_distributed(config)
    console.check_writable_folder(FLAGS.workdir)
    train_and_evaluate(config, FLAGS.workdir, allow_config_change=FLAGS.resume_with_changed_config)
  except NonFiniteLossError as error:
    sys.exit(f"error: {error}")
  except Exception as error:  # a user error (config, data, workdir) is one line; a bug keeps its traceback
    console.exit_on_user_error(error, FLAGS.verbose)


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main, flags_parser=console.parse_flags)
