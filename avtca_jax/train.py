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
import functools
import json
import os
import signal
import sys
import time
from typing import Any, Dict, Iterator, NamedTuple, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec as P
from ml_collections import config_flags

from avtca_jax import (augment, checkpointing, compilation_cache, console, data_sources, metric_writers,
                       metrics as metrics_lib, splits)
from avtca_jax.models import avtca, efficientface, layers

Array = jax.Array


class ConfigError(ValueError):
  """A config that cannot run (raised before any compilation)."""


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


def create_mesh() -> jax.sharding.Mesh:
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


# ---- Model and optimizer -------------------------------------------------------------------------------


@struct.dataclass
class TrainState:
  step: Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: Array  # raw uint32 key data of the run's base key: checkpointable as a plain array


def mesh_platform(mesh) -> str:
  """The backend a mesh's devices belong to ('cpu', 'gpu', 'tpu'); for an ahead-of-time compile this is the
  target's, not this machine's."""
  return mesh.devices.flat[0].platform


def create_model(config, platform: Optional[str] = None):
  """The configured model. Backend-dependent choices ('auto' depthwise-conv form) are made for `platform`
  (default: this machine's default backend)."""
  return avtca.create_model(
      config.model, num_classes=config.num_classes, fusion=config.fusion, num_heads=config.num_heads,
      num_frames=config.num_frames, image_size=config.image_size, dtype=jnp.dtype(config.dtype),
      conv_impl=layers.resolve_conv_impl(config.conv_impl, platform), remat=config.remat,
      bn_axis_name="data" if config.batch_norm == "global" else None)


def create_learning_rate_fn(config, steps_per_epoch: int) -> optax.Schedule:
  """Per-step learning rate. Multistep follows the original's `adjust_learning_rate`: epochs count from
  1 and the rate of epoch e is lr * decay**(number of boundaries <= e), so boundary 40 acts from the
  start of the 40th epoch (0-based epoch 39)."""
  total_steps = total_train_steps(config, steps_per_epoch)
  warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
  base = config.learning_rate
  if config.schedule == "multistep":
    main = optax.piecewise_constant_schedule(
        base, {max(int((e - 1) * steps_per_epoch) - warmup_steps, 1): config.lr_decay
               for e in config.lr_boundaries_epochs})
  elif config.schedule == "cosine":
    main = optax.cosine_decay_schedule(base, max(total_steps - warmup_steps, 1))
  else:
    main = optax.constant_schedule(base)
  if warmup_steps <= 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, base, warmup_steps), main], [warmup_steps])


class DampenedMomentumState(NamedTuple):
  count: Array  # steps taken: the first one starts the buffer
  momentum: Any


def dampened_momentum(momentum: float, dampening: float) -> optax.GradientTransformation:
  """PyTorch's SGD momentum buffer: b_1 = g_1, then b_t = momentum * b_{t-1} + (1 - dampening) * g_t.

  The first step takes the whole gradient (PyTorch creates the buffer as a copy of it), not (1 - dampening)
  of it as `optax.trace` after `optax.scale(1 - dampening)` would: with dampening 0.9 that made our first
  step 10x smaller than the original's."""

  def init(params):
    return DampenedMomentumState(count=jnp.zeros([], jnp.int32), momentum=jax.tree.map(jnp.zeros_like, params))

  def update(updates, state, params=None):
    del params
    first = state.count == 0
    buffer = jax.tree.map(lambda g, b: jnp.where(first, g, momentum * b + (1.0 - dampening) * g).astype(b.dtype),
                          updates, state.momentum)
    return buffer, DampenedMomentumState(count=optax.safe_increment(state.count), momentum=buffer)

  return optax.GradientTransformation(init, update)


def create_optimizer(config, learning_rate_fn) -> optax.GradientTransformation:
  """'sgd': PyTorch SGD(momentum, dampening, weight_decay) as the original (spec 5): L2 added to the
  gradient, then PyTorch's momentum buffer (`dampened_momentum`), the same from the first step. 'adam': the
  paper's Adam with PyTorch-style L2 weight decay. 'adamw': Adam with decoupled weight decay on the kernels
  only."""
  if config.optimizer == "sgd":
    return optax.chain(optax.add_decayed_weights(config.weight_decay),
                       dampened_momentum(config.momentum, config.dampening),
                       optax.scale_by_learning_rate(learning_rate_fn))
  if config.optimizer == "adamw":  # decoupled decay, not on biases and norm scales/offsets
    return optax.adamw(learning_rate_fn, weight_decay=config.weight_decay,
                       mask=lambda params: jax.tree.map(lambda x: x.ndim > 1, params))
  return optax.chain(optax.add_decayed_weights(config.weight_decay), optax.scale_by_adam(),
                     optax.scale_by_learning_rate(learning_rate_fn))


def total_train_steps(config, steps_per_epoch: int) -> int:
  return config.num_train_steps if config.num_train_steps > 0 else config.num_epochs * steps_per_epoch


def model_inputs(config, batch, rng: Optional[Array] = None, train: bool = False):
  """(mfcc, frames or None, labels): uint8 RGB frames -> float in the configured channel order, with the
  train-time augmentation and modality dropout drawn from `rng`."""
  mfcc, labels, frames = batch["mfcc"], batch["label"], batch.get("frames")
  if config.model == "audio":
    return mfcc, None, labels
  if train and config.flip_rotate:
    frames = augment.random_flip_and_rotate(jax.random.fold_in(rng, 0), frames)
  frames = avtca.frames_from_uint8(frames, config.channel_order)
  if frames.shape[2] != config.image_size:  # a smaller model input than the stored crops (fast configs)
    size = (config.image_size, config.image_size)
    frames = jax.image.resize(frames, frames.shape[:2] + size + frames.shape[4:], "bilinear")
  if train and config.modality_dropout != "none":
    mfcc, frames, labels = augment.modality_dropout(jax.random.fold_in(rng, 1), config.modality_dropout,
                                                    mfcc, frames, labels)
  return mfcc, frames, labels


def abstract_variables(model, config):
  """Shapes of {'params', 'batch_stats'} without computing anything."""
  mfcc = jax.ShapeDtypeStruct((1,) + avtca.MFCC_SHAPE, jnp.float32)
  frames = jax.ShapeDtypeStruct((1, config.num_frames, config.image_size, config.image_size, 3), jnp.float32)
  return jax.eval_shape(lambda r, m, f: model.init(r, m, f, train=False), jax.random.key(0), mfcc, frames)


def create_train_state(config, model, tx, mesh, abstract: bool = False) -> TrainState:
  replicated = NamedSharding(mesh, P())
  rng = jax.random.key_data(jax.random.key(config.seed))

  def build(variables):
    return TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(variables["params"]),
                      rng=rng)

  if abstract:
    shapes = jax.eval_shape(build, abstract_variables(model, config))
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), shapes)
  variables = avtca.init_variables(model, jax.random.fold_in(jax.random.key(config.seed), 1))
  if config.init_checkpoint:
    from avtca_jax import convert
    if not epath.Path(config.init_checkpoint).is_dir():
      raise ConfigError(f"config.init_checkpoint={config.init_checkpoint!r} is not a directory (a converted "
                        "checkpoint from `python -m avtca_jax.convert`)")
    try:
      variables = convert.load_init_checkpoint(checkpointing.absolute(config.init_checkpoint), into=variables)
    except convert.ConversionError as error:
      raise ConfigError(f"config.init_checkpoint={config.init_checkpoint}: {error}") from error
    logging.info("initialised from %s", config.init_checkpoint)
  return jax.device_put(build(variables), replicated)


# ---- Step functions ------------------------------------------------------------------------------------


def traced_for_backend(step_fn, config, platform: str):
  """`step_fn` traced under `config.matmul_precision` (jax's default_matmul_precision: 'highest', 'high',
  'default', ...), which then applies to every matrix product and convolution of the step on every backend.

  'highest' (the default) keeps float32 products float32: TPUs otherwise round float32 matmul inputs to
  bfloat16 (one MXU pass) and recent NVIDIA GPUs to TF32 (10-bit mantissa), which breaks the parity
  tolerances with the PyTorch original. bfloat16 compute (`config.dtype`) is unaffected: its inputs are
  bfloat16 already. 'default' lets each backend take its fast path; see docs/accelerators.md.

  Also traced under `config.hand_written_backward` for `platform` (the batch-norm and max-pool backward
  passes written for XLA:CPU; autodiff's elsewhere, `layers.hand_written_backward_for`).
  """
  hand_written = layers.hand_written_backward_for(config.hand_written_backward, platform)

  @functools.wraps(step_fn)
  def wrapped(*args):
    with jax.default_matmul_precision(config.matmul_precision), layers.hand_written_backward(hand_written):
      return step_fn(*args)

  return wrapped


def abstract_batch(config, batch_size: int, mesh, stored_image_size: Optional[int] = None):
  """Shapes and shardings of one global training batch as `to_devices` places it (uint8 RGB crops of the
  stored size, which the step resizes to `config.image_size`): for ahead-of-time compilation."""
  sharding = NamedSharding(mesh, P("data"))
  size = stored_image_size or config.image_size
  shapes = {"mfcc": ((batch_size,) + avtca.MFCC_SHAPE, jnp.float32), "label": ((batch_size,), jnp.int32),
            "mask": ((batch_size,), jnp.bool_)}
  if config.model != "audio":
    shapes["frames"] = ((batch_size, config.num_frames, size, size, 3), jnp.uint8)
  return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding) for k, (shape, dtype) in shapes.items()}


def make_train_step(config, model, tx, mesh):
  """(state, global batch, stop flags) -> state, summed metrics. shard_map gives pmap semantics inside one
  jit. The stop flags (one per device, 1 where its process got SIGTERM) are summed into the metrics, so
  every process learns of a stop request from the same step's output (`StopRequest`)."""

  def train_step(state: TrainState, batch, stop_flags):  # per device: its slice of the batch and flags
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    rng = jax.random.fold_in(rng, jax.lax.axis_index("data"))
    mfcc, frames, labels = model_inputs(config, batch, rng, train=True)

    def loss_fn(params):
      logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats}, mfcc, frames,
                                    train=True, mutable=["batch_stats"])
      if config.label_smoothing > 0:
        targets = optax.smooth_labels(jax.nn.one_hot(labels, config.num_classes), config.label_smoothing)
        loss = optax.softmax_cross_entropy(logits, targets).mean()
      else:
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, (logits, updates["batch_stats"])

    # pmap semantics: each device differentiates its own loss with respect to its own copy of the params
    # (`pcast(..., to='varying')` marks the replicated params as per-device values, a no-op at run time),
    # then the gradients are averaged. Differentiating the unvarying params directly would make shard_map
    # sum the gradients over devices implicitly, and custom-VJP layers (the batch norm) need per-device
    # cotangents for per-device inputs.
    local_params = jax.tree.map(lambda p: jax.lax.pcast(p, "data", to="varying"), state.params)
    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(local_params)
    grads = jax.lax.pmean(grads, "data")
    # Per-device statistics are averaged so the replicated state stays identical on every device
    # (flax imagenet's sync_batch_stats, every step: it is a few KB).
    batch_stats = jax.lax.pmean(batch_stats, "data")
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    count = jnp.asarray(labels.shape[0], jnp.float32)
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
    step_metrics = {"loss_sum": loss * count, "correct": jnp.sum(jnp.argmax(logits, -1) == labels),
                    "count": count, "nonfinite": 1 - finite.astype(jnp.int32), "stop": jnp.sum(stop_flags)}
    step_metrics = jax.lax.psum(step_metrics, "data")
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
    return new_state, step_metrics

  sharded = jax.shard_map(traced_for_backend(train_step, config, mesh_platform(mesh)), mesh=mesh,
                          in_specs=(P(), P("data"), P("data")), out_specs=(P(), P()))
  options = efficientface.remat_compiler_options(mesh_platform(mesh)) if config.remat else {}
  return jax.jit(sharded, donate_argnums=(0,), compiler_options=options or None)


REMOVALS = {None: (1, 0, 1, 0), "both": (1, 0, 1, 0), "audio_zeros": (0, 0, 1, 0), "audio_noise": (0, 1, 1, 0),
            "video_zeros": (1, 0, 0, 0), "video_noise": (1, 0, 0, 1)}


def removal_weights(remove: Optional[str]) -> np.ndarray:
  """(audio kept, audio noise, video kept, video noise) for a removal mode: the original's single-modality
  evaluation (spec 6) replaces a stream by zeros or by N(0, 1) noise."""
  if remove not in REMOVALS:
    raise ValueError(f"unknown stream removal {remove!r}; expected one of {sorted(k for k in REMOVALS if k)}")
  return np.asarray(REMOVALS[remove], np.float32)


def make_predict_step(config, model, mesh):
  """(state, batch, removal weights (4,)) -> (logits, labels, mask), sharded over `data`. The removal is an
  input, not a constant, so every mode runs the same compiled program."""

  def predict_step(state: TrainState, batch, weights):
    mfcc, frames, labels = model_inputs(config, batch)
    key = jax.random.fold_in(jax.random.key(12345), jax.lax.axis_index("data"))
    audio_key, video_key = jax.random.split(key)
    mfcc = weights[0] * mfcc + weights[1] * jax.random.normal(audio_key, mfcc.shape, mfcc.dtype)
    if frames is not None:
      frames = weights[2] * frames + weights[3] * jax.random.normal(video_key, frames.shape, frames.dtype)
    logits = model.apply({"params": state.params, "batch_stats": state.batch_stats}, mfcc, frames, train=False)
    return logits, labels, batch["mask"]

  sharded = jax.shard_map(traced_for_backend(predict_step, config, mesh_platform(mesh)), mesh=mesh,
                          in_specs=(P(), P("data"), P()), out_specs=P("data"))
  return jax.jit(sharded)


DEVICE_KEYS = ("mfcc", "frames", "label", "mask")


def to_devices(batch: Dict[str, Any], mesh) -> Dict[str, Array]:
  """Process-local rows -> global arrays sharded over `data` (each process holds its own rows). Batches
  already on the devices (data_sources.DeviceCache) pass through."""
  sharding = NamedSharding(mesh, P("data"))
  return {k: v if isinstance(v, jax.Array) else jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items() if k in DEVICE_KEYS}


def prefetch_to_devices(batches: Iterator[Dict[str, Any]], mesh, size: int = 2) -> Iterator[Dict[str, Array]]:
  """Host batches -> device batches, `size` in flight: when batch n is yielded, batches n+1 .. n+size-1
  are already being copied (the copies are asynchronous), so the transfer overlaps step n instead of
  preceding step n+1. A bounded double buffer (size 2): device memory holds at most `size` batches ahead."""
  queue = collections.deque()
  for batch in batches:
    queue.append(to_devices(batch, mesh))
    if len(queue) >= max(size, 1):
      yield queue.popleft()
  while queue:
    yield queue.popleft()


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


def _to_host(x: Array) -> np.ndarray:
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def predict(predict_step, state, source, split: str, batch_size: int, mesh, remove: Optional[str] = None):
  """Logits (N, C) and labels (N,) of a whole split, padding removed, on every host."""
  logits, labels = [], []
  weights = jax.device_put(removal_weights(remove), NamedSharding(mesh, P()))
  for batch in source.eval_batches(split, batch_size):
    out_logits, out_labels, mask = predict_step(state, to_devices(batch, mesh), weights)
    mask = _to_host(mask).astype(bool)
    logits.append(_to_host(out_logits)[mask])
    labels.append(_to_host(out_labels)[mask])
  return np.concatenate(logits), np.concatenate(labels)


def evaluate_split(predict_step, state, source, split, batch_size, mesh, num_classes) -> Dict[str, float]:
  logits, labels = predict(predict_step, state, source, split, batch_size, mesh)
  return metrics_lib.classification_metrics(logits, labels, num_classes)


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
  mesh = create_mesh()
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
  num_steps = total_train_steps(config, steps_per_epoch)
  has_eval = source.num_examples(config.data.eval_split) > 0

  # The run's identity, once the config and data have passed every check (still before any compilation).
  if not same_run or allow_config_change:
    checkpointing.write_config(workdir, config)

  # Model and optimizer.
  model = create_model(config, mesh_platform(mesh))
  learning_rate_fn = create_learning_rate_fn(config, steps_per_epoch)
  tx = create_optimizer(config, learning_rate_fn)
  checkpoints = checkpointing.Checkpoints(workdir, keep=config.keep_checkpoints)

  # Checkpoint restore, or a fresh state.
  abstract_state = create_train_state(config, model, tx, mesh, abstract=True)
  start_step = checkpoints.latest_step()
  if start_step is not None:
    state, meta = checkpoints.restore(abstract_state, start_step)
    logging.info("resumed from step %d (epoch %d, batch %d)", start_step, meta["epoch"], meta["position"])
  else:
    start_step = 0
    state = create_train_state(config, model, tx, mesh)
    checkpointing.write_model_json(workdir, config)
    if is_main:
      normalization = getattr(source, "mfcc_normalization", {"mode": "none"})
      if normalization["mode"] != "none":  # predict applies the same statistics to new clips
        (workdir / data_sources.NORMALIZATION_FILE).write_text(json.dumps(normalization, indent=1))
  logging.info("%d devices on %d processes, %d steps (%d per epoch), batch %d (%d per device)", num_devices,
               num_processes, num_steps, steps_per_epoch, config.batch_size, config.batch_size // num_devices)

  # Step functions.
  train_step = make_train_step(config, model, tx, mesh)
  predict_step = make_predict_step(config, model, mesh)

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
  batches = prefetch_to_devices(
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
        val = evaluate_split(predict_step, state, source, config.data.eval_split, eval_batch_size, mesh,
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
      test = evaluate_split(predict_step, test_state, source, config.data.test_split, eval_batch_size, mesh,
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
