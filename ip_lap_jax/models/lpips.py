"""LPIPS v0.1 with the AlexNet backbone (`lpips.LPIPS(net='alex')`, lpips 0.1.4).

d(x, y) = sum over 5 layers l of mean over (h, w) of
          sum_c w_l[c] * (f_l(x)[h, w, c] / (|f_l(x)[h, w]| + 1e-10) - same for y)^2

where f_l are the ReLU outputs ending lpips's five slices of torchvision's AlexNet
`features` (after `features.1`, `.4`, `.7`, `.9`, `.11`: 64, 192, 384, 256, 256 channels),
computed on (x - shift) / scale with lpips's ScalingLayer constants, and w_l the 1x1
convolutions without bias `lin<l>.model.1.weight` (Dropout is `model.0`).

Parameters: `features_<i>` (torchvision's `features.<i>.weight/bias`, ImageNet weights
`alexnet-owt-*.pth`; the classifier is not used) and `lin<l>/model_1/kernel` [1, 1, C, 1]
(the `lpips` wheel's `weights/v0.1/alex.pth`). `python -m ip_lap_jax.convert --model
lpips --src alexnet.pth --heads alex.pth` merges the two files.

Inputs follow lpips: NHWC RGB in [-1, 1]. `normalize=True` takes [0, 1] images and maps
them by 2x - 1 first, as lpips's `forward(..., normalize=True)`; that is how the
evaluation calls it on [0, 1] frames.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ip_lap_jax.models import conv as conv_lib

Array = jax.Array

# lpips's ScalingLayer buffers (RGB).
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10  # lpips.normalize_tensor
CHANNELS = (64, 192, 384, 256, 256)


def _max_pool(x: Array) -> Array:
  """torchvision AlexNet's MaxPool2d(3, stride=2), no padding."""
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


def alexnet_relus(x: Array, precision: Any = None,
                  conv_algorithm: conv_lib.Algorithm = "direct") -> list[Array]:
  """torchvision's `alexnet().features` up to its last ReLU (`features.11`).

  Called inside a compact method: it creates the convolutions `features_<i>` in the
  caller, so the parameter paths are the state_dict's `features.<i>` under the rule.
  x: [B, H, W, 3], H, W >= 63 -> the five ReLU outputs [B, h_l, w_l, CHANNELS[l]].
  """
  def conv(features, kernel, stride, padding, index):
    if kernel == 3 and precision is None:
      return conv_lib.Conv3x3(features, algorithm=conv_algorithm, name=f"features_{index}")
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((padding, padding),) * 2, precision=precision,
                   name=f"features_{index}")

  relu1 = nn.relu(conv(64, 11, 4, 2, 0)(x))
  relu2 = nn.relu(conv(192, 5, 1, 2, 3)(_max_pool(relu1)))
  relu3 = nn.relu(conv(384, 3, 1, 1, 6)(_max_pool(relu2)))
  relu4 = nn.relu(conv(256, 3, 1, 1, 8)(relu3))
  relu5 = nn.relu(conv(256, 3, 1, 1, 10)(relu4))
  return [relu1, relu2, relu3, relu4, relu5]


class LinearHead(nn.Module):
  """lpips's NetLinLayer (Dropout, 1x1 conv without bias): `model_1/kernel` [1, 1, C, 1].
  Dropout is the identity at evaluation. [B, h, w, C] -> [B, h, w, 1]."""

  precision: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return nn.Conv(1, (1, 1), use_bias=False, precision=self.precision, name="model_1")(x)


def _unit_normalize(x: Array) -> Array:
  """lpips.normalize_tensor: divide by the channel norm plus 1e-10."""
  return x / (jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True)) + NORM_EPS)


class LPIPS(nn.Module):
  """LPIPS v0.1, AlexNet. __call__(x, y: [B, H, W, 3]) -> [B] distances.

  Attributes:
    precision: for every convolution (HIGHEST keeps GPUs off TF32; None: XLA's default).
    conv_algorithm: of the 3x3 layers (`models.conv`; a spec's 'auto' is resolved by
      `models.registry.build`).
  """

  precision: Any = None
  conv_algorithm: conv_lib.Algorithm = "direct"

  @nn.compact
  def __call__(self, x: Array, y: Array, *, normalize: bool = False) -> Array:
    """x, y: RGB in [-1, 1] (in [0, 1] with `normalize=True`) -> [B]."""
    if normalize:
      x, y = 2.0 * x - 1.0, 2.0 * y - 1.0
    shift, scale = jnp.asarray(SHIFT), jnp.asarray(SCALE)
    both = (jnp.concatenate([x, y]).astype(jnp.float32) - shift) / scale
    feats = alexnet_relus(both, self.precision, self.conv_algorithm)
    total = 0.0
    for l, f in enumerate(feats):
      fx, fy = jnp.split(_unit_normalize(f), 2)
      head = LinearHead(self.precision, name=f"lin{l}")(jnp.square(fx - fy))
      total = total + jnp.mean(head, axis=(1, 2, 3))
    return total
