"""PyTorch mirror of the official renderer (`models/video_renderer.py`), tests/benchmarks only.

Same architecture, attribute names and per-reference Python loop as the release, so its
`state_dict()` has the official checkpoint's keys (`flow_module.*`, `translation.*`,
`perceptual.model.network.*`). Differences: `forward` returns (generated, warped_ref)
without computing the perceptual losses, and the VGG19 weights are random (no
torchvision download). Layout NCHW, as in the release.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from torch_mirror.landmark_generator import mel_encoder
from torch_mirror.vgg import PerceptualNetworkTorch


class SPADELayerTorch(nn.Module):
  """norm(x) + norm(x) * gamma(m) + beta(m), gamma/beta from conv1(m) (no activation)."""

  def __init__(self, channels: int, modulation_channels: int, hidden: int = 256):
    super().__init__()
    self.instance_norm = nn.InstanceNorm2d(channels)
    self.conv1 = nn.Conv2d(modulation_channels, hidden, 3, 1, 1)
    self.gamma = nn.Conv2d(hidden, channels, 3, 1, 1)
    self.beta = nn.Conv2d(hidden, channels, 3, 1, 1)

  def forward(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    norm = self.instance_norm(x)
    hidden = self.conv1(m)
    return norm + norm * self.gamma(hidden) + self.beta(hidden)


class SPADETorch(nn.Module):
  """spade_layer_1 -> lrelu 0.2 -> conv_1 -> spade_layer_2 -> lrelu 0.2 -> conv_2."""

  def __init__(self, channels: int, modulation_channels: int, hidden: int = 256):
    super().__init__()
    self.conv_1 = nn.Conv2d(channels, channels, 3, 1, 1)
    self.conv_2 = nn.Conv2d(channels, channels, 3, 1, 1)
    self.leaky_relu = nn.LeakyReLU(0.2)
    self.spade_layer_1 = SPADELayerTorch(channels, modulation_channels, hidden)
    self.spade_layer_2 = SPADELayerTorch(channels, modulation_channels, hidden)

  def forward(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    x = self.conv_1(self.leaky_relu(self.spade_layer_1(x, m)))
    return self.conv_2(self.leaky_relu(self.spade_layer_2(x, m)))


class AdaINLayerTorch(nn.Module):
  """norm(x) + norm(x) * gamma(v) + beta(v) with an MLP on the vector v."""

  def __init__(self, channels: int, modulation_channels: int, hidden: int = 128):
    super().__init__()
    self.InstanceNorm2d = nn.InstanceNorm2d(channels, affine=False)
    self.mlp_shared = nn.Sequential(nn.Linear(modulation_channels, hidden), nn.ReLU())
    self.mlp_gamma = nn.Linear(hidden, channels)
    self.mlp_beta = nn.Linear(hidden, channels)

  def forward(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    norm = self.InstanceNorm2d(x)
    actv = self.mlp_shared(m.reshape(m.shape[0], -1))
    gamma = self.mlp_gamma(actv)[:, :, None, None]
    beta = self.mlp_beta(actv)[:, :, None, None]
    return norm + norm * gamma + beta


class AdaINTorch(nn.Module):
  """adain_layer_1 -> lrelu 0.2 -> conv_1 -> adain_layer_2 -> lrelu 0.2 -> conv_2."""

  def __init__(self, channels: int, modulation_channels: int):
    super().__init__()
    self.conv_1 = nn.Conv2d(channels, channels, 3, 1, 1)
    self.conv_2 = nn.Conv2d(channels, channels, 3, 1, 1)
    self.leaky_relu = nn.LeakyReLU(0.2)
    self.adain_layer_1 = AdaINLayerTorch(channels, modulation_channels)
    self.adain_layer_2 = AdaINLayerTorch(channels, modulation_channels)

  def forward(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    x = self.conv_1(self.leaky_relu(self.adain_layer_1(x, m)))
    return self.conv_2(self.leaky_relu(self.adain_layer_2(x, m)))


def nearest(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
  return F.interpolate(x, size=size, mode='nearest')


def flow_to_deformation(flow: torch.Tensor) -> torch.Tensor:
  """(B, 2, H, W) pixels -> (B, H, W, 2) grid: align-corners identity + 2 * flow / (size - 1)."""
  _, _, h, w = flow.shape
  xs = 2 * (torch.arange(w).to(flow) / (w - 1)) - 1
  ys = 2 * (torch.arange(h).to(flow) / (h - 1)) - 1
  grid = torch.stack([xs.view(1, -1).expand(h, w), ys.view(-1, 1).expand(h, w)], dim=-1)
  scaled = torch.cat([flow[:, :1] / (w - 1), flow[:, 1:] / (h - 1)], dim=1) * 2
  return grid.unsqueeze(0) + scaled.permute(0, 2, 3, 1)


def warp(source: torch.Tensor, deformation: torch.Tensor) -> torch.Tensor:
  h, w = source.shape[2:]
  if deformation.shape[1:3] != (h, w):
    deformation = F.interpolate(deformation.permute(0, 3, 1, 2), size=(h, w),
                                mode='bilinear').permute(0, 2, 3, 1)
  # align_corners=False is the release's (default) behaviour; spelled out to silence the warning.
  return F.grid_sample(source, deformation, align_corners=False)


class DenseFlowNetworkTorch(nn.Module):
  """Alignment module; loops over the N references like the release."""

  def __init__(self, in_channels: int = 6, modulation_channels: int = 15, hidden: int = 256):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, 32, 7, 1, 3)
    self.conv1_bn = nn.BatchNorm2d(32)
    self.conv1_relu = nn.ReLU()
    self.conv2 = nn.Conv2d(32, 256, 3, 2, 1)
    self.conv2_bn = nn.BatchNorm2d(256)
    self.conv2_relu = nn.ReLU()
    self.spade_layer_1 = SPADETorch(256, modulation_channels, hidden)
    self.spade_layer_2 = SPADETorch(256, modulation_channels, hidden)
    self.pixel_shuffle_1 = nn.PixelShuffle(2)
    self.spade_layer_4 = SPADETorch(64, modulation_channels, hidden)
    self.conv_4 = nn.Conv2d(64, 2, 7, 1, 3)
    self.conv_5 = nn.Sequential(nn.Conv2d(64, 32, 7, 1, 3), nn.ReLU(),
                                nn.Conv2d(32, 1, 7, 1, 3), nn.Sigmoid())

  def forward(self, ref_images: torch.Tensor, ref_sketches: torch.Tensor,
              driving_sketches: torch.Tensor):
    """(B, N, 3, H, W) x2, (B, 5, 3, H, W) -> fused h1, h2, reference image."""
    driving = driving_sketches.flatten(1, 2)  # (B, 15, H, W), time-major channels
    driving_64 = nearest(driving, (64, 64))
    h1_sum = h2_sum = ref_sum = denominator = 0.
    for n in range(ref_images.shape[1]):
      ref = ref_images[:, n]
      x = torch.cat([ref, ref_sketches[:, n]], dim=1)
      h1 = self.conv1_relu(self.conv1_bn(self.conv1(x)))
      h2 = self.conv2_relu(self.conv2_bn(self.conv2(h1)))
      feat = self.spade_layer_2(self.spade_layer_1(h2, driving_64), driving_64)
      feat = self.spade_layer_4(self.pixel_shuffle_1(feat), driving)
      deformation = flow_to_deformation(self.conv_4(feat))
      weight = self.conv_5(feat)
      denominator = denominator + weight
      h1_sum = h1_sum + warp(h1, deformation) * weight
      h2_sum = h2_sum + warp(h2, deformation) * nearest(weight, (64, 64))
      ref_sum = ref_sum + warp(ref, deformation) * weight
    denominator = denominator + 1e-5
    return h1_sum / denominator, h2_sum / nearest(denominator, (64, 64)), ref_sum / denominator


class TranslationNetworkTorch(nn.Module):
  """Translation module (G_r)."""

  def __init__(self):
    super().__init__()
    self.audio_encoder = mel_encoder(final_act="ReLU")  # the mel stack, ending in ReLU
    self.conv1 = nn.Conv2d(18, 32, 7, 1, 3, bias=False)
    self.conv1_bn = nn.BatchNorm2d(32)
    self.conv1_relu = nn.ReLU()
    self.conv2 = nn.Conv2d(32, 256, 3, 2, 1, bias=False)
    self.conv2_bn = nn.BatchNorm2d(256)
    self.conv2_relu = nn.ReLU()
    self.spade_1 = SPADETorch(256, 256)
    self.adain_1 = AdaINTorch(256, 512)
    self.pixel_suffle_1 = nn.PixelShuffle(2)
    self.spade_2 = SPADETorch(64, 32)
    self.adain_2 = AdaINTorch(64, 512)
    self.spade_4 = SPADETorch(64, 3)
    self.leaky_relu = nn.LeakyReLU()
    self.conv_last = nn.Conv2d(64, 3, 7, 1, 3, bias=False)
    self.sigmoid = nn.Sigmoid()

  def forward(self, translation_input, warped_ref, warped_h1, warped_h2, mels):
    """(B, 18, H, W), (B, 3, H, W), (B, 32, H, W), (B, 256, H/2, W/2), (B, 1, 80, 16)."""
    x = self.conv1_relu(self.conv1_bn(self.conv1(translation_input)))
    x = self.conv2_relu(self.conv2_bn(self.conv2(x)))
    audio = self.audio_encoder(mels).flatten(1)  # (B, 512)
    x = self.adain_1(self.spade_1(x, warped_h2), audio)
    x = self.pixel_suffle_1(x)
    x = self.adain_2(self.spade_2(x, warped_h1), audio)
    x = self.spade_4(x, warped_ref)
    return self.sigmoid(self.conv_last(self.leaky_relu(x)))


class _PerceptualLossWeights(nn.Module):
  """Holds VGG19 at `model.network` for the official key layout; its loss lives elsewhere."""

  def __init__(self):
    super().__init__()
    self.model = PerceptualNetworkTorch()


class RendererTorch(nn.Module):
  """Official `Renderer`: forward returns (generated, warped_ref), no losses."""

  def __init__(self):
    super().__init__()
    self.flow_module = DenseFlowNetworkTorch()
    self.translation = TranslationNetworkTorch()
    self.perceptual = _PerceptualLossWeights()

  def forward(self, face, target_sketches, ref_images, ref_sketches, mels):
    """(B, 1, 3, H, W) or (B, 3, H, W), (B, 5, 3, H, W), (B, N, 3, H, W) x2, (B, 1, 1, 80, 16).

    Returns (generated, warped_ref), each (B, 3, H, W).
    """
    warped_h1, warped_h2, warped_ref = self.flow_module(ref_images, ref_sketches, target_sketches)
    face = face.reshape(face.shape[0], 3, *face.shape[-2:])
    masked = face.clone()
    masked[:, :, masked.shape[2] // 2:] = 0
    translation_input = torch.cat([masked, target_sketches.flatten(1, 2)], dim=1)
    mels = mels.reshape(mels.shape[0], 1, *mels.shape[-2:])
    generated = self.translation(translation_input, warped_ref, warped_h1, warped_h2, mels)
    return generated, warped_ref
