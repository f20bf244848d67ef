"""EfficientFace frame encoder (Zhao et al. 2021), channels-last, layer for layer as the PyTorch original.

stem (conv 3x3/2 + BN + ReLU, max-pool 3/2) -> x0 (N,56,56,29)
stage2(x0) -> Modulator, plus LocalFeatureExtractor(x0)   (N,28,28,116)
stage3 (N,14,14,232) -> stage4 (N,7,7,464) -> conv5 1x1 + BN + ReLU (N,7,7,1024) -> global mean (N,1024)

Submodule names follow the PyTorch state-dict names so that conversion reads as a table.

`remat=True` rematerialises (jax.checkpoint) the stem, each ShuffleNet unit, the modulator, the local
branch and the head: the backward pass recomputes their activations from their inputs instead of keeping
them, so a training step holds about one block's activations at a time. Same parameters and names, same
results; more compute. For batches whose activations do not fit (the CPU step at batch 32). On CPU, jit
the step with `remat_compiler_options()`, or XLA undoes the rematerialisation.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from avtca_jax.models import layers
from avtca_jax.models.layers import BatchNorm, Conv, Conv1x1, Dense, DepthwiseConv

Dtype = Any


def remat_compiler_options(platform: str | None = None) -> dict:
  """`jax.jit(..., compiler_options=...)` for a step of a `remat=True` model.

  XLA:CPU expands jax.checkpoint's optimization barriers away early in its pipeline (GPU: after
  scheduling), and later passes merge each recomputation back into the forward pass: remat saves no memory
  there. Keeping the barriers in that one program restores the saving, with the same results
  (docs/cpu_performance.md).
  """
  platform = platform or jax.default_backend()
  return {"xla_disable_hlo_passes": "cse_barrier_expander"} if platform == "cpu" else {}


SHUFFLE_IMPLS = ("reshape", "matmul")


def shuffle_impl_for(platform: str | None = None) -> str:
  """The channel shuffle's form for a backend: a reshape on CPU, a product with a permutation matrix on GPU
  and TPU. Written as a reshape, XLA:TPU makes the shuffle a relayout copy of every unit's output with two of
  eight sublanes used; as a matrix product it runs on the matrix units, which the memory-bound step has to
  spare (docs/accelerators.md, "Where the bytes go")."""
  return "reshape" if (platform or jax.default_backend()) == "cpu" else "matmul"


def channel_shuffle(x: jax.Array, groups: int = 2, impl: str = "reshape") -> jax.Array:
  """ShuffleNet channel shuffle in NHWC: channels (g, C/g) -> (C/g, g).

  impl 'matmul' multiplies by the 0/1 permutation matrix, which is exact: every output is one input times 1
  plus zeros, accumulated in float32 at full precision, so both forms give identical values and gradients."""
  *lead, channels = x.shape
  if impl == "matmul":
    order = np.arange(channels).reshape(groups, channels // groups).T.reshape(-1)
    permutation = np.zeros((channels, channels), np.float32)
    permutation[order, np.arange(channels)] = 1.0
    y = jnp.dot(x, jnp.asarray(permutation, x.dtype), precision=jax.lax.Precision.HIGHEST,
                preferred_element_type=jnp.float32)
    return y.astype(x.dtype)
  if impl != "reshape":
    raise ValueError(f"channel shuffle impl must be one of {SHUFFLE_IMPLS}, got {impl!r}")
  x = x.reshape(*lead, groups, channels // groups)
  return jnp.swapaxes(x, -1, -2).reshape(*lead, channels)


def _pool_taps(x_padded, height, width):
  """The nine stride-2 slices of a 3x3/2 window, in PyTorch's row-major window order."""
  for i in range(3):
    for j in range(3):
      limit = (x_padded.shape[0], i + 2 * (height - 1) + 1, j + 2 * (width - 1) + 1, x_padded.shape[3])
      yield i, j, jax.lax.slice(x_padded, (0, i, j, 0), limit, (1, 2, 2, 1))


@jax.custom_vjp
def max_pool_3x3_s2(x):
  """3x3 stride 2 pad 1 max-pool (pads count as -inf), NHWC.

  The forward is XLA's reduce_window. Its autodiff backward is select_and_scatter, which XLA:CPU runs
  slowly; the hand-written backward below sends each output's gradient to the first maximum of its window
  (the element PyTorch's max_pool2d and select_and_scatter pick, so ties such as ReLU zeros get identical
  gradients) as nine fused compare/select/pad terms, which XLA:CPU runs faster (docs/cpu_performance.md).
  Gradients equal to select_and_scatter's to 1e-6.
  """
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def _max_pool_fwd(x):
  return max_pool_3x3_s2(x), x


def _max_pool_bwd(x, g):
  _, height, width, _ = x.shape
  out_h, out_w = g.shape[1], g.shape[2]
  x_padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  taps = [tap for _, _, tap in _pool_taps(x_padded, out_h, out_w)]
  # Index of each window's first maximum (strict >, as PyTorch), found from the taps themselves rather than
  # by equality with the forward's output, which need not be bit-identical once XLA fuses differently.
  best, index = taps[0], jnp.zeros(g.shape, jnp.int32)
  for k, tap in enumerate(taps[1:], start=1):
    greater = tap > best
    best = jnp.where(greater, tap, best)
    index = jnp.where(greater, k, index)
  zero = jnp.zeros((), g.dtype)
  grad = None
  for k in range(9):
    i, j = divmod(k, 3)
    # Transpose of the strided slice: put the selected gradients back at their stride-2 positions.
    term = jax.lax.pad(jnp.where(index == k, g, zero), zero,
                       ((0, 0, 0), (i, x_padded.shape[1] - i - 2 * (out_h - 1) - 1, 1),
                        (j, x_padded.shape[2] - j - 2 * (out_w - 1) - 1, 1), (0, 0, 0)))
    grad = term if grad is None else grad + term
  return (grad[:, 1:height + 1, 1:width + 1],)


max_pool_3x3_s2.defvjp(_max_pool_fwd, _max_pool_bwd)


class InvertedResidual(nn.Module):
  """ShuffleNetV2 unit. Stride 2: two branches on the full input; stride 1: split channels, one branch."""

  out_features: int
  strides: int
  train: bool
  conv_impl: str = "auto"
  dtype: Dtype = jnp.float32
  bn_axis_name: Any = None
  shuffle_impl: str = "reshape"

  @nn.compact
  def __call__(self, x, weights=None):
    branch_features = self.out_features // 2
    bn = lambda name: BatchNorm(not self.train, dtype=self.dtype, axis_name=self.bn_axis_name, name=name)
    dw = lambda feats, name: DepthwiseConv(feats, strides=self.strides, impl=self.conv_impl, dtype=self.dtype,
                                           name=name)
    if self.strides == 1:
      x1, x2 = jnp.split(x, 2, axis=-1)
    else:
      x1 = x2 = x
      in_features = x.shape[-1]
      # branch1: depthwise 3x3/2, BN, 1x1, BN, ReLU
      x1 = bn("branch1_1")(dw(in_features, "branch1_0")(x1), weights)
      x1 = nn.relu(bn("branch1_3")(Conv1x1(branch_features, dtype=self.dtype, name="branch1_2")(x1), weights))
    # branch2: 1x1, BN, ReLU, depthwise 3x3, BN, 1x1, BN, ReLU
    y = nn.relu(bn("branch2_1")(Conv1x1(branch_features, dtype=self.dtype, name="branch2_0")(x2), weights))
    y = bn("branch2_4")(dw(branch_features, "branch2_3")(y), weights)
    y = nn.relu(bn("branch2_6")(Conv1x1(branch_features, dtype=self.dtype, name="branch2_5")(y), weights))
    return channel_shuffle(jnp.concatenate([x1, y], axis=-1), 2, self.shuffle_impl)


class LocalFeatureExtractor(nn.Module):
  """Four 28x28 quadrants of x0, each through its own grouped 3x3/2 and depthwise 3x3 convs."""

  out_features: int
  train: bool
  conv_impl: str = "auto"
  dtype: Dtype = jnp.float32
  bn_axis_name: Any = None

  @nn.compact
  def __call__(self, x, weights=None):  # (N, 56, 56, 29)
    h, w = x.shape[1] // 2, x.shape[2] // 2
    quadrants = [x[:, :h, :w], x[:, h:, :w], x[:, :h, w:], x[:, h:, w:]]  # TL, BL, TR, BR (k = 1..4)
    outs = []
    for k, patch in enumerate(quadrants, start=1):
      bn = lambda name: BatchNorm(not self.train, dtype=self.dtype, axis_name=self.bn_axis_name, name=name)
      y = DepthwiseConv(self.out_features, strides=2, impl=self.conv_impl, dtype=self.dtype, name=f"conv{k}_1")(patch)
      y = nn.relu(bn(f"bn{k}_1")(y, weights))
      y = DepthwiseConv(self.out_features, strides=1, impl=self.conv_impl, dtype=self.dtype, name=f"conv{k}_2")(y)
      outs.append(nn.relu(bn(f"bn{k}_2")(y, weights)))  # (N, 14, 14, 116)
    left = jnp.concatenate([outs[0], outs[1]], axis=1)
    right = jnp.concatenate([outs[2], outs[3]], axis=1)
    return jnp.concatenate([left, right], axis=2)  # (N, 28, 28, 116)


class Modulator(nn.Module):
  """x * sigmoid(channel_gate(x) * spatial_gate(x)); reduction 16, two dilated (4) 3x3 convs."""

  train: bool
  reduction: int = 16
  dtype: Dtype = jnp.float32
  bn_axis_name: Any = None

  @nn.compact
  def __call__(self, x, weights=None):  # (N, 28, 28, C)
    channels = x.shape[-1]
    hidden = channels // self.reduction
    bn = lambda name: BatchNorm(not self.train, dtype=self.dtype, axis_name=self.bn_axis_name, name=name)
    # Channel gate on the global average.
    c = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)  # (N, C)
    c = nn.relu(bn("gate_c_bn_1")(Dense(hidden, dtype=self.dtype, name="gate_c_fc_0")(c), weights))
    c = Dense(channels, dtype=self.dtype, name="gate_c_fc_final")(c)[:, None, None, :]
    # Spatial gate.
    s = nn.relu(bn("gate_s_bn_reduce0")(Conv1x1(hidden, use_bias=True, dtype=self.dtype,
                                                 name="gate_s_conv_reduce0")(x), weights))
    for i in range(2):
      s = Conv(hidden, (3, 3), padding=4, dilation=4, use_bias=True, dtype=self.dtype, name=f"gate_s_conv_di_{i}")(s)
      s = nn.relu(bn(f"gate_s_bn_di_{i}")(s, weights))
    s = Conv1x1(1, use_bias=True, dtype=self.dtype, name="gate_s_conv_final")(s)  # (N, 28, 28, 1)
    return x * jax.nn.sigmoid(c * s)


class EfficientFace(nn.Module):
  """EfficientFace features: (N, 224, 224, 3) -> (N, 1024). No classification head.

  `weights` (N,), optional: in training, image i counts weights[i] times in every batch norm's statistics
  (`layers.BatchNorm`), so the features are those of the batch with each image repeated that many times."""

  train: bool
  stages_repeats: Sequence[int] = (4, 8, 4)
  stages_out_channels: Sequence[int] = (29, 116, 232, 464, 1024)
  conv_impl: str = "auto"
  dtype: Dtype = jnp.float32
  bn_axis_name: Any = None
  remat: bool = False  # recompute each block's activations in the backward pass (see the module docstring)
  shuffle_impl: str = "reshape"  # channel shuffle form (shuffle_impl_for: per backend)

  @nn.compact
  def __call__(self, x, weights=None):
    bn = lambda name: BatchNorm(not self.train, dtype=self.dtype, axis_name=self.bn_axis_name, name=name)
    ch = self.stages_out_channels
    # nn.remat keeps the module and parameter names: the same checkpoints load either way.
    checkpointed = nn.remat if self.remat else (lambda target: target)

    def stem(module, x, weights):
      x = Conv(ch[0], (3, 3), strides=2, padding=1, dtype=self.dtype, name="conv1_0")(x)
      x = nn.relu(bn("conv1_1")(x, weights))  # (N, 112, 112, 29)
      pool = max_pool_3x3_s2 if layers.uses_hand_written_backward() else max_pool_3x3_s2.fun  # .fun: autodiff's
      return pool(x)  # (N, 56, 56, 29)

    def head(module, x, weights):
      x = nn.relu(bn("conv5_1")(Conv1x1(ch[4], dtype=self.dtype, name="conv5_0")(x), weights))  # (N, 7, 7, 1024)
      return jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)  # (N, 1024)

    unit_class = checkpointed(InvertedResidual)

    def stage(x, index, repeats, out_features):
      for unit in range(repeats):
        x = unit_class(out_features, 2 if unit == 0 else 1, self.train, self.conv_impl, self.dtype,
                       self.bn_axis_name, self.shuffle_impl, name=f"stage{index}_{unit}")(x, weights)
      return x

    x0 = checkpointed(stem)(self, x, weights)  # (N, 56, 56, 29)
    x = stage(x0, 2, self.stages_repeats[0], ch[1])  # (N, 28, 28, 116)
    x = checkpointed(Modulator)(self.train, dtype=self.dtype, bn_axis_name=self.bn_axis_name,
                                name="modulator")(x, weights)
    x = x + checkpointed(LocalFeatureExtractor)(ch[1], self.train, self.conv_impl, self.dtype, self.bn_axis_name,
                                                name="local")(x0, weights)
    x = stage(x, 3, self.stages_repeats[1], ch[2])  # (N, 14, 14, 232)
    x = stage(x, 4, self.stages_repeats[2], ch[3])  # (N, 7, 7, 464)
    return checkpointed(head)(self, x, weights)  # (N, 1024)
