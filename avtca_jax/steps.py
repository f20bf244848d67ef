"""The model, optimizer, train state and compiled steps of one config on one mesh.

`build(config, mesh, steps_per_epoch)` is the one place where they are assembled; the trainer, evaluate,
export, `benchmarks.aot` and `benchmarks.step_time` all call it, so an ahead-of-time compile or a benchmark
compiles exactly the program that training runs.

- The train step is one `jax.jit` of a `jax.shard_map` over the `data` axis of the mesh (pmap semantics):
  each device takes its slice of the global batch, gradients and batch statistics are averaged over the
  axis, the state is replicated and donated.
- The predict step takes the stream-removal weights as an input, so every evaluation mode runs one program.
"""

from __future__ import annotations

import dataclasses
import functools
import collections
from typing import Any, Callable, Dict, Iterator, NamedTuple, Optional

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec as P

from avtca_jax import augment, batch as batch_lib
from avtca_jax.config_validation import ConfigError
from avtca_jax.models import avtca, efficientface, layers

Array = jax.Array


def create_mesh() -> jax.sharding.Mesh:
  """Every device of every host on one `data` axis."""
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
  """The configured model. Backend-dependent choices ('auto' depthwise-conv form, the channel shuffle's form)
  are made for `platform` (default: this machine's default backend)."""
  return avtca.create_model(
      config.model, num_classes=config.num_classes, fusion=config.fusion, num_heads=config.num_heads,
      num_frames=config.num_frames, image_size=config.image_size, dtype=jnp.dtype(config.dtype),
      conv_impl=layers.resolve_conv_impl(config.conv_impl, platform), remat=config.remat,
      bn_axis_name="data" if config.batch_norm == "global" else None,
      shuffle_impl=efficientface.shuffle_impl_for(platform))


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
  of it as `optax.trace` after `optax.scale(1 - dampening)` would (10x less with dampening 0.9)."""

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
  """'sgd': PyTorch SGD(momentum, dampening, weight_decay) as the original trains: L2 added to the
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
  """(mfcc, frames or None, labels, sample_frames): uint8 RGB frames -> float in the configured channel
  order, with the train-time augmentation and modality dropout drawn from `rng`. In training with modality
  dropout, `frames` holds each distinct clip once and `sample_frames` names each sample's row (the model's
  input of that name); otherwise `sample_frames` is None and frames has one row per sample."""
  mfcc, labels, frames = batch["mfcc"], batch["label"], batch.get("frames")
  if config.model == "audio":
    return mfcc, None, labels, None
  if train and config.flip_rotate:
    frames = augment.random_flip_and_rotate(jax.random.fold_in(rng, 0), frames)
  # Straight to the compute dtype: the model casts its input to it anyway, and the grown (4B-sample) batch of
  # modality dropout is then bfloat16, not float32, in a bfloat16 run.
  frames = avtca.frames_from_uint8(frames, config.channel_order, dtype=jnp.dtype(config.dtype))
  if frames.shape[2] != config.image_size:  # a smaller model input than the stored crops (fast configs)
    size = (config.image_size, config.image_size)
    frames = jax.image.resize(frames, frames.shape[:2] + size + frames.shape[4:], "bilinear")
  if train and config.modality_dropout != "none":
    return augment.modality_dropout(jax.random.fold_in(rng, 1), config.modality_dropout, mfcc, frames, labels,
                                    permute=False, distinct_frames=True)
  return mfcc, frames, labels, None


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
    from avtca_jax import convert, warm_start
    if not epath.Path(config.init_checkpoint).is_dir():
      raise ConfigError(f"config.init_checkpoint={config.init_checkpoint!r} is not a directory (a converted "
                        "checkpoint from `python -m avtca_jax.convert`)")
    try:
      variables, left_out = warm_start.load(config.init_checkpoint, into=variables)
    except convert.ConversionError as error:
      raise ConfigError(f"config.init_checkpoint={config.init_checkpoint}: {error}") from error
    logging.info("initialised from %s%s", config.init_checkpoint,
                 f"; left out (shapes differ, freshly initialised): {'; '.join(left_out)}" if left_out else "")
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
  shapes = batch_lib.example_shapes(config.num_frames, stored_image_size or config.image_size)
  keys = [k for k in DEVICE_KEYS if not (k == "frames" and config.model == "audio")]
  return {k: jax.ShapeDtypeStruct((batch_size,) + shapes[k], batch_lib.DTYPES[k], sharding=sharding) for k in keys}


def make_train_step(config, model, tx, mesh):
  """(state, global batch, stop flags) -> state, summed metrics. shard_map gives pmap semantics inside one
  jit. The stop flags (one per device, 1 where its process got SIGTERM) are summed into the metrics, so
  every process learns of a stop request from the same step's output (`StopRequest`)."""

  def train_step(state: TrainState, batch, stop_flags):  # per device: its slice of the batch and flags
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    rng = jax.random.fold_in(rng, jax.lax.axis_index("data"))
    mfcc, frames, labels, sample_frames = model_inputs(config, batch, rng, train=True)

    def loss_fn(params):
      logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats}, mfcc, frames,
                                    train=True, sample_frames=sample_frames, mutable=["batch_stats"])
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


def make_predict_step(config, model, mesh):
  """(state, batch, removal weights (4,)) -> (logits, labels, mask), sharded over `data`. The removal is an
  input, not a constant, so every mode runs the same compiled program."""

  def predict_step(state: TrainState, batch, weights):
    mfcc, frames, labels, _ = model_inputs(config, batch)
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


@dataclasses.dataclass(frozen=True)
class Steps:
  """What `build` assembles for one config on one mesh."""
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  model: Any
  tx: optax.GradientTransformation
  learning_rate_fn: optax.Schedule
  abstract_state: TrainState  # shapes and replicated shardings: the target of a checkpoint restore
  train_step: Callable  # (state, global batch, stop flags) -> (state, summed metrics)
  predict_step: Callable  # (state, global batch, removal weights) -> (logits, labels, mask)

  def initial_state(self) -> TrainState:
    """A fresh state on the devices (from `config.init_checkpoint` when set)."""
    return create_train_state(self.config, self.model, self.tx, self.mesh)


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, steps_per_epoch: int = 1) -> Steps:
  """The model (backend choices made for the mesh's platform, which for an ahead-of-time compile is the
  target's), the optimizer and its schedule (`steps_per_epoch` places the epoch boundaries), the abstract
  train state, and the jitted train and predict steps. Nothing is compiled until a step is first called
  or lowered."""
  model = create_model(config, mesh_platform(mesh))
  learning_rate_fn = create_learning_rate_fn(config, steps_per_epoch)
  tx = create_optimizer(config, learning_rate_fn)
  return Steps(config=config, mesh=mesh, model=model, tx=tx, learning_rate_fn=learning_rate_fn,
               abstract_state=create_train_state(config, model, tx, mesh, abstract=True),
               train_step=make_train_step(config, model, tx, mesh),
               predict_step=make_predict_step(config, model, mesh))
