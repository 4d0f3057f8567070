"""VGG19 feature extractor for the perceptual loss (torchvision `vgg19().features` layout).

The release reads relu_1_1, relu_2_1, relu_3_1, relu_4_1, relu_5_1 (indices 1, 6, 11,
20, 29 of `features`). Conv submodules are named `network_<i>` after the index in
`features` (the official key `perceptual.model.network.<i>.weight` under the converter's
rule). The three convs past relu_5_1 (30, 32, 34) never influence those features; they
are still created at init so that the parameter tree holds every key of the official
checkpoint, but they are not run in the forward pass.
"""

from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from ip_lap_jax import ops

Array = jax.Array

# torchvision's VGG19 configuration: conv widths, 'M' = 2x2 max-pool (stride 2).
VGG19_CONFIG: tuple[int | str, ...] = (
    64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M',
    512, 512, 512, 512, 'M', 512, 512, 512, 512, 'M')

# Index in `features` of the ReLU producing each named feature.
VGG19_FEATURE_INDEX: dict[str, int] = {
    'relu_1_1': 1, 'relu_2_1': 6, 'relu_3_1': 11, 'relu_4_1': 20, 'relu_5_1': 29}

PERCEPTUAL_LAYERS: tuple[str, ...] = tuple(VGG19_FEATURE_INDEX)


def _layer_plan() -> list[tuple[int, int | str]]:
  """(index in `features`, width or 'M') for each conv and pool; ReLUs sit at conv index + 1."""
  plan = []
  index = 0
  for item in VGG19_CONFIG:
    plan.append((index, item))
    index += 1 if item == 'M' else 2
  return plan


class VGG19Features(nn.Module):
  """VGG19 `features` up to relu_5_1.

  __call__(x: [B, H, W, 3], already ImageNet-normalised) -> {name: [B, h, w, C]} for the
  five PERCEPTUAL_LAYERS: relu_1_1 [H, W, 64], relu_2_1 [H/2, W/2, 128], relu_3_1
  [H/4, W/4, 256], relu_4_1 [H/8, W/8, 512], relu_5_1 [H/16, W/16, 512] (pools floor odd
  sizes, as PyTorch's MaxPool2d(2, 2)).

  Attributes:
    dtype: compute dtype; parameters stay float32.
  """

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> dict[str, Array]:
    chex.assert_rank(x, 4)
    chex.assert_axis_dimension(x, 3, 3)
    names = {index: name for name, index in VGG19_FEATURE_INDEX.items()}
    last = max(names)
    # At init the whole stack runs so every official conv gets its parameters.
    run_all = self.is_initializing()
    x = x.astype(self.dtype)
    out: dict[str, Array] = {}
    for index, item in _layer_plan():
      if index > last and not run_all:
        break
      if item == 'M':
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding=((0, 0), (0, 0)))
        continue
      x = nn.Conv(int(item), (3, 3), padding=ops.conv_padding(1), dtype=self.dtype,
                  name=f'network_{index}')(x)
      x = nn.relu(x)
      if index + 1 in names:
        out[names[index + 1]] = x
    return out
