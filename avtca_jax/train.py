"""Train and evaluate AVT-CA: `python -m avtca_jax.train --config=configs/ravdess.py --workdir=DIR`.

`train_and_evaluate` reads top to bottom like flax's imagenet example: setup, mesh, data, steps, checkpoint
restore, loop, evaluation; each stage calls into the module it belongs to (config_validation, data_sources,
steps, checkpointing, evaluate). The design is in docs/training.md.

- One `jax.jit`-compiled step (`steps.build`), data-parallel with pmap semantics: `jax.shard_map` over the
  `data` axis of a mesh of every device of every host; each device gets its slice of the global batch,
  gradients are averaged over the axis; the state is replicated and donated. Batch-norm statistics are per
  device or global (`config.batch_norm`).
- Metrics stay on the devices until a log step (`TrainLog`). The host reads one scalar per step, the stop
  vote of the step STOP_LAG steps back (already finished), so it never runs more than STOP_LAG steps ahead.
- `PeriodicActions` decides after each step which of logging, evaluation, checkpointing and stopping are due.
- Batch n+1 is copied to the devices while step n runs (`steps.prefetch_to_devices`, a bounded double
  buffer), or the whole training split lives on the devices (`config.data.device_cache`,
  data_sources.DeviceCache).
- Every process runs the same steps per epoch (the data source's `steps_per_epoch`, the shortest host's).
- Restarting with the same workdir resumes: state (params, batch statistics, optimizer), step, data
  position and RNG, from the newest checkpoint that restores. SIGTERM to any process stops every process
  at the same step, within STOP_LAG + 1 steps of the signal, with one checkpoint, and exits 0. A NaN/inf
  loss or gradient stops the run (exit 1) without saving the bad state.
- Every file goes through etils.epath (as orbax and tfds do), so the workdir may be gs://bucket/run.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
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

from avtca_jax import (checkpointing, compilation_cache, config_validation, console, data_sources,
                       evaluate as evaluate_lib, metric_writers, steps as steps_lib)
from avtca_jax.config_validation import ConfigError

Array = jax.Array


class NonFiniteLossError(FloatingPointError):
  pass


# ---- Setup ---------------------------------------------------------------------------------------------


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


def training_source(config, source, mesh):
  """(the source of training batches, steps per epoch): `source` itself, or with
  `config.data.device_cache` its training split on every device (batches gathered there). The steps per
  epoch are the same on every process, whatever its slice of the split holds (the shortest slice)."""
  train_source = source
  if config.data.device_cache:
    keys = ("mfcc", "label") if config.model == "audio" else ("mfcc", "frames", "label")
    train_source = data_sources.DeviceCache(source.split_arrays("train"), mesh, keys)
    logging.info("training split on the devices: %d clips, %.2f GB per device", train_source.num_examples,
                 train_source.nbytes / 1e9)
  steps_per_epoch = train_source.steps_per_epoch(config.batch_size)
  if steps_per_epoch == 0:
    raise ConfigError(f"the training split has {source.num_examples(config.data.train_split)} clips, fewer "
                      f"than one batch of {config.batch_size} (over {jax.process_count()} processes)")
  return train_source, steps_per_epoch


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
  (`steps.make_train_step`); after dispatching step n, every process reads the sum of step n - STOP_LAG, which
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


# ---- Periodic actions and the training log -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Due:
  """What to do after a step."""
  log: bool
  evaluate: bool
  checkpoint: bool
  stop: bool


class PeriodicActions:
  """Decides after each step which actions are due:

  - checkpoint: every `config.checkpoint_every_steps` steps (0: at the end of every epoch) and after the
    last step;
  - evaluate: at the end of every `config.eval_every_epochs`-th epoch, when there is a validation split;
  - stop: the stop vote (`StopRequest.should_stop`, read every step) says that some process got SIGTERM:
    the run saves and stops;
  - log: every `config.log_every_steps` steps, after the first step of the run, and whenever one of the
    others is due, so that no state is evaluated or saved before its metrics were checked for NaN.
  """

  def __init__(self, config, steps_per_epoch: int, num_steps: int, start_step: int, has_eval: bool,
               stop: "StopRequest"):
    self.config, self.steps_per_epoch, self.num_steps = config, steps_per_epoch, num_steps
    self.start_step, self.has_eval, self.stop = start_step, has_eval, stop

  def after(self, done: int, step_metrics) -> Due:
    """The actions due once `done` steps have run; `step_metrics` are the last step's (its stop vote)."""
    config = self.config
    stop = self.stop.should_stop(step_metrics)  # the vote of STOP_LAG steps ago: the same on every process
    end_of_epoch = done % self.steps_per_epoch == 0
    every = config.checkpoint_every_steps
    checkpoint = (done % every == 0 if every > 0 else end_of_epoch) or done == self.num_steps
    evaluate = (self.has_eval and end_of_epoch
                and (done // self.steps_per_epoch) % config.eval_every_epochs == 0)
    log = done % config.log_every_steps == 0 or done == self.start_step + 1 or checkpoint or evaluate or stop
    return Due(log=log, evaluate=evaluate, checkpoint=checkpoint, stop=stop)


class TrainLog:
  """Per-step metrics, kept on the devices until a log step; then one transfer to the host (the loop's only
  synchronisation), the NaN check, and one record: metrics.jsonl and TensorBoard (`metric_writers`), and the
  console (a log line, or the progress bar's postfix when stderr is a terminal)."""

  def __init__(self, config, workdir, learning_rate_fn, steps_per_epoch: int, num_steps: int,
               start_step: int):
    self.config, self.workdir, self.learning_rate_fn = config, workdir, learning_rate_fn
    self.steps_per_epoch = steps_per_epoch
    self.is_main = jax.process_index() == 0
    self.writer = metric_writers.MetricWriter(workdir, enabled=self.is_main)
    self.progress = None
    if self.is_main and config.progress_bar and sys.stderr.isatty():
      from tqdm import tqdm
      self.progress = tqdm(total=num_steps, initial=start_step, unit="step", dynamic_ncols=True)
    self.pending = []  # per-step metrics, still on the devices
    self.last_time, self.last_step = time.time(), start_step

  def add(self, step_metrics) -> None:
    self.pending.append(step_metrics)
    if self.progress is not None:
      self.progress.update(1)

  def flush(self, done: int, last_good_step: Optional[int]) -> Dict[str, float]:
    """The training record of the steps since the last flush; NonFiniteLossError if any of them had a
    non-finite loss or gradient (`last_good_step`: the newest checkpoint, for the message)."""
    host, self.pending = jax.device_get(self.pending), []
    learning_rate = float(self.learning_rate_fn(done - 1))
    if sum(int(m["nonfinite"]) for m in host):
      raise NonFiniteLossError(
          f"non-finite loss or gradient in the {len(host)} steps up to step {done} (lr {learning_rate:.3g}). "
          f"Stopped without saving; the last good checkpoint is step {last_good_step} in "
          f"{self.workdir / 'checkpoints'}. Lower the learning rate or check the inputs.")
    now, count, steps = time.time(), sum(float(m["count"]) for m in host), done - self.last_step
    record = {"train/loss": sum(float(m["loss_sum"]) for m in host) / count,
              "train/accuracy": sum(float(m["correct"]) for m in host) / count,
              "train/learning_rate": learning_rate, "train/step_time": (now - self.last_time) / steps,
              "train/clips_per_second": self.config.batch_size * steps / (now - self.last_time),
              "epoch": done / self.steps_per_epoch}
    self.writer.write(done, record)
    if self.progress is not None:
      self.progress.set_postfix(loss=f"{record['train/loss']:.3f}", acc=f"{record['train/accuracy']:.3f}")
    elif self.is_main:
      logging.info("step %d: loss %.4f accuracy %.3f lr %.3g %.1f clips/s", done, record["train/loss"],
                   record["train/accuracy"], record["train/learning_rate"], record["train/clips_per_second"])
    self.last_time, self.last_step = time.time(), done
    return record

  def validation(self, done: int, metrics: Dict[str, float]) -> None:
    self.writer.write(done, {f"validation/{k}": v for k, v in metrics.items()})
    if self.is_main:
      logging.info("step %d (epoch %d) validation: accuracy %.4f UAR %.4f macro-F1 %.4f", done,
                   done // self.steps_per_epoch, metrics["accuracy"], metrics["uar"], metrics["macro_f1"])
    self.last_time = time.time()  # evaluation time is not training time

  def __enter__(self) -> "TrainLog":
    return self

  def __exit__(self, *exc_info):
    if self.progress is not None:
      self.progress.close()
    self.writer.close()


# ---- Train and evaluate --------------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       allow_config_change: bool = False) -> Dict[str, Any]:
  """Runs (or resumes) training in `workdir`; returns the final validation / test metrics and 'status'.

  A workdir is one run: resuming it with a config of another run identity (`checkpointing.fingerprint`)
  stops here, before any compilation, naming the differing keys, unless `allow_config_change`."""
  # Setup: everything that can fail on a bad input fails here, before any compilation.
  config_validation.validate(config)
  compilation_cache.enable(config.compilation_cache_dir)
  workdir = checkpointing.absolute(workdir)
  same_run = checkpointing.check_workdir(workdir, config, allow_change=allow_config_change)
  workdir.mkdir(parents=True, exist_ok=True)

  # Mesh: every device of every host on one `data` axis.
  mesh = steps_lib.create_mesh()
  eval_batch_size = config_validation.check_batch_sizes(config, jax.device_count())

  # Data.
  source = data_sources.create_source(config, jax.process_index(), jax.process_count())
  config_validation.check_source(config, source)
  train_source, steps_per_epoch = training_source(config, source, mesh)
  num_steps = steps_lib.total_train_steps(config, steps_per_epoch)
  # The run's identity, once the config and data have passed every check (still before any compilation).
  if not same_run or allow_config_change:
    checkpointing.write_config(workdir, config)

  # Steps: the model, optimizer, state and compiled train and predict steps.
  steps = steps_lib.build(config, mesh, steps_per_epoch)

  summary: Dict[str, Any] = {"status": "finished"}
  with contextlib.ExitStack() as cleanup:  # closes everything below, in reverse order, however it ends
    # Checkpoint restore (the newest that restores), or a fresh state.
    checkpoints = cleanup.enter_context(checkpointing.Checkpoints(workdir, keep=config.keep_checkpoints))
    restored = checkpoints.restore_latest(steps.abstract_state)
    if restored is not None:
      state, meta = restored
      start_step = int(meta["step"])
      logging.info("resumed from step %d (epoch %d, batch %d)", start_step, meta["epoch"], meta["position"])
    else:
      start_step, state = 0, steps.initial_state()
      checkpointing.write_model_json(workdir, config)
      checkpointing.write_normalization(workdir, source)
    logging.info("%d devices on %d processes, %d steps (%d per epoch), batch %d (%d per device)",
                 jax.device_count(), jax.process_count(), num_steps, steps_per_epoch, config.batch_size,
                 config.batch_size // jax.device_count())

    # Loop.
    stop = StopRequest(mesh)
    cleanup.callback(stop.restore)
    periodic = PeriodicActions(config, steps_per_epoch, num_steps, start_step,
                               has_eval=source.num_examples(config.data.eval_split) > 0, stop=stop)
    log = cleanup.enter_context(TrainLog(config, workdir, steps.learning_rate_fn, steps_per_epoch, num_steps,
                                         start_step))
    batches = steps_lib.prefetch_to_devices(
        train_batch_stream(train_source, start_step, steps_per_epoch, config.batch_size, config.seed), mesh,
        size=config.data.prefetch)
    cleanup.callback(batches.close)  # ends the input pipeline's iterators
    for step in range(start_step, num_steps):
      state, step_metrics = steps.train_step(state, next(batches), stop.flags(step))
      done = step + 1
      due = periodic.after(done, step_metrics)
      log.add(step_metrics)
      if due.log:
        log.flush(done, last_good_step=checkpoints.latest_step())
      if due.evaluate:
        summary["validation"] = evaluate_lib.evaluate_split(
            steps.predict_step, state, source, config.data.eval_split, eval_batch_size, mesh, config.num_classes)
        log.validation(done, summary["validation"])
        checkpoints.save_best(state, checkpointing.step_meta(config, done, steps_per_epoch),
                              summary["validation"]["accuracy"])
      if due.checkpoint or due.stop:
        checkpoints.save(state, checkpointing.step_meta(config, done, steps_per_epoch))
      if due.stop:
        summary["status"] = "preempted"
        logging.warning("stopped at step %d after SIGTERM; rerun the same command to resume", done)
        break
    else:
      if start_step >= num_steps:
        logging.info("nothing to do: the workdir's run already reached step %d", start_step)
    checkpoints.wait()

    # Evaluation: the test split with the best-validation checkpoint.
    if summary["status"] == "finished":
      test = evaluate_lib.test_split(steps, state, source, checkpoints, eval_batch_size, num_steps, workdir,
                                     log.writer.write)
      if test is not None:
        summary["test"] = test
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
  console.configure_logging(FLAGS.verbose)  # libraries' log lines (orbax: several per checkpoint) only with --verbose
  try:
    config = FLAGS.config
    config_validation.validate(config)  # also before jax.distributed waits for the other processes
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
