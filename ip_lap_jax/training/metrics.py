"""Image quality metrics for renderer evaluation (piq's definitions) and sample grids.

psnr(x, y): per image 10*log10(1 / (mse + 1e-8)) over all pixels and channels, data
range 1. ssim(x, y): Gaussian window 11x11, sigma 1.5, K1 0.01, K2 0.03, valid
convolution per channel, mean SSIM map averaged over channels (piq's `ssim` for
images <= 256 px, where it does not downsample).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def psnr(x: Array, y: Array) -> Array:
  """x, y: [B, H, W, C] in [0, 1] -> [B]."""
  mse = jnp.mean(jnp.square(x.astype(jnp.float32) - y.astype(jnp.float32)), axis=(1, 2, 3))
  return 10.0 * jnp.log10(1.0 / (mse + 1e-8))


def _gaussian(size: int = 11, sigma: float = 1.5) -> np.ndarray:
  coords = np.arange(size, dtype=np.float32) - (size - 1) / 2.0
  g = np.exp(-(coords ** 2) / (2 * sigma ** 2))
  return (g / g.sum()).astype(np.float32)


def ssim(x: Array, y: Array) -> Array:
  """x, y: [B, H, W, C] in [0, 1] -> [B]."""
  b, h, w, c = x.shape
  g = jnp.asarray(_gaussian())
  kernel = (g[:, None] * g[None, :])[:, :, None, None]  # [11, 11, 1, 1]

  def blur(z):  # per channel, valid padding
    z = jnp.moveaxis(z, 3, 1).reshape(b * c, h, w, 1)
    out = jax.lax.conv_general_dilated(z, kernel, (1, 1), "VALID",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                       precision=jax.lax.Precision.HIGHEST)
    return out.reshape(b, c, out.shape[1], out.shape[2])

  x = x.astype(jnp.float32)
  y = y.astype(jnp.float32)
  c1, c2 = 0.01 ** 2, 0.03 ** 2
  mx, my = blur(x), blur(y)
  sxx = blur(x * x) - mx * mx
  syy = blur(y * y) - my * my
  sxy = blur(x * y) - mx * my
  cs = (2 * sxy + c2) / (sxx + syy + c2)
  lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
  return jnp.mean(lum * cs, axis=(1, 2, 3))


def sample_grid(columns: list[np.ndarray], max_rows: int) -> np.ndarray:
  """Columns of [B, H, W, 3] images in [0, 1] -> uint8 [rows*H, cols*W, 3] (same order)."""
  rows = min(max_rows, columns[0].shape[0])
  tiles = [np.concatenate([np.asarray(col[r]) for col in columns], axis=1) for r in range(rows)]
  return (np.clip(np.concatenate(tiles, axis=0), 0, 1) * 255).round().astype(np.uint8)
