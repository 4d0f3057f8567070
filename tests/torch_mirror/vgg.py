"""PyTorch mirror of the VGG19 feature extractor used by the release's perceptual loss.

Tests and benchmarks only. The release takes `torchvision.models.vgg19(pretrained=True)
.features` and reads the activations after layers 1, 6, 11, 20, 29 (relu_1_1 ..
relu_5_1); its renderer checkpoint stores those weights as
`perceptual.model.network.<i>.{weight,bias}`. This mirror rebuilds the same
`nn.Sequential` with plain `torch.nn` (torchvision is not a dependency), so state_dict
keys and module indices match torchvision's exactly.

Layout: NCHW, images already normalised by the caller (see `losses.py`).
"""

from __future__ import annotations

import torch
from torch import nn

# torchvision's VGG19 ("E") configuration: conv widths, 'M' = 2x2 max-pool.
VGG19_CONFIG: tuple[int | str, ...] = (
    64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M',
    512, 512, 512, 512, 'M', 512, 512, 512, 512, 'M')

# Index in `features` of the ReLU whose output each named feature is.
VGG19_LAYER_NAMES: dict[int, str] = {
    1: 'relu_1_1', 3: 'relu_1_2', 6: 'relu_2_1', 8: 'relu_2_2',
    11: 'relu_3_1', 13: 'relu_3_2', 15: 'relu_3_3', 17: 'relu_3_4',
    20: 'relu_4_1', 22: 'relu_4_2', 24: 'relu_4_3', 26: 'relu_4_4',
    29: 'relu_5_1'}

PERCEPTUAL_LAYERS: tuple[str, ...] = ('relu_1_1', 'relu_2_1', 'relu_3_1', 'relu_4_1', 'relu_5_1')


def vgg19_features() -> nn.Sequential:
  """torchvision `vgg19().features` with random (PyTorch default) init: 37 layers.

  Conv indices 0 2 5 7 10 12 14 16 19 21 23 25 28 30 32 34; max-pools at 4 9 18 27 36.
  """
  layers: list[nn.Module] = []
  in_channels = 3
  for item in VGG19_CONFIG:
    if item == 'M':
      layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    else:
      layers.append(nn.Conv2d(in_channels, int(item), kernel_size=3, padding=1))
      layers.append(nn.ReLU(inplace=True))
      in_channels = int(item)
  return nn.Sequential(*layers)


def vgg19_conv_indices() -> tuple[int, ...]:
  """Indices of the Conv2d layers in `vgg19_features()`."""
  return tuple(i for i, m in enumerate(vgg19_features()) if isinstance(m, nn.Conv2d))


class PerceptualNetworkTorch(nn.Module):
  """The release's `_PerceptualNetwork` around VGG19 features (state_dict `network.<i>.*`).

  forward(x [B, 3, H, W]) -> {name: [B, C, h, w]} for the requested names. Layers after
  the deepest requested feature are skipped: they cannot change the returned features.
  """

  def __init__(self, layers: tuple[str, ...] = PERCEPTUAL_LAYERS):
    super().__init__()
    self.network = vgg19_features()
    self.layers = tuple(layers)
    name_to_index = {name: i for i, name in VGG19_LAYER_NAMES.items()}
    unknown = [name for name in self.layers if name not in name_to_index]
    if unknown:
      raise ValueError(f'unknown VGG19 feature names {unknown}')
    self._last = max(name_to_index[name] for name in self.layers)
    for param in self.parameters():
      param.requires_grad = False

  def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    output: dict[str, torch.Tensor] = {}
    for i, layer in enumerate(self.network):
      if i > self._last:
        break
      x = layer(x)
      name = VGG19_LAYER_NAMES.get(i)
      if name in self.layers:
        output[name] = x
    return output
