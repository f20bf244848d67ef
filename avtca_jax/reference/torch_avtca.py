"""PyTorch reference of the original AVT-CA model (shravan-18/AVTCA), written from its description
(docs/original.md#model), not copied.

Purpose: produce checkpoints in the original format (same state-dict keys, shapes and order as the
public code, listed in `tests/data/avtca_it_state_dict.txt`) and the original forward semantics, so that
conversion and numerical parity of the Flax port can be tested without the original repository.

  MultiModalCNN(fusion='it'|'ia'|'lt').forward(x_audio (B, 10, 156), x_visual (B*15, 3, 224, 224)) -> (B, 8)
  EfficientFace(num_classes=7): the published EfficientFace checkpoint layout (with its `fc` head).

Layout and names are PyTorch's (NCHW / NCL). Module attribute names and registration order define the
state-dict keys, so they follow the original exactly, including modules that the forward never uses
(`classifier_1` of each branch, `proj` and `finalAttention` of the 'ia' variant, `finalAttention` of 'lt').
This is the only module of avtca_jax that imports torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FUSIONS = ("it", "ia", "lt")


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
  batch, channels, height, width = x.shape
  x = x.view(batch, groups, channels // groups, height, width).transpose(1, 2)
  return x.reshape(batch, channels, height, width)


class InvertedResidual(nn.Module):
  """ShuffleNetV2 unit. Sequential indices give the keys branch1.{0,1,2,3} and branch2.{0,1,3,4,5,6}."""

  def __init__(self, inp: int, oup: int, stride: int):
    super().__init__()
    self.stride = stride
    branch_features = oup // 2
    if stride > 1:
      self.branch1 = nn.Sequential(
          nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False), nn.BatchNorm2d(inp),
          nn.Conv2d(inp, branch_features, 1, bias=False), nn.BatchNorm2d(branch_features), nn.ReLU(inplace=True))
    else:
      self.branch1 = nn.Sequential()
    first_in = inp if stride > 1 else branch_features
    self.branch2 = nn.Sequential(
        nn.Conv2d(first_in, branch_features, 1, bias=False), nn.BatchNorm2d(branch_features), nn.ReLU(inplace=True),
        nn.Conv2d(branch_features, branch_features, 3, stride, 1, groups=branch_features, bias=False),
        nn.BatchNorm2d(branch_features),
        nn.Conv2d(branch_features, branch_features, 1, bias=False), nn.BatchNorm2d(branch_features),
        nn.ReLU(inplace=True))

  def forward(self, x):
    if self.stride == 1:
      x1, x2 = x.chunk(2, dim=1)
      out = torch.cat([x1, self.branch2(x2)], dim=1)
    else:
      out = torch.cat([self.branch1(x), self.branch2(x)], dim=1)
    return channel_shuffle(out, 2)


class LocalFeatureExtractor(nn.Module):
  """Quadrant k (1 top-left, 2 bottom-left, 3 top-right, 4 bottom-right): grouped 3x3/2 then depthwise 3x3."""

  def __init__(self, inplanes: int, planes: int):
    super().__init__()
    for k in range(1, 5):
      setattr(self, f"conv{k}_1", nn.Conv2d(inplanes, planes, 3, 2, 1, groups=inplanes, bias=False))
      setattr(self, f"bn{k}_1", nn.BatchNorm2d(planes))
      setattr(self, f"conv{k}_2", nn.Conv2d(planes, planes, 3, 1, 1, groups=planes, bias=False))
      setattr(self, f"bn{k}_2", nn.BatchNorm2d(planes))

  def _quadrant(self, k, patch):
    y = F.relu(getattr(self, f"bn{k}_1")(getattr(self, f"conv{k}_1")(patch)))
    return F.relu(getattr(self, f"bn{k}_2")(getattr(self, f"conv{k}_2")(y)))

  def forward(self, x):  # (N, C, 56, 56)
    h, w = x.shape[2] // 2, x.shape[3] // 2
    top_left = self._quadrant(1, x[:, :, :h, :w])
    bottom_left = self._quadrant(2, x[:, :, h:, :w])
    top_right = self._quadrant(3, x[:, :, :h, w:])
    bottom_right = self._quadrant(4, x[:, :, h:, w:])
    left = torch.cat([top_left, bottom_left], dim=2)
    right = torch.cat([top_right, bottom_right], dim=2)
    return torch.cat([left, right], dim=3)  # (N, planes, 28, 28)


class ChannelGate(nn.Module):
  def __init__(self, channels: int, reduction: int = 16):
    super().__init__()
    hidden = channels // reduction
    self.gate_c = nn.Sequential()
    self.gate_c.add_module("flatten", nn.Flatten())
    self.gate_c.add_module("gate_c_fc_0", nn.Linear(channels, hidden))
    self.gate_c.add_module("gate_c_bn_1", nn.BatchNorm1d(hidden))
    self.gate_c.add_module("gate_c_relu_1", nn.ReLU())
    self.gate_c.add_module("gate_c_fc_final", nn.Linear(hidden, channels))

  def forward(self, x):
    pooled = F.avg_pool2d(x, x.shape[2], stride=x.shape[2])
    return self.gate_c(pooled)[:, :, None, None].expand_as(x)


class SpatialGate(nn.Module):
  def __init__(self, channels: int, reduction: int = 16, dilation: int = 4):
    super().__init__()
    hidden = channels // reduction
    self.gate_s = nn.Sequential()
    self.gate_s.add_module("gate_s_conv_reduce0", nn.Conv2d(channels, hidden, 1))
    self.gate_s.add_module("gate_s_bn_reduce0", nn.BatchNorm2d(hidden))
    self.gate_s.add_module("gate_s_relu_reduce0", nn.ReLU())
    for i in range(2):
      self.gate_s.add_module(f"gate_s_conv_di_{i}", nn.Conv2d(hidden, hidden, 3, padding=dilation, dilation=dilation))
      self.gate_s.add_module(f"gate_s_bn_di_{i}", nn.BatchNorm2d(hidden))
      self.gate_s.add_module(f"gate_s_relu_di_{i}", nn.ReLU())
    self.gate_s.add_module("gate_s_conv_final", nn.Conv2d(hidden, 1, 1))

  def forward(self, x):
    return self.gate_s(x).expand_as(x)


class Modulator(nn.Module):
  def __init__(self, channels: int):
    super().__init__()
    self.channel_att = ChannelGate(channels)
    self.spatial_att = SpatialGate(channels)

  def forward(self, x):
    return x * torch.sigmoid(self.channel_att(x) * self.spatial_att(x))


def _conv_bn_relu(inp: int, oup: int, kernel: int, stride: int) -> nn.Sequential:
  return nn.Sequential(nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(oup),
                       nn.ReLU(inplace=True))


class EfficientFace(nn.Module):
  """EfficientFace with its classification head `fc` (the published checkpoints' layout)."""

  def __init__(self, stages_repeats=(4, 8, 4), stages_out_channels=(29, 116, 232, 464, 1024), num_classes=7):
    super().__init__()
    self._build_backbone(stages_repeats, stages_out_channels)
    if num_classes:
      self.fc = nn.Linear(stages_out_channels[-1], num_classes)

  def _build_backbone(self, stages_repeats, channels):
    self.conv1 = _conv_bn_relu(3, channels[0], 3, 2)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    inp = channels[0]
    for index, repeats, oup in zip((2, 3, 4), stages_repeats, channels[1:4]):
      units = [InvertedResidual(inp, oup, 2)] + [InvertedResidual(oup, oup, 1) for _ in range(repeats - 1)]
      setattr(self, f"stage{index}", nn.Sequential(*units))
      inp = oup
    self.local = LocalFeatureExtractor(channels[0], channels[1])
    self.modulator = Modulator(channels[1])
    self.conv5 = _conv_bn_relu(channels[3], channels[4], 1, 1)

  def forward_features(self, x):  # (N, 3, 224, 224) -> (N, 1024)
    x0 = self.maxpool(self.conv1(x))  # (N, 29, 56, 56)
    x = self.modulator(self.stage2(x0)) + self.local(x0)  # (N, 116, 28, 28)
    x = self.stage4(self.stage3(x))  # (N, 464, 7, 7)
    return self.conv5(x).mean([2, 3])

  def forward(self, x):
    return self.fc(self.forward_features(x))


def conv1d_block(inp: int, oup: int) -> nn.Sequential:
  return nn.Sequential(nn.Conv1d(inp, oup, 3, padding="same"), nn.BatchNorm1d(oup), nn.ReLU(inplace=True))


def conv1d_block_audio(inp: int, oup: int) -> nn.Sequential:
  return nn.Sequential(nn.Conv1d(inp, oup, 3, padding="valid"), nn.BatchNorm1d(oup), nn.ReLU(inplace=True),
                       nn.MaxPool1d(2, 1))


class EfficientFaceTemporal(EfficientFace):
  """EfficientFace per frame, then temporal 1-D convs over the frames of each clip (the visual branch)."""

  def __init__(self, stages_repeats=(4, 8, 4), stages_out_channels=(29, 116, 232, 464, 1024), num_classes=8,
               im_per_sample=15):
    nn.Module.__init__(self)
    self._build_backbone(stages_repeats, stages_out_channels)
    self.conv1d_0 = conv1d_block(stages_out_channels[-1], 64)
    self.conv1d_1 = conv1d_block(64, 64)
    self.conv1d_2 = conv1d_block(64, 128)
    self.conv1d_3 = conv1d_block(128, 128)
    self.classifier_1 = nn.Sequential(nn.Linear(128, num_classes))  # unused by the fusion model
    self.im_per_sample = im_per_sample

  def forward_stage1(self, x):  # (B*15, 3, 224, 224) -> (B, 64, 15)
    if x.shape[0] % self.im_per_sample:
      raise ValueError(f"frame batch {x.shape[0]} is not a multiple of {self.im_per_sample}")
    features = self.forward_features(x)
    features = features.view(-1, self.im_per_sample, features.shape[1]).permute(0, 2, 1)
    return self.conv1d_1(self.conv1d_0(features))

  def forward_stage2(self, x):  # (B, 64, 15) -> (B, 128, 15)
    return self.conv1d_3(self.conv1d_2(x))

  def forward(self, x):  # the visual-only baseline
    return self.classifier_1(self.forward_stage2(self.forward_stage1(x)).mean(dim=-1))


class AudioCNNPool(nn.Module):
  def __init__(self, num_classes=8):
    super().__init__()
    self.conv1d_0 = conv1d_block_audio(10, 64)
    self.conv1d_1 = conv1d_block_audio(64, 128)
    self.conv1d_2 = conv1d_block_audio(128, 256)
    self.conv1d_3 = conv1d_block_audio(256, 128)
    self.classifier_1 = nn.Sequential(nn.Linear(128, num_classes))  # unused by the fusion model

  def forward_stage1(self, x):  # (B, 10, 156) -> (B, 128, 150)
    return self.conv1d_1(self.conv1d_0(x))

  def forward_stage2(self, x):  # (B, 128, 150) -> (B, 128, 144)
    return self.conv1d_3(self.conv1d_2(x))

  def forward(self, x):  # the audio-only baseline
    return self.classifier_1(self.forward_stage2(self.forward_stage1(x)).mean(dim=-1))


class Attention(nn.Module):
  """timm-style cross attention: q from `x_q`, packed kv (K rows first, then V) from `x`; returns (out, attn)."""

  def __init__(self, in_dim_k: int, in_dim_q: int, out_dim: int, num_heads: int):
    super().__init__()
    self.num_heads = num_heads
    self.scale = (out_dim // num_heads) ** -0.5
    self.q = nn.Linear(in_dim_q, out_dim, bias=False)
    self.kv = nn.Linear(in_dim_k, 2 * out_dim, bias=False)
    self.proj = nn.Linear(out_dim, out_dim)

  def forward(self, x, x_q):
    batch, num_keys, _ = x.shape
    num_queries = x_q.shape[1]
    out_dim = self.q.out_features
    head_dim = out_dim // self.num_heads
    kv = self.kv(x).reshape(batch, num_keys, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
    k, v = kv[0], kv[1]  # (B, H, Nk, D)
    q = self.q(x_q).reshape(batch, num_queries, self.num_heads, head_dim).permute(0, 2, 1, 3)
    attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)  # (B, H, Nq, Nk)
    out = (attn @ v).transpose(1, 2).reshape(batch, num_queries, out_dim)
    return self.proj(out), attn


class Mlp(nn.Module):
  def __init__(self, in_features: int, hidden_features: int):
    super().__init__()
    self.fc1 = nn.Linear(in_features, hidden_features)
    self.act = nn.GELU()
    self.fc2 = nn.Linear(hidden_features, in_features)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


class AttentionBlock(nn.Module):
  """y = attn(norm1_k(xk), norm1_q(xq)); y + mlp(norm2(y))."""

  def __init__(self, in_dim_k: int, in_dim_q: int, out_dim: int, num_heads: int, mlp_ratio: int = 2):
    super().__init__()
    self.norm1_q = nn.LayerNorm(in_dim_q)
    self.norm1_k = nn.LayerNorm(in_dim_k)
    self.attn = Attention(in_dim_k, in_dim_q, out_dim, num_heads)
    self.norm2 = nn.LayerNorm(out_dim)
    self.mlp = Mlp(out_dim, out_dim * mlp_ratio)

  def forward(self, xk, xq):
    y = self.attn(self.norm1_k(xk), self.norm1_q(xq))[0]
    return y + self.mlp(self.norm2(y))


class MultiModalCNN(nn.Module):
  """The AVT-CA model. forward(x_audio (B, 10, 156), x_visual (B*15, 3, 224, 224), BGR in [0, 1]) -> (B, 8)."""

  def __init__(self, num_classes: int = 8, fusion: str = "it", seq_length: int = 15, num_heads: int = 8):
    super().__init__()
    if fusion not in FUSIONS:
      raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    self.fusion = fusion
    self.audio_model = AudioCNNPool(num_classes)
    self.visual_model = EfficientFaceTemporal(num_classes=num_classes, im_per_sample=seq_length)
    e_dim, input_dim_audio, input_dim_video = 128, 128, 128
    if fusion == "it":
      self.av1 = AttentionBlock(64, input_dim_audio, input_dim_audio, num_heads)
      self.va1 = AttentionBlock(input_dim_audio, 64, 64, num_heads)
    elif fusion == "ia":
      self.av1 = Attention(64, input_dim_audio, input_dim_audio, num_heads)
      self.va1 = Attention(input_dim_audio, 64, 64, num_heads)
    else:
      self.av = AttentionBlock(input_dim_video, input_dim_audio, e_dim, num_heads)
      self.va = AttentionBlock(input_dim_audio, input_dim_video, e_dim, num_heads)
    self.finalAttention = nn.MultiheadAttention(e_dim, num_heads)  # built for every variant; used by 'it'
    self.classifier_1 = nn.Sequential(nn.Linear(2 * e_dim, num_classes))

  def _self_attention(self, x):  # (B, E, T) -> (B, E, T), sequence-first inside
    tokens = x.permute(2, 0, 1)
    out, _ = self.finalAttention(tokens, tokens, tokens, need_weights=False)
    return out.permute(1, 2, 0)

  def forward(self, x_audio, x_visual):
    x_audio = self.audio_model.forward_stage1(x_audio)  # (B, 128, 150)
    x_visual = self.visual_model.forward_stage1(x_visual)  # (B, 64, 15)
    if self.fusion == "it":
      tokens_audio, tokens_visual = x_audio.permute(0, 2, 1), x_visual.permute(0, 2, 1)
      h_av = self.av1(tokens_visual, tokens_audio)  # (B, 150, 128)
      h_va = self.va1(tokens_audio, tokens_visual)  # (B, 15, 64)
      x_audio = x_audio + h_av.permute(0, 2, 1)
      x_visual = x_visual + h_va.permute(0, 2, 1)
    elif self.fusion == "ia":
      tokens_audio, tokens_visual = x_audio.permute(0, 2, 1), x_visual.permute(0, 2, 1)
      _, attn_av = self.av1(tokens_visual, tokens_audio)  # (B, H, 150, 15)
      _, attn_va = self.va1(tokens_audio, tokens_visual)  # (B, H, 15, 150)
      frame_weights = attn_av.mean(dim=1, keepdim=True).sum(dim=-2)  # (B, 1, 15)
      audio_weights = attn_va.mean(dim=1, keepdim=True).sum(dim=-2)  # (B, 1, 150)
      x_audio = audio_weights * x_audio
      x_visual = frame_weights * x_visual

    x_audio = self.audio_model.forward_stage2(x_audio)  # (B, 128, 144)
    x_visual = self.visual_model.forward_stage2(x_visual)  # (B, 128, 15)

    if self.fusion == "it":
      x_audio = self._self_attention(x_audio)
      x_visual = self._self_attention(x_visual)
    elif self.fusion == "lt":
      tokens_audio, tokens_visual = x_audio.permute(0, 2, 1), x_visual.permute(0, 2, 1)
      x_audio = self.av(tokens_visual, tokens_audio).permute(0, 2, 1)  # (B, 128, 144)
      x_visual = self.va(tokens_audio, tokens_visual).permute(0, 2, 1)  # (B, 128, 15)

    pooled = torch.cat([x_audio.mean(dim=-1), x_visual.mean(dim=-1)], dim=-1)  # (B, 256)
    return self.classifier_1(pooled)


def efficientface_checkpoint(model: EfficientFace) -> dict:
  """The published EfficientFace file format: {'state_dict': ...} saved from a DataParallel model."""
  return {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}


def randomize_(model: nn.Module, seed: int = 0, calibration_inputs=None) -> nn.Module:
  """Make every state-dict entry matter for parity tests, in place.

  torch initialises norm scales to 1, norm/MHA biases to 0 and running statistics to 0/1, so a wrong
  conversion of those entries would go unnoticed. This draws them at random; with `calibration_inputs`
  (a tuple of forward arguments) the BatchNorm running statistics are first set from that batch (so they
  stay on the scale of the real activations) and then perturbed, so that eval mode differs from train mode.
  """
  generator = torch.Generator().manual_seed(seed)
  batch_norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)):
        module.weight.uniform_(0.5, 1.5, generator=generator)
        module.bias.normal_(0.0, 0.2, generator=generator)
      elif isinstance(module, nn.MultiheadAttention):
        module.in_proj_bias.normal_(0.0, 0.2, generator=generator)
        module.out_proj.bias.normal_(0.0, 0.2, generator=generator)
    if calibration_inputs is not None:
      was_training = model.training
      momenta = [m.momentum for m in batch_norms]
      for m in batch_norms:
        m.momentum = 1.0  # running statistics := this batch's statistics
      model.train()
      model(*calibration_inputs)
      model.train(was_training)
      for m, momentum in zip(batch_norms, momenta):
        m.momentum = momentum
    for m in batch_norms:
      std = m.running_var.sqrt()
      m.running_mean.add_(0.2 * std * torch.randn(m.running_mean.shape, generator=generator))
      m.running_var.mul_(torch.empty(m.running_var.shape).uniform_(0.7, 1.4, generator=generator))
  return model
