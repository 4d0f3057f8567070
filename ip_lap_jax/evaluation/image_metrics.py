"""PSNR and SSIM per frame with piq 0.8's conventions (what the release's validation and
the talking-face tables use): data range 1, images [B, H, W, C] in [0, 1].

psnr: -10 log10(mse + 1e-8), mse over all pixels and channels of one image.
ssim: piq's `ssim(x, y, data_range=1.)`: first average-pool both images by
  f = max(1, round(min(H, W) / 256)) when f > 1 (Python's round: 384 px -> 2, 640 px
  -> 2, 128 px -> 1; the pool drops the remainder rows and columns); then an 11x11
  Gaussian window (sigma 1.5, the 2-D kernel normalised to sum 1), valid convolution per
  channel, K1 0.01, K2 0.03, the SSIM map averaged over positions and channels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

PSNR_EPS = 1e-8
SSIM_KERNEL_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


@jax.jit
def psnr(x: Array, y: Array) -> Array:
  """x, y: [B, H, W, C] in [0, 1] -> [B] (piq.psnr, reduction='none')."""
  mse = jnp.mean(jnp.square(x.astype(jnp.float32) - y.astype(jnp.float32)), axis=(1, 2, 3))
  return -10.0 * jnp.log10(mse + PSNR_EPS)


def ssim_downsample_factor(height: int, width: int) -> int:
  """piq's rule: max(1, round(min(H, W) / 256)), with Python's round (half to even)."""
  return max(1, round(min(height, width) / 256))


def _gaussian_window() -> np.ndarray:
  """piq's gaussian_filter(11, 1.5): [11, 11] summing to 1."""
  coords = np.arange(SSIM_KERNEL_SIZE, dtype=np.float32) - (SSIM_KERNEL_SIZE - 1) / 2.0
  g = coords ** 2
  g = np.exp(-(g[None, :] + g[:, None]) / (2 * SSIM_SIGMA ** 2))
  return (g / g.sum()).astype(np.float32)


@jax.jit
def ssim(x: Array, y: Array) -> Array:
  """x, y: [B, H, W, C] in [0, 1] -> [B] (piq.ssim, data_range=1., reduction='none')."""
  x = x.astype(jnp.float32)
  y = y.astype(jnp.float32)
  f = ssim_downsample_factor(x.shape[1], x.shape[2])
  if f > 1:  # F.avg_pool2d(kernel_size=f): stride f, no padding
    pool = lambda z: jax.lax.reduce_window(  # noqa: E731
        z, 0.0, jax.lax.add, (1, f, f, 1), (1, f, f, 1), "VALID") / (f * f)
    x, y = pool(x), pool(y)
  b, h, w, c = x.shape
  if min(h, w) < SSIM_KERNEL_SIZE:
    raise ValueError(f"ssim: images of {h}x{w} (after downsampling) are smaller than the "
                     f"{SSIM_KERNEL_SIZE}x{SSIM_KERNEL_SIZE} window")
  kernel = jnp.asarray(_gaussian_window())[:, :, None, None]

  def blur(z):  # depthwise, valid
    z = jnp.moveaxis(z, 3, 1).reshape(b * c, h, w, 1)
    out = jax.lax.conv_general_dilated(z, kernel, (1, 1), "VALID",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                       precision=jax.lax.Precision.HIGHEST)
    return out.reshape(b, c, out.shape[1], out.shape[2])

  c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
  mx, my = blur(x), blur(y)
  sxx = blur(x * x) - mx * mx
  syy = blur(y * y) - my * my
  sxy = blur(x * y) - mx * my
  cs = (2 * sxy + c2) / (sxx + syy + c2)
  lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
  return jnp.mean(lum * cs, axis=(1, 2, 3))
