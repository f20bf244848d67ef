"""AVT-CA: EfficientFace frames + MFCC 1-D convs, fused with cross attention (arXiv 2407.18552).

Layer for layer the public PyTorch code (shravan-18/AVTCA, `models/multimodalcnn.py`), channels-last:

  mfcc (B, 156, 10) -> audio stage 1 (valid conv k3 + BN + ReLU + max-pool 2/1, twice) -> a (B, 150, 128)
  frames (B, 15, 224, 224, 3) -> EfficientFace per frame (B*15, 1024) -> (B, 15, 1024)
      -> visual stage 1 ('same' conv k3 + BN + ReLU, twice) -> v (B, 15, 64)

  fusion 'it' (AVT-CA):  a += AttentionBlock(k/v=v, q=a);  v += AttentionBlock(k/v=a, q=v)
                         stage 2: a (B, 144, 128), v (B, 15, 128)
                         one shared MHA(128) as self-attention on a and on v (no residual, no norm)
  fusion 'ia':           a, v scaled by summed, head-averaged cross-attention weights; then stage 2
  fusion 'lt':           stage 2 first; AttentionBlock(k/v=v, q=a) and AttentionBlock(k/v=a, q=v)
  then mean over time per stream, concat [audio, video] (B, 256), Linear -> (B, num_classes)

Input contract of the original checkpoints: frames in [0, 1], BGR channel order, no normalisation;
raw (unnormalised) librosa MFCCs. `frames_from_uint8` converts stored RGB uint8 crops to it.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from avtca_jax.models.attention import Attention, AttentionBlock, MultiHeadSelfAttention
from avtca_jax.models.efficientface import EfficientFace
from avtca_jax.models.layers import BatchNorm, Conv, Dense
from avtca_jax.preprocessing.audio import MFCC_SHAPE  # (time frames, coefficients) = (156, 10)

Dtype = Any
FUSIONS = ("it", "ia", "lt")
MIN_AUDIO_FRAMES = 13   # shortest input the audio branch's 4 x (valid conv k3 + max-pool 2/1) leaves 1 frame of


def frames_from_uint8(frames: jax.Array, channel_order: str = "bgr", dtype: Dtype = jnp.float32) -> jax.Array:
  """RGB uint8 face crops (..., H, W, 3) -> float in [0, 1] in the model's channel order.

  The original model (and checkpoints trained with it) saw BGR frames, because its preprocessing saved
  OpenCV's BGR arrays and its dataset treated them as RGB. Keep 'bgr' for those checkpoints.
  """
  if channel_order not in ("bgr", "rgb"):
    raise ValueError(f"channel_order must be 'bgr' or 'rgb', got {channel_order!r}")
  x = frames.astype(dtype) / 255.0
  return x[..., ::-1] if channel_order == "bgr" else x


class Conv1dBlock(nn.Module):
  """Conv1d k3 (bias) + BN + ReLU; the audio variant is 'valid' and adds max-pool(2, stride 1)."""

  features: int
  train: bool
  audio: bool = False
  dtype: Dtype = jnp.float32
  bn_axis_name: Any = None

  @nn.compact
  def __call__(self, x):  # (B, T, C)
    x = Conv(self.features, (3,), padding=0 if self.audio else 1, use_bias=True, dtype=self.dtype, name="conv")(x)
    x = nn.relu(BatchNorm(not self.train, dtype=self.dtype, axis_name=self.bn_axis_name, name="bn")(x))
    if self.audio:
      # MaxPool1d(2, stride 1) is the larger of each pair of neighbouring frames. Written as jnp.maximum it is
      # elementwise in both directions; nn.max_pool's select-and-scatter backward makes the audio branch's
      # training step slower on XLA:CPU. Gradients differ only on exact ties between two positive values
      # (split instead of given to the first); ties at 0 come from the ReLU, which passes no gradient anyway.
      x = jnp.maximum(x[:, :-1], x[:, 1:])
    return x


class AVTCA(nn.Module):
  """Audio-video emotion classifier. `__call__(mfcc (B,156,10), frames (B,T,224,224,3), train)`.

  `sample_frames` (B,) int, optional: sample i's frames are frames[sample_frames[i]], and `frames` holds
  only the distinct clips (U, T, 224, 224, 3). EfficientFace then runs once per distinct clip, each counted
  in its batch norms as often as samples use it, which gives the same outputs and gradients as the repeated
  batch. Modality dropout repeats clips: 'softhard' makes 4 samples per clip from 2 distinct clips and one
  all-zero clip shared by the batch (`augment.softhard`), so the train step runs EfficientFace, nearly all
  of its work and memory, on about half the frames."""

  num_classes: int = 8
  fusion: str = "it"
  num_heads: int = 8
  num_frames: int = 15
  image_size: int = 224
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"
  bn_axis_name: Optional[str] = None
  remat: bool = False  # rematerialise EfficientFace's blocks in the backward pass (less memory, more compute)
  shuffle_impl: str = "reshape"  # EfficientFace's channel shuffle form, per backend (efficientface.shuffle_impl_for)

  def _check_inputs(self, mfcc, frames, sample_frames):
    if self.fusion not in FUSIONS:
      raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
    want_frames = (self.num_frames, self.image_size, self.image_size, 3)
    if mfcc.ndim != 3 or tuple(mfcc.shape[1:]) != MFCC_SHAPE:
      raise ValueError(f"mfcc: expected shape (batch, {MFCC_SHAPE[0]}, {MFCC_SHAPE[1]}) (time, coefficients), "
                       f"got {tuple(mfcc.shape)}")
    if frames.ndim != 5 or tuple(frames.shape[1:]) != want_frames:
      raise ValueError(f"frames: expected shape (batch, {', '.join(map(str, want_frames))}) "
                       f"(frames per clip, crop, crop, channels), got {tuple(frames.shape)}")
    if sample_frames is not None:
      if sample_frames.shape != (mfcc.shape[0],):
        raise ValueError(f"sample_frames: expected shape ({mfcc.shape[0]},) (one frames row per sample), "
                         f"got {tuple(sample_frames.shape)}")
    elif mfcc.shape[0] != frames.shape[0]:
      raise ValueError(f"batch mismatch: mfcc has {mfcc.shape[0]} clips, frames has {frames.shape[0]}")

  @nn.compact
  def __call__(self, mfcc, frames, train: bool = False, sample_frames=None):
    self._check_inputs(mfcc, frames, sample_frames)
    kw = dict(train=train, dtype=self.dtype, bn_axis_name=self.bn_axis_name)
    audio_block = lambda i, f: Conv1dBlock(f, audio=True, name=f"audio_conv1d_{i}", **kw)
    visual_block = lambda i, f: Conv1dBlock(f, name=f"visual_conv1d_{i}", **kw)

    # Stage 1.
    a = audio_block(1, 128)(audio_block(0, 64)(mfcc.astype(self.dtype)))  # (B, 150, 128)
    images = frames.reshape((-1,) + frames.shape[2:]).astype(self.dtype)  # (U*T, 224, 224, 3), clip-major
    weights = None
    if sample_frames is not None and train:  # how many samples use each clip, for every frame of it
      uses = jnp.zeros((frames.shape[0],), jnp.float32).at[sample_frames].add(1.0)
      weights = jnp.repeat(uses, self.num_frames)
    features = EfficientFace(train, conv_impl=self.conv_impl, dtype=self.dtype, bn_axis_name=self.bn_axis_name,
                             remat=self.remat, shuffle_impl=self.shuffle_impl,
                             name="visual_backbone")(images, weights)  # (U*T, 1024)
    v = features.reshape(frames.shape[0], self.num_frames, -1)  # (U, T, 1024)
    if sample_frames is not None:
      v = v[sample_frames]  # (B, T, 1024)
    v = visual_block(1, 64)(visual_block(0, 64)(v))  # (B, T, 64)

    if self.fusion == "it":
      h_av = AttentionBlock(128, self.num_heads, dtype=self.dtype, name="av1")(v, a)  # (B, 150, 128)
      h_va = AttentionBlock(64, self.num_heads, dtype=self.dtype, name="va1")(a, v)  # (B, T, 64)
      a, v = a + h_av, v + h_va
    elif self.fusion == "ia":
      _, w_av = Attention(128, self.num_heads, project=False, dtype=self.dtype, name="av1")(v, a)  # (B,H,150,T)
      _, w_va = Attention(64, self.num_heads, project=False, dtype=self.dtype, name="va1")(a, v)  # (B,H,T,150)
      frame_weights = jnp.mean(w_av, axis=1).sum(axis=1)  # (B, T)
      audio_weights = jnp.mean(w_va, axis=1).sum(axis=1)  # (B, 150)
      a = a * audio_weights[..., None].astype(self.dtype)
      v = v * frame_weights[..., None].astype(self.dtype)

    # Stage 2.
    a = audio_block(3, 128)(audio_block(2, 256)(a))  # (B, 144, 128)
    v = visual_block(3, 128)(visual_block(2, 128)(v))  # (B, T, 128)

    if self.fusion == "it":
      final_attention = MultiHeadSelfAttention(self.num_heads, dtype=self.dtype, name="final_attention")
      a, v = final_attention(a), final_attention(v)
    elif self.fusion == "lt":
      a, v = (AttentionBlock(128, self.num_heads, dtype=self.dtype, name="av")(v, a),
              AttentionBlock(128, self.num_heads, dtype=self.dtype, name="va")(a, v))

    pooled = jnp.concatenate([jnp.mean(a.astype(jnp.float32), axis=1),
                              jnp.mean(v.astype(jnp.float32), axis=1)], axis=-1)  # (B, 256)
    logits = Dense(self.num_classes, dtype=self.dtype, name="classifier")(pooled.astype(self.dtype))
    return logits.astype(jnp.float32)


class AudioClassifier(nn.Module):
  """The audio branch alone (stage 1 + 2, mean over time, Linear): the original's audio baseline.

  `__call__(mfcc (B,156,10), frames=None, train)`; parameter names match AVTCA's audio branch.
  """

  num_classes: int = 8
  dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None
  # The branch is convolutional with a mean over time, so it is defined for any length; True accepts
  # (batch, T >= MIN_AUDIO_FRAMES, 10) (e.g. random time crops in training), False only the (156, 10) contract.
  variable_length: bool = False

  @nn.compact
  def __call__(self, mfcc, frames=None, train: bool = False, sample_frames=None):
    del frames, sample_frames  # the audio branch alone
    if self.variable_length:
      if mfcc.ndim != 3 or mfcc.shape[2] != MFCC_SHAPE[1] or mfcc.shape[1] < MIN_AUDIO_FRAMES:
        raise ValueError(f"mfcc: expected shape (batch, time >= {MIN_AUDIO_FRAMES}, {MFCC_SHAPE[1]}), "
                         f"got {tuple(mfcc.shape)}")
    elif mfcc.ndim != 3 or tuple(mfcc.shape[1:]) != MFCC_SHAPE:
      raise ValueError(f"mfcc: expected shape (batch, {MFCC_SHAPE[0]}, {MFCC_SHAPE[1]}) (time, coefficients), "
                       f"got {tuple(mfcc.shape)}")
    a = mfcc.astype(self.dtype)
    for i, features in enumerate((64, 128, 256, 128)):
      a = Conv1dBlock(features, train, audio=True, dtype=self.dtype, bn_axis_name=self.bn_axis_name,
                      name=f"audio_conv1d_{i}")(a)  # (B, 144, 128) after the fourth
    pooled = jnp.mean(a.astype(jnp.float32), axis=1)
    return Dense(self.num_classes, dtype=self.dtype, name="classifier")(pooled.astype(self.dtype)).astype(jnp.float32)


def create_model(name: str = "avtca", **kwargs) -> nn.Module:
  """'avtca' (fusion it/ia/lt via kwargs) or 'audio' (the audio branch alone)."""
  if name == "avtca":
    return AVTCA(**kwargs)
  if name == "audio":
    kwargs = {k: v for k, v in kwargs.items() if k in ("num_classes", "dtype", "bn_axis_name")}
    return AudioClassifier(**kwargs)
  raise ValueError(f"unknown model {name!r}: expected 'avtca' or 'audio'")


def init_variables(model: nn.Module, rng: jax.Array, batch_size: int = 1) -> dict:
  """Initialise {'params', 'batch_stats'} with zero inputs of the model's shapes (jit-compiled)."""
  mfcc = jnp.zeros((batch_size,) + MFCC_SHAPE, jnp.float32)
  num_frames = getattr(model, "num_frames", 15)
  size = getattr(model, "image_size", 224)
  frames = jnp.zeros((batch_size, num_frames, size, size, 3), jnp.float32)
  return jax.jit(lambda r: model.init(r, mfcc, frames, train=False))(rng)


def count_params(params) -> int:
  return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
