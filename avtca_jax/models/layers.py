"""Building blocks shared by the AVT-CA modules: PyTorch-exact batch norm and fast convolutions.

Everything is channels-last. Parameters are float32; `dtype` is the compute dtype.

Why custom layers:
- `BatchNorm`: PyTorch updates `running_var` with the *unbiased* batch variance, Flax's `nn.BatchNorm`
  with the biased one. Converted checkpoints keep training with PyTorch's statistics only if we match it
  (docs/original.md#porting-notes).
- `DepthwiseConv`: XLA:CPU lowers grouped convolutions to code several times slower than PyTorch's; the same
  convolution written as a sum of shifted slices times per-channel weights is several times faster there
  (docs/cpu_performance.md). On GPU and TPU the native grouped convolution is the natural choice. Both
  forms share one parameter layout (`kernel`: (kh, kw, 1, out), the `feature_group_count` layout) and are
  tested to agree.
- `Conv1x1`: a 1x1 convolution as one matrix product over (N*H*W, C), faster on XLA:CPU than `lax.conv`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

Dtype = Any
Array = jax.Array


def torch_uniform_init(fan_in: int) -> Callable:
  """PyTorch's default init for conv/linear weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def resolve_conv_impl(impl: str, platform: Optional[str] = None) -> str:
  """'auto' picks the depthwise-conv form per backend: shifted slices on CPU, grouped conv elsewhere.

  `platform` is the backend the program is compiled for ('cpu', 'gpu'/'cuda', 'tpu'); it defaults to the
  default backend, but an ahead-of-time compile for another target must name it (benchmarks/aot.py).
  """
  if impl == "auto":
    return "slices" if (platform or jax.default_backend()) == "cpu" else "grouped"
  if impl not in ("slices", "grouped"):
    raise ValueError(f"depthwise conv impl must be 'auto', 'slices' or 'grouped', got {impl!r}")
  return impl


# Hand-written backward passes (train-mode batch norm here, EfficientFace's stem max-pool) are for XLA:CPU,
# where they are faster than autodiff's. On GPUs and TPUs the compiled step is smaller without them (less
# memory and fewer bytes accessed; docs/accelerators.md), so they are a per-backend choice, made while the
# step is traced (`steps.make_train_step` sets it for the mesh's platform).
_HAND_WRITTEN_BACKWARD = contextvars.ContextVar("hand_written_backward", default=True)


def hand_written_backward_for(setting: str, platform: Optional[str] = None) -> bool:
  """config.hand_written_backward ('auto': on CPU only, 'on', 'off') for the compile target's platform."""
  if setting == "auto":
    return (platform or jax.default_backend()) == "cpu"
  if setting not in ("on", "off"):
    raise ValueError(f"hand_written_backward must be 'auto', 'on' or 'off', got {setting!r}")
  return setting == "on"


@contextlib.contextmanager
def hand_written_backward(enabled: bool):
  """Within this block (while a step is traced) use the hand-written backward passes, or autodiff's."""
  token = _HAND_WRITTEN_BACKWARD.set(bool(enabled))
  try:
    yield
  finally:
    _HAND_WRITTEN_BACKWARD.reset(token)


def uses_hand_written_backward() -> bool:
  return _HAND_WRITTEN_BACKWARD.get()


class BatchNorm(nn.Module):
  """Batch norm with PyTorch semantics.

  Normalises with the biased batch variance (as PyTorch does in train mode) and updates the running
  variance with the unbiased one. `momentum` is PyTorch's (weight of the new batch), default 0.1.
  With `axis_name`, batch statistics are averaged over that mapped axis (global batch norm).

  `weights` (N,), optional, counts each of the N rows of `x` that many times in the batch statistics: the
  result for a row is then the one it would get in the batch where every row is repeated `weights` times
  (how the train step runs EfficientFace once per distinct clip, `AVTCA.__call__`'s `sample_frames`).
  """

  use_running_average: bool
  momentum: float = 0.1
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: Array, weights: Optional[Array] = None) -> Array:
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))

    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
      inv = jax.lax.rsqrt(var + self.epsilon) * scale
      y = (x.astype(jnp.float32) - mean) * inv + bias
      return y.astype(self.dtype)

    reduce_axes = tuple(range(x.ndim - 1))
    x32 = x.astype(jnp.float32)
    count = int(np.prod([x.shape[a] for a in reduce_axes[1:]]))  # per row
    if weights is None:
      count = count * x.shape[0]
    else:
      weights = _row_weights(weights, x)
      count = count * jnp.sum(weights)
    if self.axis_name is None:
      if weights is None:
        norm = batch_norm_train if uses_hand_written_backward() else batch_norm_train.fun  # .fun: autodiff's
        y, mean, var = norm(x32, scale, bias, self.epsilon)
      else:
        norm = weighted_batch_norm_train if uses_hand_written_backward() else weighted_batch_norm_train.fun
        y, mean, var = norm(x32, scale, bias, weights, self.epsilon)
    else:
      # Two passes, as PyTorch (see _batch_stats). Every device holds as many (weighted) rows, so the mean
      # of the devices' statistics is the global batch's.
      mean, var = _batch_stats(x32, weights, lambda stat: jax.lax.pmean(stat, self.axis_name))
      count = count * jax.lax.psum(1, self.axis_name)
      y = (x32 - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
    if not self.is_initializing():
      unbiased = var * (count / jnp.maximum(count - 1, 1))
      ra_mean.value = (1 - self.momentum) * ra_mean.value + self.momentum * jax.lax.stop_gradient(mean)
      ra_var.value = (1 - self.momentum) * ra_var.value + self.momentum * jax.lax.stop_gradient(unbiased)
    return y.astype(self.dtype)


def _row_weights(weights: Array, x: Array) -> Array:
  """Per-row weights (N,) as float32 shaped to broadcast against x (N, ...)."""
  return jnp.asarray(weights, jnp.float32).reshape((x.shape[0],) + (1,) * (x.ndim - 1))


def _batch_stats(x: Array, weights: Optional[Array] = None, combine=lambda stat: stat) -> tuple[Array, Array]:
  """Per-channel mean and biased variance over all axes but the last, each row counted `weights` times
  (None: once); `combine` merges the per-device statistics (global batch norm)."""
  axes = tuple(range(x.ndim - 1))
  if weights is None:
    average = lambda values: jnp.mean(values, axis=axes)
  else:
    total = jnp.sum(weights) * (x.size // (x.shape[0] * x.shape[-1]))
    average = lambda values: jnp.sum(weights * values, axis=axes) / total
  mean = combine(average(x))
  # Two passes, as PyTorch: E[x^2] - E[x]^2 cancels in float32 when |mean| >> std (raw MFCCs have
  # c0 near -400), which makes train-mode gradients far less accurate than PyTorch's (tests/test_parity.py).
  # A one-pass form shifted by one sample per channel keeps that accuracy but does not reduce the memory
  # traffic of the compiled TPU step (docs/accelerators.md, "Where the bytes go").
  var = combine(average(jnp.square(x - mean)))
  return mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x: Array, scale: Array, bias: Array, epsilon: float) -> tuple[Array, Array, Array]:
  """Train-mode batch norm over all axes but the last: returns (y, batch mean, biased batch variance).

  The hand-written backward is the textbook closed form, dx = scale/sigma * (g - mean(g) - xhat * mean(g*xhat)):
  one pass for the per-channel means and one elementwise pass, where autodiff of the two-pass variance
  makes XLA:CPU walk the activation more often (docs/cpu_performance.md). Gradients agree with autodiff to
  ~2e-7.
  """
  mean, var = _batch_stats(x)
  return (x - mean) * (jax.lax.rsqrt(var + epsilon) * scale) + bias, mean, var


def _batch_norm_fwd(x, scale, bias, epsilon):
  mean, var = _batch_stats(x)
  inv = jax.lax.rsqrt(var + epsilon)
  return ((x - mean) * (inv * scale) + bias, mean, var), (x, mean, inv, scale)


def _batch_norm_bwd(epsilon, res, cotangents):
  x, mean, inv, scale = res
  g, g_mean, g_var = cotangents  # g_mean, g_var: from the running-statistics update (zero in a loss)
  axes = tuple(range(x.ndim - 1))
  count = x.size // x.shape[-1]
  centered = x - mean
  xhat = centered * inv
  # One fused pass for the three per-channel means. Centering xhat again with its own computed mean makes
  # dx sum to zero over the batch as exactly as autodiff's does: a bias before a train-mode BN (conv or
  # Linear bias) then keeps its structurally zero gradient (tests/test_parity.py::test_gradients_match).
  g_sum = jnp.mean(g, axis=axes)
  g_xhat = jnp.mean(g * xhat, axis=axes)
  xhat_mean = jnp.mean(xhat, axis=axes)
  dx = ((g - g_sum) - (xhat - xhat_mean) * g_xhat) * (inv * scale)
  dx = dx + g_mean / count + centered * (2.0 * g_var / count)
  return dx, g_xhat * count, g_sum * count


batch_norm_train.defvjp(_batch_norm_fwd, _batch_norm_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def weighted_batch_norm_train(x: Array, scale: Array, bias: Array, weights: Array,
                              epsilon: float) -> tuple[Array, Array, Array]:
  """`batch_norm_train` with row i of x counted weights[i] times (weights shaped as `_row_weights`).

  The result equals `batch_norm_train` on the batch with each row repeated, and so does the gradient of a
  row once the gradients of its copies are summed (what the transpose of the repetition does): the
  hand-written backward is `_batch_norm_bwd`'s closed form with the batch means taken over the repeated
  batch, dx = scale/sigma * (g - w * mean(g) - w * xhat * mean(g*xhat)), where g is already the copies' sum.
  `weights` gets no gradient (they are counts)."""
  mean, var = _batch_stats(x, weights)
  return (x - mean) * (jax.lax.rsqrt(var + epsilon) * scale) + bias, mean, var


def _weighted_batch_norm_fwd(x, scale, bias, weights, epsilon):
  mean, var = _batch_stats(x, weights)
  inv = jax.lax.rsqrt(var + epsilon)
  return ((x - mean) * (inv * scale) + bias, mean, var), (x, mean, inv, scale, weights)


def _weighted_batch_norm_bwd(epsilon, res, cotangents):
  x, mean, inv, scale, weights = res
  g, g_mean, g_var = cotangents
  axes = tuple(range(x.ndim - 1))
  count = jnp.sum(weights) * (x.size // (x.shape[0] * x.shape[-1]))  # rows of the repeated batch
  centered = x - mean
  xhat = centered * inv
  g_sum = jnp.sum(g, axis=axes) / count
  g_xhat = jnp.sum(g * xhat, axis=axes) / count
  xhat_mean = jnp.sum(weights * xhat, axis=axes) / count  # centred again, as in _batch_norm_bwd
  dx = (g - weights * (g_sum + (xhat - xhat_mean) * g_xhat)) * (inv * scale)
  dx = dx + weights * (g_mean / count + centered * (2.0 * g_var / count))
  return dx, g_xhat * count, g_sum * count, jnp.zeros_like(weights)


weighted_batch_norm_train.defvjp(_weighted_batch_norm_fwd, _weighted_batch_norm_bwd)


class Conv1x1(nn.Module):
  """1x1 convolution (no padding, stride 1) as a matrix product; kernel layout (1, 1, in, out)."""

  features: int
  use_bias: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_features = x.shape[-1]
    kernel = self.param("kernel", torch_uniform_init(in_features), (1, 1, in_features, self.features))
    y = jnp.dot(x.astype(self.dtype), kernel[0, 0].astype(self.dtype))
    if self.use_bias:
      y = y + self.param("bias", torch_uniform_init(in_features), (self.features,)).astype(self.dtype)
    return y


class Conv(nn.Module):
  """Dense N-d convolution (1-D or 2-D), symmetric padding, PyTorch init; kernel (*k, in, out)."""

  features: int
  kernel_size: Sequence[int]
  strides: int = 1
  padding: int = 0
  dilation: int = 1
  use_bias: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    ksize = tuple(self.kernel_size)
    nd = len(ksize)
    in_features = x.shape[-1]
    init = torch_uniform_init(in_features * int(np.prod(ksize)))
    kernel = self.param("kernel", init, ksize + (in_features, self.features))
    spatial = "HW"[:nd] if nd == 2 else "W"
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype),
        kernel.astype(self.dtype),
        window_strides=(self.strides,) * nd,
        padding=[(self.padding, self.padding)] * nd,
        rhs_dilation=(self.dilation,) * nd,
        dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"),
    )
    if self.use_bias:
      y = y + self.param("bias", init, (self.features,)).astype(self.dtype)
    return y


def _depthwise_slices(x: Array, kernel: Array, stride: int, padding: int) -> Array:
  """Grouped conv with one input channel per group, as a sum of kh*kw shifted, strided slices."""
  kh, kw, _, out_features = kernel.shape
  batch, _, _, in_features = x.shape
  # Output channel o reads input channel o // multiplier. With a multiplier (the LocalFeatureExtractor's
  # 29 -> 116), each window is broadcast against the kernel viewed as (in, multiplier) instead of
  # materialising jnp.repeat(x, multiplier): 4x less input traffic, and the input gradient becomes a sum
  # over the multiplier axis.
  multiplier = out_features // in_features
  x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  height = (x.shape[1] - kh) // stride + 1
  width = (x.shape[2] - kw) // stride + 1
  out = None
  for i in range(kh):
    for j in range(kw):
      window = jax.lax.slice(
          x,
          (0, i, j, 0),
          (batch, i + (height - 1) * stride + 1, j + (width - 1) * stride + 1, in_features),
          (1, stride, stride, 1),
      )
      if multiplier > 1:
        term = window[..., None] * kernel[i, j, 0].reshape(in_features, multiplier)
      else:
        term = window * kernel[i, j, 0]
      out = term if out is None else out + term
  return out.reshape(batch, height, width, out_features)


class DepthwiseConv(nn.Module):
  """Grouped 3x3 conv with groups = input channels (channel multiplier out/in), no bias.

  `impl`: 'slices' (fast on XLA:CPU), 'grouped' (lax conv with feature_group_count) or 'auto'.
  """

  features: int
  kernel_size: int = 3
  strides: int = 1
  padding: int = 1
  impl: str = "auto"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_features = x.shape[-1]
    if self.features % in_features:
      raise ValueError(f"depthwise conv: {self.features} outputs is not a multiple of {in_features} inputs")
    k = self.kernel_size
    kernel = self.param("kernel", torch_uniform_init(k * k), (k, k, 1, self.features))
    x = x.astype(self.dtype)
    kernel = kernel.astype(self.dtype)
    if resolve_conv_impl(self.impl) == "slices":
      return _depthwise_slices(x, kernel, self.strides, self.padding)
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(self.strides, self.strides),
        padding=[(self.padding, self.padding)] * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=in_features,
    )


class Dense(nn.Module):
  """Linear layer with PyTorch's default init; kernel (in, out)."""

  features: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    init = torch_uniform_init(x.shape[-1])
    kernel = self.param("kernel", init, (x.shape[-1], self.features))
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      y = y + self.param("bias", init, (self.features,)).astype(self.dtype)
    return y


class LayerNorm(nn.Module):
  """LayerNorm with PyTorch's eps (1e-5); statistics in float32."""

  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
    return y.astype(self.dtype)
