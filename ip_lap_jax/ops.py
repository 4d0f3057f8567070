"""PyTorch-compatible primitives on NHWC arrays.

The official release relies on a handful of PyTorch functions whose JAX look-alikes
compute something else (PyTorch's own semantics): `jax.image.resize` uses half-pixel
centres for 'nearest' and antialiases when shrinking, and there is no `grid_sample`.
Every function here reproduces the PyTorch semantics exactly and is unit-tested against
the PyTorch function in `tests/test_ops.py`. Models import these; nothing re-implements
them.
"""

from __future__ import annotations

from typing import Sequence

import chex
import jax
import jax.numpy as jnp

Array = jax.Array


def at_least_float32(dtype) -> jnp.dtype:
  """The dtype for statistics, coordinates and losses: float32 under float32 or bfloat16
  compute, float64 under float64 compute (exact gradient checks against PyTorch float64)."""
  return jnp.promote_types(dtype, jnp.float32)


def conv_padding(padding: int | Sequence[int], ndim: int = 2) -> tuple[tuple[int, int], ...]:
  """Explicit symmetric padding for `nn.Conv`, as PyTorch's `padding=p` means it.

  Args:
    padding: one int for every spatial axis, or one per axis.
    ndim: number of spatial axes (1 for Conv1d, 2 for Conv2d).
  """
  if isinstance(padding, int):
    padding = (padding,) * ndim
  return tuple((int(p), int(p)) for p in padding)


def _nearest_indices(in_size: int, out_size: int) -> Array:
  # PyTorch 'nearest' (legacy, not 'nearest-exact'): src = floor(dst * in / out).
  scale = in_size / out_size
  idx = jnp.floor(jnp.arange(out_size, dtype=jnp.float32) * jnp.float32(scale)).astype(jnp.int32)
  return jnp.minimum(idx, in_size - 1)


def resize_nearest(x: Array, size: tuple[int, int]) -> Array:
  """`F.interpolate(mode='nearest', size=size)` on NHWC.

  Args:
    x: [B, H, W, C].
    size: (out_h, out_w).
  Returns:
    [B, out_h, out_w, C].
  """
  chex.assert_rank(x, 4)
  out_h, out_w = size
  _, in_h, in_w, _ = x.shape
  if (in_h, in_w) == (out_h, out_w):
    return x
  x = jnp.take(x, _nearest_indices(in_h, out_h), axis=1)
  return jnp.take(x, _nearest_indices(in_w, out_w), axis=2)


def _bilinear_taps(in_size: int, out_size: int) -> tuple[Array, Array, Array]:
  # PyTorch align_corners=False: src = (dst + 0.5) * in/out - 0.5, clamped below at 0.
  scale = in_size / out_size
  src = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * jnp.float32(scale) - 0.5
  src = jnp.maximum(src, 0.0)
  lo = jnp.minimum(jnp.floor(src).astype(jnp.int32), in_size - 1)
  hi = jnp.minimum(lo + 1, in_size - 1)
  frac = src - lo.astype(jnp.float32)
  return lo, hi, frac


def resize_bilinear(x: Array, size: tuple[int, int]) -> Array:
  """`F.interpolate(mode='bilinear', align_corners=False, size=size)` on NHWC.

  No antialiasing, also when shrinking (PyTorch's default `antialias=False`). With
  `recompute_scale_factor=True`, PyTorch's `scale_factor=0.5` is the same as
  `size=floor(in * 0.5)`.

  Args:
    x: [B, H, W, C].
    size: (out_h, out_w).
  Returns:
    [B, out_h, out_w, C] in x's dtype.
  """
  chex.assert_rank(x, 4)
  out_h, out_w = size
  _, in_h, in_w, _ = x.shape
  if (in_h, in_w) == (out_h, out_w):
    return x
  dtype = x.dtype
  y0, y1, fy = _bilinear_taps(in_h, out_h)
  x0, x1, fx = _bilinear_taps(in_w, out_w)
  fy = fy.astype(dtype)[None, :, None, None]
  fx = fx.astype(dtype)[None, None, :, None]
  top = jnp.take(x, y0, axis=1)
  bottom = jnp.take(x, y1, axis=1)
  rows = top * (1 - fy) + bottom * fy
  left = jnp.take(rows, x0, axis=2)
  right = jnp.take(rows, x1, axis=2)
  return left * (1 - fx) + right * fx


def grid_sample(x: Array, grid: Array) -> Array:
  """`F.grid_sample(x, grid)` with PyTorch defaults, on NHWC.

  Bilinear, zero padding, align_corners=False: a grid value g maps to the pixel
  coordinate ((g + 1) * size - 1) / 2, and taps outside the image contribute zero.

  Args:
    x: [B, H, W, C] source.
    grid: [B, Ho, Wo, 2] sampling positions, last axis (x, y) in [-1, 1].
  Returns:
    [B, Ho, Wo, C].
  """
  chex.assert_rank([x, grid], 4)
  chex.assert_axis_dimension(grid, 3, 2)
  chex.assert_equal_shape_prefix([x, grid], 1)
  b, h, w, c = x.shape
  dtype = x.dtype
  grid = grid.astype(at_least_float32(grid.dtype))
  ix = ((grid[..., 0] + 1.0) * w - 1.0) / 2.0
  iy = ((grid[..., 1] + 1.0) * h - 1.0) / 2.0
  ix0 = jnp.floor(ix)
  iy0 = jnp.floor(iy)
  wx1 = ix - ix0
  wy1 = iy - iy0
  wx0 = 1.0 - wx1
  wy0 = 1.0 - wy1
  ix0 = ix0.astype(jnp.int32)
  iy0 = iy0.astype(jnp.int32)
  flat = x.reshape(b, h * w, c)

  def tap(yi: Array, xi: Array, weight: Array) -> Array:
    valid = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    index = jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)
    values = jnp.take_along_axis(flat, index.reshape(b, -1, 1), axis=1)
    values = values.reshape(*index.shape, c)
    weight = jnp.where(valid, weight, 0.0).astype(dtype)
    return values * weight[..., None]

  return (tap(iy0, ix0, wy0 * wx0) + tap(iy0, ix0 + 1, wy0 * wx1)
          + tap(iy0 + 1, ix0, wy1 * wx0) + tap(iy0 + 1, ix0 + 1, wy1 * wx1))


def pixel_shuffle(x: Array, upscale: int) -> Array:
  """`nn.PixelShuffle(upscale)` on NHWC.

  PyTorch reads input channel `c * r * r + i * r + j` into output channel c at
  sub-pixel (i, j); the NHWC reshape must keep that order (PyTorch's own semantics).

  Args:
    x: [B, H, W, C * r * r].
    upscale: r.
  Returns:
    [B, H * r, W * r, C].
  """
  chex.assert_rank(x, 4)
  b, h, w, cr2 = x.shape
  r = upscale
  if cr2 % (r * r):
    raise ValueError(f"pixel_shuffle: {cr2} channels are not divisible by {r}*{r}")
  c = cr2 // (r * r)
  x = x.reshape(b, h, w, c, r, r)
  x = x.transpose(0, 1, 4, 2, 5, 3)
  return x.reshape(b, h * r, w * r, c)


def instance_norm(x: Array, eps: float = 1e-5) -> Array:
  """`nn.InstanceNorm2d(affine=False)` on NHWC: per sample and channel, biased variance.

  Statistics are taken in at least float32 (`at_least_float32`), so bfloat16 compute
  does not lose the normalisation.

  Args:
    x: [B, H, W, C].
  Returns:
    [B, H, W, C] in x's dtype.
  """
  chex.assert_rank(x, 4)
  x_wide = x.astype(at_least_float32(x.dtype))
  mean = jnp.mean(x_wide, axis=(1, 2), keepdims=True)
  var = jnp.mean(jnp.square(x_wide - mean), axis=(1, 2), keepdims=True)
  return ((x_wide - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def avg_pool_3x3_s2_p1_exclude_pad(x: Array) -> Array:
  """`nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)` on NHWC.

  The pix2pixHD discriminator's downsampling between scales: border windows average
  over the pixels that exist only.

  Args:
    x: [B, H, W, C].
  Returns:
    [B, (H - 1) // 2 + 1, (W - 1) // 2 + 1, C].
  """
  chex.assert_rank(x, 4)
  window = (1, 3, 3, 1)
  strides = (1, 2, 2, 1)
  padding = ((0, 0), (1, 1), (1, 1), (0, 0))
  # A Python scalar init value: reverse-mode autodiff of reduce_window rejects a traced one.
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, padding)
  ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
  count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, padding)
  return total / count
