"""Each PyTorch-compatible primitive against the PyTorch function, on random inputs."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import jax
import jax.numpy as jnp

from ip_lap_jax import ops

RNG = np.random.default_rng(0)


def to_nchw(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def from_nchw(t: torch.Tensor) -> np.ndarray:
  return t.detach().numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("in_hw,out_hw", [((128, 128), (64, 64)), ((7, 9), (16, 5)), ((64, 64), (128, 128)),
                                          ((13, 11), (13, 11)), ((30, 20), (7, 3))])
def test_resize_nearest_matches_torch(in_hw, out_hw):
  x = RNG.standard_normal((2, *in_hw, 3)).astype(np.float32)
  expected = from_nchw(F.interpolate(to_nchw(x), size=out_hw, mode="nearest"))
  got = np.asarray(ops.resize_nearest(jnp.asarray(x), out_hw))
  np.testing.assert_array_equal(got, expected)


def test_jax_image_resize_nearest_differs_from_torch():
  # Why ops.resize_nearest exists: jax.image.resize picks other pixels.
  x = RNG.standard_normal((1, 128, 128, 2)).astype(np.float32)
  expected = from_nchw(F.interpolate(to_nchw(x), size=(64, 64), mode="nearest"))
  naive = np.asarray(jax.image.resize(jnp.asarray(x), (1, 64, 64, 2), "nearest"))
  assert not np.allclose(naive, expected)


@pytest.mark.parametrize("in_hw,out_hw", [((64, 64), (128, 128)), ((128, 128), (64, 64)), ((7, 9), (16, 5)),
                                          ((33, 17), (12, 40))])
def test_resize_bilinear_matches_torch(in_hw, out_hw):
  x = RNG.standard_normal((2, *in_hw, 4)).astype(np.float32)
  expected = from_nchw(F.interpolate(to_nchw(x), size=out_hw, mode="bilinear", align_corners=False))
  got = np.asarray(ops.resize_bilinear(jnp.asarray(x), out_hw))
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_resize_bilinear_half_scale_factor_matches_torch():
  # The perceptual loss's second scale: scale_factor=0.5, recompute_scale_factor=True.
  x = RNG.standard_normal((2, 128, 128, 3)).astype(np.float32)
  expected = from_nchw(F.interpolate(to_nchw(x), mode="bilinear", scale_factor=0.5, align_corners=False,
                                     recompute_scale_factor=True))
  got = np.asarray(ops.resize_bilinear(jnp.asarray(x), (64, 64)))
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("src_hw,grid_hw", [((16, 12), (16, 12)), ((8, 8), (20, 10))])
def test_grid_sample_matches_torch(src_hw, grid_hw):
  x = RNG.standard_normal((2, *src_hw, 5)).astype(np.float32)
  # Range beyond [-1, 1] exercises the zero padding.
  grid = RNG.uniform(-1.3, 1.3, size=(2, *grid_hw, 2)).astype(np.float32)
  expected = from_nchw(F.grid_sample(to_nchw(x), torch.from_numpy(grid), mode="bilinear",
                                     padding_mode="zeros", align_corners=False))
  got = np.asarray(ops.grid_sample(jnp.asarray(x), jnp.asarray(grid)))
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_grid_sample_gradients_match_torch():
  x = RNG.standard_normal((1, 9, 11, 3)).astype(np.float32)
  grid = RNG.uniform(-1.1, 1.1, size=(1, 6, 7, 2)).astype(np.float32)
  weights = RNG.standard_normal((1, 6, 7, 3)).astype(np.float32)

  xt = to_nchw(x).requires_grad_(True)
  gt = torch.from_numpy(grid).requires_grad_(True)
  out = F.grid_sample(xt, gt, mode="bilinear", padding_mode="zeros", align_corners=False)
  (out * to_nchw(weights)).sum().backward()

  def loss(xj, gj):
    return jnp.sum(ops.grid_sample(xj, gj) * weights)

  gx, gg = jax.grad(loss, argnums=(0, 1))(jnp.asarray(x), jnp.asarray(grid))
  np.testing.assert_allclose(np.asarray(gx), from_nchw(xt.grad), atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(gg), gt.grad.numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("r", [2, 3])
def test_pixel_shuffle_matches_torch(r):
  x = RNG.standard_normal((2, 5, 6, 4 * r * r)).astype(np.float32)
  expected = from_nchw(torch.nn.PixelShuffle(r)(to_nchw(x)))
  np.testing.assert_array_equal(np.asarray(ops.pixel_shuffle(jnp.asarray(x), r)), expected)


def test_instance_norm_matches_torch():
  x = (3.0 + 2.0 * RNG.standard_normal((2, 16, 12, 7))).astype(np.float32)
  expected = from_nchw(torch.nn.InstanceNorm2d(7)(to_nchw(x)))
  np.testing.assert_allclose(np.asarray(ops.instance_norm(jnp.asarray(x))), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("hw", [(64, 64), (33, 20)])
def test_avg_pool_exclude_pad_matches_torch(hw):
  x = RNG.standard_normal((2, *hw, 3)).astype(np.float32)
  pool = torch.nn.AvgPool2d(3, stride=2, padding=[1, 1], count_include_pad=False)
  expected = from_nchw(pool(to_nchw(x)))
  np.testing.assert_allclose(np.asarray(ops.avg_pool_3x3_s2_p1_exclude_pad(jnp.asarray(x))), expected,
                             atol=1e-6, rtol=0)


def test_conv_padding():
  assert ops.conv_padding(3) == ((3, 3), (3, 3))
  assert ops.conv_padding(1, ndim=1) == ((1, 1),)
  assert ops.conv_padding((0, 2)) == ((0, 0), (2, 2))


def test_avg_pool_differentiable_under_jit():
  # The discriminator's downsampling sits on the generator's GAN-loss path.
  x = jnp.asarray(RNG.standard_normal((1, 9, 7, 2)).astype(np.float32))
  xt = to_nchw(np.asarray(x)).requires_grad_(True)
  torch.nn.AvgPool2d(3, stride=2, padding=[1, 1], count_include_pad=False)(xt).pow(2).sum().backward()
  grad = jax.jit(jax.grad(lambda v: jnp.sum(ops.avg_pool_3x3_s2_p1_exclude_pad(v) ** 2)))(x)
  np.testing.assert_allclose(np.asarray(grad), from_nchw(xt.grad), atol=1e-5, rtol=0)
