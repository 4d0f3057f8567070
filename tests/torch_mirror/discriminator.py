"""PyTorch mirror of the release's pix2pixHD multi-scale discriminator (tests only).

Same architecture and state_dict names as models/pix2pixHD_disc.py built by
`define_D(input_nc=3, ndf=64, n_layers_D=3, norm='instance', num_D=2,
getIntermFeat=True)`: `scale{s}_layer{j}.0.{weight,bias}`, with the i-th resolution
judged by `scale{num_d-1-i}`. Layout NCHW.
"""

from __future__ import annotations

import torch
from torch import nn


def _layer_specs(ndf: int, n_layers: int) -> list[tuple[int, int, int, bool, bool]]:
  """(in, out, stride, instance norm?, leaky relu?) per layer 0..n_layers+1."""
  specs = [(3, ndf, 2, False, True)]
  nf = ndf
  for _ in range(1, n_layers):
    prev, nf = nf, min(nf * 2, 512)
    specs.append((prev, nf, 2, True, True))
  prev, nf = nf, min(nf * 2, 512)
  specs.append((prev, nf, 1, True, True))
  specs.append((nf, 1, 1, False, False))
  return specs


def _block(cin: int, cout: int, stride: int, norm: bool, act: bool) -> nn.Sequential:
  mods: list[nn.Module] = [nn.Conv2d(cin, cout, kernel_size=4, stride=stride, padding=2)]
  if norm:
    mods.append(nn.InstanceNorm2d(cout, affine=False))
  if act:
    mods.append(nn.LeakyReLU(0.2, True))
  return nn.Sequential(*mods)


class MultiscaleDiscriminatorTorch(nn.Module):
  """forward(x [B, 3, H, W]) -> [[layer outputs] per resolution, full resolution first]."""

  def __init__(self, ndf: int = 64, n_layers: int = 3, num_d: int = 2):
    super().__init__()
    self.num_d = num_d
    self.n_layers = n_layers
    for s in range(num_d):
      for j, spec in enumerate(_layer_specs(ndf, n_layers)):
        setattr(self, f'scale{s}_layer{j}', _block(*spec))
    self.downsample = nn.AvgPool2d(3, stride=2, padding=[1, 1], count_include_pad=False)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        m.weight.data.normal_(0.0, 0.02)

  def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
    results = []
    for i in range(self.num_d):
      s = self.num_d - 1 - i
      feats = []
      h = x
      for j in range(self.n_layers + 2):
        h = getattr(self, f'scale{s}_layer{j}')(h)
        feats.append(h)
      results.append(feats)
      if i != self.num_d - 1:
        x = self.downsample(x)
    return results
