"""Training-time augmentation: clip flip + rotation, and the original's modality dropout.

Everything here except the `tf_*` functions is pure JAX, meant to run inside the jitted train step
(docs/data.md explains that choice). Shapes: mfcc (B, 156, 10), frames (B, T, H, W, 3).

- `random_flip_and_rotate`: the original's video transform (docs/original.md#video-transforms): per clip a
  horizontal flip with probability 0.5, then a rotation by an integer angle in [-10, 10] degrees (PIL
  `rotate`: counter-clockwise for positive angles, about the image centre, bilinear, no expansion, black
  fill). One flip and one angle per clip, shared by its T frames.
- `softhard` / `noise`: the modality dropout of the original `train.py` (docs/original.md#modality-dropout).
  They grow the batch (4B / 3B samples) and permute it; apply them to float frames (after
  `frames_from_uint8`), as the original did to its [0, 1] tensors.
- `tf_flip_and_rotate` / `tf_random_flip_and_rotate`: the same transform in TensorFlow, for host-side use
  in tf.data and for comparison.
"""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

MAX_ANGLE = 10
DROPOUT_MODES = ("softhard", "noise")


def _source_coordinates(flip, angle_degrees, height: int, width: int):
  """Input (x, y) sampled by each output pixel, in pixel-centre index coordinates, each (H, W).

  Output pixel (x, y) of "flip, then rotate counter-clockwise by `angle`" reads the unrotated flipped image
  at R(-angle)-mapped coordinates about the centre ((W-1)/2, (H-1)/2); the flip mirrors x afterwards.
  Matches PIL's `Image.rotate` (its affine matrix with pixel centres at +0.5).
  """
  ys, xs = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32),
                        indexing="ij")
  cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
  theta = jnp.deg2rad(jnp.asarray(angle_degrees, jnp.float32))
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  x_in = cos * (xs - cx) - sin * (ys - cy) + cx
  y_in = sin * (xs - cx) + cos * (ys - cy) + cy
  x_in = jnp.where(flip, (width - 1) - x_in, x_in)
  return x_in, y_in


def _warp_clip(clip, flip, angle_degrees):
  """Bilinear warp of one clip (T, H, W, C) with one flip and one angle; black outside the image."""
  t, h, w, c = clip.shape
  x_in, y_in = _source_coordinates(flip, angle_degrees, h, w)
  # PIL samples a point only when it falls inside the image (pixel edges at -0.5 and W - 0.5) and then
  # clamps the 2x2 neighbourhood to the border; points outside get the fill colour.
  inside = (x_in >= -0.5) & (x_in < w - 0.5) & (y_in >= -0.5) & (y_in < h - 0.5)
  x0 = jnp.floor(x_in)
  y0 = jnp.floor(y_in)
  wx = (x_in - x0)[..., None]
  wy = (y_in - y0)[..., None]
  x0 = x0.astype(jnp.int32)
  y0 = y0.astype(jnp.int32)
  x0c, x1c = jnp.clip(x0, 0, w - 1), jnp.clip(x0 + 1, 0, w - 1)
  y0c, y1c = jnp.clip(y0, 0, h - 1), jnp.clip(y0 + 1, 0, h - 1)
  # One gather of (T*C)-vectors per output pixel serves all frames of the clip. The gathers read the clip in
  # its own dtype (uint8 crops: a quarter of float32's bytes) and convert what they took, which is exact.
  flat = jnp.moveaxis(clip, 0, 2).reshape(h * w, t * c)  # (H*W, T*C)
  take = lambda yy, xx: jnp.take(flat, (yy * w + xx).reshape(-1), axis=0).reshape(h, w, t * c).astype(jnp.float32)
  top = take(y0c, x0c) * (1 - wx) + take(y0c, x1c) * wx
  bottom = take(y1c, x0c) * (1 - wx) + take(y1c, x1c) * wx
  out = (top * (1 - wy) + bottom * wy) * inside[..., None]
  out = jnp.moveaxis(out.reshape(h, w, t, c), 2, 0)  # (T, H, W, C)
  if jnp.issubdtype(clip.dtype, jnp.integer):
    info = jnp.iinfo(clip.dtype)
    out = jnp.clip(jnp.round(out), info.min, info.max)
  return out.astype(clip.dtype)


@jax.jit
def flip_and_rotate(frames: jax.Array, flip: jax.Array, angle_degrees: jax.Array) -> jax.Array:
  """frames (B, T, H, W, C) with per-clip flip (B,) bool and angle (B,) degrees -> same shape and dtype."""
  return jax.vmap(_warp_clip)(frames, jnp.asarray(flip, bool), jnp.asarray(angle_degrees, jnp.float32))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def sample_flip_and_angle(rng: jax.Array, batch_size: int, max_angle: int = MAX_ANGLE,
                          flip_probability: float = 0.5) -> Tuple[jax.Array, jax.Array]:
  """Per-clip (flip (B,) bool, angle (B,) int32 in [-max_angle, max_angle])."""
  flip_rng, angle_rng = jax.random.split(rng)
  flip = jax.random.bernoulli(flip_rng, flip_probability, (batch_size,))
  angle = jax.random.randint(angle_rng, (batch_size,), -max_angle, max_angle + 1)
  return flip, angle


@functools.partial(jax.jit, static_argnums=(2, 3))
def random_flip_and_rotate(rng: jax.Array, frames: jax.Array, max_angle: int = MAX_ANGLE,
                           flip_probability: float = 0.5) -> jax.Array:
  """The original's train-time video transform, one random flip/angle per clip. frames (B, T, H, W, C)."""
  flip, angle = sample_flip_and_angle(rng, frames.shape[0], max_angle, flip_probability)
  return flip_and_rotate(frames, flip, angle)


@functools.partial(jax.jit, static_argnames=("permute", "distinct_frames"))
def softhard(rng: jax.Array, mfcc: jax.Array, frames: jax.Array, labels: jax.Array,
             coefficients: Optional[jax.Array] = None, permute: bool = True, distinct_frames: bool = False):
  """'softhard' modality dropout: B clips -> 4B samples, randomly permuted.

  Blocks before the permutation: originals; audio * c with video * (1 - c), c = randint(0, 100) / 100 per
  clip (0.00 .. 0.99); audio zeroed (all-zero MFCCs, not the MFCC of silence); video zeroed. Labels are
  repeated. `coefficients` (B,) overrides the draw (tests). Returns (mfcc, frames, labels, permutation),
  where sample i of the output is sample permutation[i] of the concatenated blocks. `permute=False` keeps
  the blocks in order (permutation = identity; see `modality_dropout`).

  `distinct_frames=True` (with permute=False) returns (mfcc, distinct frames, labels, sample_frames): the
  originals, the scaled copies and one all-zero clip (2B + 1 clips), and for each of the 4B samples the row
  of its frames (the originals twice, the zero clip B times).
  """
  _check_float_frames(frames)
  coefficient_rng, permutation_rng = jax.random.split(rng)
  b = mfcc.shape[0]
  if coefficients is None:
    coefficients = jax.random.randint(coefficient_rng, (b,), 0, 100) / 100.0
  c_audio = coefficients.astype(mfcc.dtype).reshape((b,) + (1,) * (mfcc.ndim - 1))
  c_video = (1.0 - coefficients).astype(frames.dtype).reshape((b,) + (1,) * (frames.ndim - 1))
  mfcc = jnp.concatenate([mfcc, mfcc * c_audio, jnp.zeros_like(mfcc), mfcc])
  labels = jnp.concatenate([labels] * 4)
  if distinct_frames:
    _check_unpermuted(permute)
    rows = jnp.arange(b)
    sample_frames = jnp.concatenate([rows, b + rows, rows, jnp.full((b,), 2 * b, rows.dtype)])
    return mfcc, jnp.concatenate([frames, frames * c_video, jnp.zeros_like(frames[:1])]), labels, sample_frames
  frames = jnp.concatenate([frames, frames * c_video, frames, jnp.zeros_like(frames)])
  return _permuted(permutation_rng, permute, mfcc, frames, labels)


def _check_unpermuted(permute: bool):
  if permute:
    raise ValueError("distinct_frames=True keeps the blocks in order: pass permute=False")


def _permuted(rng, permute: bool, mfcc, frames, labels):
  n = labels.shape[0]
  if not permute:
    return mfcc, frames, labels, jnp.arange(n)
  permutation = jax.random.permutation(rng, n)
  return mfcc[permutation], frames[permutation], labels[permutation], permutation


@functools.partial(jax.jit, static_argnames=("permute", "distinct_frames"))
def noise(rng: jax.Array, mfcc: jax.Array, frames: jax.Array, labels: jax.Array, permute: bool = True,
          distinct_frames: bool = False):
  """'noise' modality dropout: B clips -> 3B samples, randomly permuted.

  Blocks before the permutation: originals; audio replaced by N(0, 1) (video kept); video replaced by
  N(0, 1) (audio kept). Returns (mfcc, frames, labels, permutation) like `softhard`; `distinct_frames=True`
  (with permute=False) returns the originals and the noise clips (2B) and each sample's row, as `softhard`.
  """
  _check_float_frames(frames)
  noise_rng, permutation_rng = jax.random.split(rng)
  b = mfcc.shape[0]
  # One flat draw, then reshaped: XLA:CPU compiles multi-dimensional normal draws far more slowly.
  z = jax.random.normal(noise_rng, (mfcc.size + frames.size,), jnp.float32)
  audio_noise = z[:mfcc.size].reshape(mfcc.shape).astype(mfcc.dtype)
  video_noise = z[mfcc.size:].reshape(frames.shape).astype(frames.dtype)
  mfcc = jnp.concatenate([mfcc, audio_noise, mfcc])
  labels = jnp.concatenate([labels] * 3)
  if distinct_frames:
    _check_unpermuted(permute)
    rows = jnp.arange(b)
    return mfcc, jnp.concatenate([frames, video_noise]), labels, jnp.concatenate([rows, rows, b + rows])
  frames = jnp.concatenate([frames, frames, video_noise])
  return _permuted(permutation_rng, permute, mfcc, frames, labels)


def modality_dropout(rng: jax.Array, mode: Optional[str], mfcc: jax.Array, frames: jax.Array,
                     labels: jax.Array, permute: bool = True, distinct_frames: bool = False):
  """Dispatch on `mode` ('softhard', 'noise', or None / 'none' for no dropout).

  Returns (mfcc, frames, labels, sample_frames). `sample_frames` is None unless `distinct_frames`: then
  `frames` holds each distinct clip once and sample i's frames are frames[sample_frames[i]] (the model's
  `sample_frames` input), which spares the model the repeated clips' work.

  `permute=False` skips the original's shuffle of the grown batch. The train step uses that: its loss is a
  mean over samples and batch norm's statistics are sums over them, so the order of the samples within one
  step changes nothing but float rounding, while the shuffle costs a gather of every sample's frames."""
  if mode in (None, "none", "nodropout"):
    return mfcc, frames, labels, None
  if mode in ("softhard", "noise"):
    fn = softhard if mode == "softhard" else noise
    mfcc, frames, labels, order = fn(rng, mfcc, frames, labels, permute=permute, distinct_frames=distinct_frames)
    return mfcc, frames, labels, order if distinct_frames else None
  raise ValueError(f"unknown modality dropout {mode!r}; expected one of {DROPOUT_MODES} or None")


def _check_float_frames(frames):
  if not jnp.issubdtype(frames.dtype, jnp.floating):
    raise TypeError(f"modality dropout scales frames: convert them to float first (frames_from_uint8), "
                    f"got dtype {frames.dtype}")


# ---- TensorFlow (host) version, for tf.data and for comparison ---------------------------------------


def _tf_transform(flip, angle_degrees, height: int, width: int):
  """The 8 projective parameters (output -> input) of `_source_coordinates` for ImageProjectiveTransformV3."""
  import tensorflow as tf
  theta = angle_degrees * (np.pi / 180.0)
  cos, sin = tf.cos(theta), tf.sin(theta)
  cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
  # x_in = a0 x + a1 y + a2 ; y_in = b0 x + b1 y + b2 ; then flipped: x_in' = (W-1) - x_in.
  a0, a1, a2 = cos, -sin, cx - cos * cx + sin * cy
  b0, b1, b2 = sin, cos, cy - sin * cx - cos * cy
  sign = tf.where(flip, -1.0, 1.0)
  offset = tf.where(flip, float(width - 1), 0.0)
  return tf.stack([sign * a0, sign * a1, sign * a2 + offset, b0, b1, b2, 0.0, 0.0])


def tf_flip_and_rotate(clip, flip, angle_degrees):
  """One clip (T, H, W, C) uint8 -> same, flipped (bool scalar) then rotated by `angle_degrees` (scalar)."""
  import tensorflow as tf
  t, h, w = clip.shape[0], clip.shape[1], clip.shape[2]
  transform = _tf_transform(tf.cast(flip, tf.bool), tf.cast(angle_degrees, tf.float32), h, w)
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=tf.cast(clip, tf.float32), transforms=tf.tile(transform[None], [tf.shape(clip)[0], 1]),
      output_shape=[h, w], interpolation="BILINEAR", fill_mode="CONSTANT", fill_value=0.0)
  if clip.dtype == tf.uint8:
    out = tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)
  return tf.ensure_shape(out, clip.shape) if t is not None else out


def tf_random_flip_and_rotate(clip, seed, max_angle: int = MAX_ANGLE, flip_probability: float = 0.5):
  """Random per-clip flip + integer-angle rotation with a stateless seed (shape (2,) int)."""
  import tensorflow as tf
  seeds = tf.random.experimental.stateless_split(seed, 2)
  flip = tf.random.stateless_uniform([], seeds[0]) < flip_probability
  angle = tf.random.stateless_uniform([], seeds[1], minval=-max_angle, maxval=max_angle + 1, dtype=tf.int32)
  return tf_flip_and_rotate(clip, flip, angle)
