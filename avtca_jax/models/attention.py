"""Attention blocks of AVT-CA (timm-derived in the original): cross attention, its block, and MHA."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from avtca_jax.models.layers import Dense, LayerNorm

Dtype = Any


def _split_heads(x, num_heads):  # (B, N, H*D) -> (B, H, N, D)
  b, n, e = x.shape
  return x.reshape(b, n, num_heads, e // num_heads).transpose(0, 2, 1, 3)


def _attend(q, k, v, dtype):
  """softmax(q k^T / sqrt(d)) v with softmax in float32. q,k,v: (B, H, N, D). Returns (out, weights)."""
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bhqd,bhkd->bhqk", q, k).astype(jnp.float32) * scale
  weights = jax.nn.softmax(logits, axis=-1)
  out = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(dtype), v)
  b, h, n, d = out.shape
  return out.transpose(0, 2, 1, 3).reshape(b, n, h * d), weights


class Attention(nn.Module):
  """Queries from one stream, keys/values from the other. q and kv without bias, proj with bias.

  `kv` packs K (first out_dim outputs) then V, heads contiguous inside each. Returns (output, weights
  (B, H, Nq, Nk)). With `project=False` only the attention weights are computed (the `ia` fusion uses
  nothing else), and `proj` is not created.
  """

  out_dim: int
  num_heads: int
  project: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, xk, xq):
    if self.out_dim % self.num_heads:
      raise ValueError(f"out_dim {self.out_dim} is not divisible by num_heads {self.num_heads}")
    q = _split_heads(Dense(self.out_dim, use_bias=False, dtype=self.dtype, name="q")(xq), self.num_heads)
    kv = Dense(2 * self.out_dim, use_bias=False, dtype=self.dtype, name="kv")(xk)
    k = _split_heads(kv[..., : self.out_dim], self.num_heads)
    v = _split_heads(kv[..., self.out_dim:], self.num_heads)
    out, weights = _attend(q, k, v, self.dtype)
    if self.project:
      out = Dense(self.out_dim, dtype=self.dtype, name="proj")(out)
    return out, weights


class Mlp(nn.Module):
  hidden_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    out_dim = x.shape[-1]
    x = Dense(self.hidden_dim, dtype=self.dtype, name="fc1")(x)
    x = nn.gelu(x, approximate=False)
    return Dense(out_dim, dtype=self.dtype, name="fc2")(x)


class AttentionBlock(nn.Module):
  """y = Attention(norm1_k(xk), norm1_q(xq)); y + Mlp(norm2(y)). No residual to xq (dims may differ)."""

  out_dim: int
  num_heads: int
  mlp_ratio: int = 2
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, xk, xq):
    y, _ = Attention(self.out_dim, self.num_heads, dtype=self.dtype, name="attn")(
        LayerNorm(dtype=self.dtype, name="norm1_k")(xk), LayerNorm(dtype=self.dtype, name="norm1_q")(xq))
    return y + Mlp(self.mlp_ratio * self.out_dim, dtype=self.dtype, name="mlp")(
        LayerNorm(dtype=self.dtype, name="norm2")(y))


def _xavier_uniform_in_proj(key, shape, dtype=jnp.float32):
  # torch.nn.MultiheadAttention initialises the packed (3E, E) in_proj with Xavier-uniform over the whole
  # matrix; our kernel is its transpose (E, 3E), which has the same fan sum.
  bound = np.sqrt(6.0 / (shape[0] + shape[1]))
  return jax.random.uniform(key, shape, dtype, -bound, bound)


class MultiHeadSelfAttention(nn.Module):
  """torch.nn.MultiheadAttention(embed_dim, num_heads) used as self-attention on (B, N, E).

  `in_proj`: kernel (E, 3E) with columns [Wq | Wk | Wv], bias (3E,); `out_proj`: Dense(E).
  """

  num_heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    embed = x.shape[-1]
    kernel = self.param("in_proj_kernel", _xavier_uniform_in_proj, (embed, 3 * embed))
    bias = self.param("in_proj_bias", nn.initializers.zeros, (3 * embed,))
    qkv = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype)) + bias.astype(self.dtype)
    q, k, v = (_split_heads(t, self.num_heads) for t in jnp.split(qkv, 3, axis=-1))
    out, _ = _attend(q, k, v, self.dtype)
    return OutProj(embed, dtype=self.dtype, name="out_proj")(out)


class OutProj(nn.Module):
  """MHA's out_proj: a Linear whose bias torch initialises to zero."""

  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1]
    bound = 1.0 / np.sqrt(fan_in)
    kernel = self.param("kernel", lambda k, s: jax.random.uniform(k, s, jnp.float32, -bound, bound),
                        (fan_in, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    return jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype)) + bias.astype(self.dtype)
