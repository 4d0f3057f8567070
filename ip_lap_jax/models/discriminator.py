"""pix2pixHD multi-scale PatchGAN discriminator, as the release trains its renderer with.

Settings of train_video_renderer.py: 2 scales, 3 strided layers, 64 base filters,
kernel 4, padding 2 (= ceil(3/2)), InstanceNorm without affine, LeakyReLU 0.2,
intermediate features returned (getIntermFeat). Between scales the image is shrunk by
AvgPool(3, stride 2, padding 1, count_include_pad=False).

Parameter names are the official `scale{s}_layer{j}.0.{weight,bias}` under the
converter's rule: `scale{s}_layer{j}_0/{kernel,bias}`. The release applies the
discriminator `scale{num_d-1-i}` to the i-th resolution (so `scale1_*` sees the full
image when num_d = 2); this module keeps that pairing so official weights load as is.
"""

from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from ip_lap_jax import ops
from ip_lap_jax.models.conv import Conv

Array = jax.Array

_KERNEL = 4
_PADDING = 2  # int(ceil((4 - 1) / 2)) in the release.
_SLOPE = 0.2
# pix2pixHD's weights_init draws conv weights from N(0, 0.02) (biases: PyTorch's default
# uniform; zeros here, which only matters for training from scratch).
_KERNEL_INIT = nn.initializers.normal(0.02)


class MultiscaleDiscriminator(nn.Module):
  """Multi-scale discriminator with intermediate features.

  __call__(x: [B, H, W, 3]) -> list over resolutions (full first) of lists of the
  n_layers + 2 layer outputs [B, h_j, w_j, C_j]; the last entry of each inner list is
  the one-channel prediction map. For H = W = 128 and the defaults the full-resolution
  shapes are 65, 33, 17 (channels 64, 128, 256), 18 (512), 19 (1).

  Attributes:
    ndf: filters of the first layer (doubled per layer, capped at 512).
    n_layers: number of stride-2 layers (the release: 3).
    num_d: number of scales (the release: 2).
    dtype: compute dtype; parameters stay float32.
  """

  ndf: int = 64
  n_layers: int = 3
  num_d: int = 2
  dtype: Any = jnp.float32

  def _widths_and_strides(self) -> list[tuple[int, int, bool]]:
    """(features, stride, instance-norm + activation after?) for layers 0..n_layers+1."""
    spec = [(self.ndf, 2, False)]
    nf = self.ndf
    for _ in range(1, self.n_layers):
      nf = min(nf * 2, 512)
      spec.append((nf, 2, True))
    nf = min(nf * 2, 512)
    spec.append((nf, 1, True))
    spec.append((1, 1, False))
    return spec

  def _single(self, x: Array, scale: int) -> list[Array]:
    spec = self._widths_and_strides()
    feats = []
    for j, (features, stride, norm) in enumerate(spec):
      x = Conv(features, _KERNEL, stride, _PADDING, dtype=self.dtype,
               kernel_init=_KERNEL_INIT, name=f'scale{scale}_layer{j}_0')(x)
      if norm:
        x = ops.instance_norm(x)
      if j < len(spec) - 1:
        # Layer 0 has no norm but, like every hidden layer, a LeakyReLU.
        x = nn.leaky_relu(x, _SLOPE)
      feats.append(x)
    return feats

  @nn.compact
  def __call__(self, x: Array) -> list[list[Array]]:
    chex.assert_rank(x, 4)
    chex.assert_axis_dimension(x, 3, 3)
    x = x.astype(self.dtype)
    results = []
    for i in range(self.num_d):
      results.append(self._single(x, self.num_d - 1 - i))
      if i != self.num_d - 1:
        x = ops.avg_pool_3x3_s2_p1_exclude_pad(x)
    return results
