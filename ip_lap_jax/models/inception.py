"""The FID Inception-v3 feature extractor (pytorch-fid's network, which piq's FID uses).

The release evaluates its renderer with `piq.FID` on features of
`piq.feature_extractors.InceptionV3()`: pytorch-fid's port of TensorFlow's 2015 FID
Inception (weights `pt_inception-2015-12-05-6726825d.pth`). That network is torchvision's
`Inception3(num_classes=1008, aux_logits=False)` with patched blocks:

  * Mixed_5b/5c/5d (A), Mixed_6b..6e (C), Mixed_7b (E_1): the pool branch averages with
    `count_include_pad=False` (TensorFlow's average pool ignores padded zeros);
  * Mixed_7c (E_2): the pool branch is a 3x3 *max* pool (stride 1, padding 1), a quirk of
    the TensorFlow graph that FID scores depend on.

Forward: bilinear resize to 299x299 (align_corners=False, no antialiasing), x -> 2x - 1,
the convolutional trunk, global average pool -> [B, 2048] (piq's default output block).

Submodule names are the official state_dict names under the converter's rule:
`Mixed_5b.branch1x1.conv.weight` -> params `Mixed_5b/branch1x1/conv/kernel`,
`Mixed_5b.branch1x1.bn.running_mean` -> batch_stats `Mixed_5b/branch1x1/bn/mean`.
The weights file also holds the 1008-way ImageNet head `fc`: FID never reads it, but it
is created at init so that every key of the file has a place (as `VGG19Features` keeps
its unused convs).

A frozen feature extractor: BatchNorm always uses the running statistics, there is no
training mode.
"""

from __future__ import annotations

import functools
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from ip_lap_jax import ops

Array = jax.Array

INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008  # the TensorFlow graph's head (1000 classes + 8 unused), kept for conversion

# torchvision's BasicConv2d: BatchNorm2d(eps=0.001), not PyTorch's default 1e-5.
_BN_EPSILON = 1e-3


def _avg_pool_3x3_exclude_pad(x: Array) -> Array:
  """`F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)` on NHWC.

  `ops` only has the stride-2 variant (the discriminator's); Flax's `avg_pool` with
  `count_include_pad=False` divides each window by its number of real pixels, which is
  PyTorch's rule (checked by the parity test through every A, C and E_1 block).
  """
  y = nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)
  return y.astype(x.dtype)  # Flax divides by float32 counts, which would promote bfloat16


def _max_pool_3x3(x: Array, stride: int, padding: int) -> Array:
  """`F.max_pool2d(x, 3, stride, padding)` on NHWC.

  Flax pads the window reduction with -inf, as PyTorch's implicit max-pool padding does,
  so border windows take the maximum of their real pixels.
  """
  pad = ((padding, padding), (padding, padding))
  return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=pad)


class BasicConv2d(nn.Module):
  """Conv (no bias) -> BatchNorm (eps 1e-3, running statistics) -> ReLU.

  Submodules `conv` and `bn` (official `<name>.conv.weight`, `<name>.bn.running_var`).
  __call__(x: [B, H, W, Cin]) -> [B, H', W', features].

  Attributes:
    features: output channels.
    kernel_size: int or (kh, kw), as PyTorch's `kernel_size`.
    strides: stride on both axes.
    padding: int or (ph, pw), PyTorch's symmetric zero padding.
    dtype: compute dtype; parameters stay float32.
  """

  features: int
  kernel_size: int | tuple[int, int] = 1
  strides: int = 1
  padding: int | tuple[int, int] = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = ((self.kernel_size,) * 2 if isinstance(self.kernel_size, int)
              else tuple(self.kernel_size))
    x = nn.Conv(self.features, kernel, strides=(self.strides, self.strides),
                padding=ops.conv_padding(self.padding), use_bias=False, dtype=self.dtype,
                name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=_BN_EPSILON,
                     dtype=self.dtype, name="bn")(x)
    return nn.relu(x)


class InceptionA(nn.Module):
  """FIDInceptionA (Mixed_5b/5c/5d): [B, 35, 35, C] -> [B, 35, 35, 224 + pool_features]."""

  pool_features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = functools.partial(BasicConv2d, dtype=self.dtype)
    b1 = conv(64, name="branch1x1")(x)
    b5 = conv(48, name="branch5x5_1")(x)
    b5 = conv(64, 5, padding=2, name="branch5x5_2")(b5)
    b3 = conv(64, name="branch3x3dbl_1")(x)
    b3 = conv(96, 3, padding=1, name="branch3x3dbl_2")(b3)
    b3 = conv(96, 3, padding=1, name="branch3x3dbl_3")(b3)
    bp = conv(self.pool_features, name="branch_pool")(_avg_pool_3x3_exclude_pad(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """torchvision InceptionB (Mixed_6a): [B, 35, 35, 288] -> [B, 17, 17, 768]."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = functools.partial(BasicConv2d, dtype=self.dtype)
    b3 = conv(384, 3, strides=2, name="branch3x3")(x)
    bd = conv(64, name="branch3x3dbl_1")(x)
    bd = conv(96, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = conv(96, 3, strides=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3(x, 2, 0)], axis=-1)


class InceptionC(nn.Module):
  """FIDInceptionC (Mixed_6b..6e): [B, 17, 17, 768] -> [B, 17, 17, 768]."""

  channels_7x7: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = functools.partial(BasicConv2d, dtype=self.dtype)
    c7 = self.channels_7x7
    b1 = conv(192, name="branch1x1")(x)
    b7 = conv(c7, name="branch7x7_1")(x)
    b7 = conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = conv(c7, name="branch7x7dbl_1")(x)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = conv(192, name="branch_pool")(_avg_pool_3x3_exclude_pad(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """torchvision InceptionD (Mixed_7a): [B, 17, 17, 768] -> [B, 8, 8, 1280]."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = functools.partial(BasicConv2d, dtype=self.dtype)
    b3 = conv(192, name="branch3x3_1")(x)
    b3 = conv(320, 3, strides=2, name="branch3x3_2")(b3)
    b7 = conv(192, name="branch7x7x3_1")(x)
    b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = conv(192, 3, strides=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3(x, 2, 0)], axis=-1)


class InceptionE(nn.Module):
  """FIDInceptionE_1 (Mixed_7b, pool 'avg') / FIDInceptionE_2 (Mixed_7c, pool 'max').

  [B, 8, 8, C] -> [B, 8, 8, 2048].
  """

  pool: str = "avg"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = functools.partial(BasicConv2d, dtype=self.dtype)
    b1 = conv(320, name="branch1x1")(x)
    b3 = conv(384, name="branch3x3_1")(x)
    b3 = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                          conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
    bd = conv(448, name="branch3x3dbl_1")(x)
    bd = conv(384, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                          conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
    if self.pool == "avg":
      pooled = _avg_pool_3x3_exclude_pad(x)
    elif self.pool == "max":
      pooled = _max_pool_3x3(x, 1, 1)
    else:
      raise ValueError(f"pool must be 'avg' or 'max', got {self.pool!r}")
    bp = conv(192, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """pytorch-fid's FID Inception: images -> 2048-d pool features (piq's InceptionV3()).

  __call__(images: [B, H, W, 3] RGB in [0, 1], any H, W) -> [B, 2048] float32.
  Shapes inside (after the 299x299 resize): Conv2d_1a_3x3 149, Conv2d_2a_3x3 147,
  Conv2d_2b_3x3 147 (64 ch), max pool 73, Conv2d_3b_1x1 73 (80), Conv2d_4a_3x3 71 (192),
  max pool 35, Mixed_5b/c/d 35 (256, 288, 288), Mixed_6a..e 17 (768), Mixed_7a/b/c 8
  (1280, 2048, 2048), global mean.

  Attributes:
    dtype: compute dtype; parameters stay float32 and the features are returned in
      float32 (FID is computed in float64 from them).
  """

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: Array) -> Array:
    chex.assert_rank(images, 4)
    chex.assert_axis_dimension(images, 3, 3)
    conv = functools.partial(BasicConv2d, dtype=self.dtype)
    x = ops.resize_bilinear(images.astype(jnp.float32), (INPUT_SIZE, INPUT_SIZE))
    x = (2.0 * x - 1.0).astype(self.dtype)
    x = conv(32, 3, strides=2, name="Conv2d_1a_3x3")(x)
    x = conv(32, 3, name="Conv2d_2a_3x3")(x)
    x = conv(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3(x, 2, 0)
    x = conv(80, 1, name="Conv2d_3b_1x1")(x)
    x = conv(192, 3, name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3(x, 2, 0)
    x = InceptionA(32, dtype=self.dtype, name="Mixed_5b")(x)
    x = InceptionA(64, dtype=self.dtype, name="Mixed_5c")(x)
    x = InceptionA(64, dtype=self.dtype, name="Mixed_5d")(x)
    x = InceptionB(dtype=self.dtype, name="Mixed_6a")(x)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = InceptionC(c7, dtype=self.dtype, name=name)(x)
    x = InceptionD(dtype=self.dtype, name="Mixed_7a")(x)
    x = InceptionE("avg", dtype=self.dtype, name="Mixed_7b")(x)
    x = InceptionE("max", dtype=self.dtype, name="Mixed_7c")(x)
    features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    if self.is_initializing():
      # Only so that the weights file's `fc.weight`/`fc.bias` have a place; never applied.
      nn.Dense(NUM_CLASSES, dtype=self.dtype, name="fc")(features)
    return features
