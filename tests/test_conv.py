"""Winograd 3x3 convolutions: exact transforms, float32 rounding, drop-in for nn.Conv."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ip_lap_jax import ops
from ip_lap_jax.models import conv


def _random(shape: tuple[int, ...], seed: int, scale: float = 1.0) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal(shape) * scale


@pytest.mark.parametrize("tile", sorted(conv.WINOGRAD_TRANSFORMS))
def test_transforms_are_exact(tile):
  """The Toom-Cook matrices satisfy A^T[(G g) * (B^T d)] = correlation for every tap."""
  at, g, bt = conv.WINOGRAD_TRANSFORMS[tile]
  alpha = tile + 2
  assert at.shape == (tile, alpha) and g.shape == (alpha, 3) and bt.shape == (alpha, alpha)
  # Output i, kernel tap k, input l: sum_p AT[i, p] G[p, k] BT[p, l] = [l == i + k].
  identity = np.einsum("ip,pk,pl->ikl", at, g, bt)
  expected = np.zeros((tile, 3, alpha))
  for i in range(tile):
    for k in range(3):
      expected[i, k, i + k] = 1.0
  np.testing.assert_allclose(identity, expected, atol=1e-12)


@pytest.mark.parametrize("tile", sorted(conv.WINOGRAD_TRANSFORMS))
@pytest.mark.parametrize("shape", [(2, 7, 9, 5, 3), (1, 8, 8, 4, 6), (1, 1, 2, 3, 2)])
def test_float64_equals_direct_convolution(tile, shape):
  """Any size, including ones that are not a multiple of the tile (padded and cropped)."""
  b, h, w, cin, cout = shape
  x, k = _random((b, h, w, cin), 0), _random((3, 3, cin, cout), 1)
  with jax.enable_x64(True):
    got = np.asarray(conv.winograd_conv3x3(jnp.asarray(x), jnp.asarray(k), tile))
    want = np.asarray(conv.direct_conv3x3(jnp.asarray(x), jnp.asarray(k)))
  assert got.shape == (b, h, w, cout)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-11)


def test_float32_rounding_is_bounded():
  """rms error against float64 truth on a 256-channel layer: F(2x2) rounds like a direct
  convolution; F(4x4) within 5x of it (measured 3.6x with the chosen points; 8x with the
  textbook points 0, +-1, +-2)."""
  x, k = _random((2, 16, 16, 256), 2), _random((3, 3, 256, 64), 3, scale=1 / 48)
  with jax.enable_x64(True):
    truth = np.asarray(conv.direct_conv3x3(jnp.asarray(x), jnp.asarray(k)))
  x32, k32 = jnp.asarray(x, jnp.float32), jnp.asarray(k, jnp.float32)

  def rms(y):
    return float(np.sqrt(np.mean((np.asarray(y, np.float64) - truth) ** 2)))

  direct = rms(jax.jit(conv.direct_conv3x3)(x32, k32))
  f2 = rms(jax.jit(conv.winograd_conv3x3, static_argnums=2)(x32, k32, 2))
  f4 = rms(jax.jit(conv.winograd_conv3x3, static_argnums=2)(x32, k32, 4))
  assert 0 < direct < 1e-6
  assert f2 <= 2.0 * direct
  assert f4 <= 5.0 * direct


@pytest.mark.parametrize("tile", sorted(conv.WINOGRAD_TRANSFORMS))
def test_gradients_equal_direct_convolution(tile):
  """Input and kernel gradients (both by Winograd), at a size that is no tile multiple."""
  x, k = _random((2, 7, 10, 4), 4), _random((3, 3, 4, 3), 5)
  cotangent = _random((2, 7, 10, 3), 6)
  with jax.enable_x64(True):
    def loss(conv_fn):
      return lambda x, k: jnp.sum(conv_fn(x, k) * cotangent)
    winograd = lambda x, k: conv.winograd_conv3x3(x, k, tile)  # noqa: E731
    got = jax.grad(loss(winograd), argnums=(0, 1))(jnp.asarray(x), jnp.asarray(k))
    want = jax.grad(loss(conv.direct_conv3x3), argnums=(0, 1))(jnp.asarray(x), jnp.asarray(k))
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=0, atol=1e-11)


def test_float32_kernel_gradient_rounding_is_bounded():
  """The kernel gradient sums over every pixel; by F(4x4) its float32 error against
  float64 truth stays within 2x that of XLA's own kernel gradient (measured: below it)."""
  x, dy = _random((2, 32, 32, 64), 8), _random((2, 32, 32, 32), 9)
  k = np.zeros((3, 3, 64, 32))

  def kernel_grad(conv_fn, x, dy, k):
    return jax.vjp(lambda k_: conv_fn(x, k_), k)[1](dy)[0]

  with jax.enable_x64(True):
    truth = np.asarray(kernel_grad(conv.direct_conv3x3, *map(jnp.asarray, (x, dy, k))))
  args32 = [jnp.asarray(a, jnp.float32) for a in (x, dy, k)]

  def rms(conv_fn):
    got = jax.jit(functools.partial(kernel_grad, conv_fn))(*args32)
    return float(np.sqrt(np.mean((np.asarray(got, np.float64) - truth) ** 2)))

  direct = rms(conv.direct_conv3x3)
  f4 = rms(lambda x, k: conv.winograd_conv3x3(x, k, 4))
  assert 0 < direct < 1e-3 * float(np.sqrt(np.mean(truth ** 2)))
  assert f4 <= 2.0 * direct


@pytest.mark.parametrize("algorithm", ["winograd", "direct"])
def test_conv3x3_is_a_drop_in_for_nn_conv(algorithm):
  """Same parameter tree and initial values as nn.Conv(k3, p1), same output."""
  x = jnp.asarray(_random((2, 8, 8, 128), 7), jnp.float32)
  reference = nn.Conv(32, (3, 3), padding=ops.conv_padding(1))
  ours = conv.Conv3x3(32, algorithm=algorithm)
  key = jax.random.key(0)
  ref_vars, our_vars = reference.init(key, x), ours.init(key, x)
  assert jax.tree_util.tree_structure(ref_vars) == jax.tree_util.tree_structure(our_vars)
  for a, b in zip(jax.tree_util.tree_leaves(ref_vars), jax.tree_util.tree_leaves(our_vars)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Non-zero bias, so a dropped bias would show.
  ref_vars = jax.tree_util.tree_map(lambda a: a + 0.1, ref_vars)
  want = np.asarray(reference.apply(ref_vars, x))
  # 1152-term float32 sums of outputs up to ~6 (Winograd measured 2.6e-5 here).
  np.testing.assert_allclose(np.asarray(ours.apply(ref_vars, x)), want, rtol=0,
                             atol=1e-5 * float(np.abs(want).max()))


def test_algorithm_choice():
  """'auto' resolves once, from the backend and dtype; the modules see a concrete choice."""
  assert conv.resolve_algorithm("auto", jnp.float32, "cpu") == "mixed"
  assert conv.resolve_algorithm("auto", jnp.float64, "cpu") == "mixed"
  assert conv.resolve_algorithm("auto", jnp.bfloat16, "cpu") == "direct"
  assert conv.resolve_algorithm("auto", jnp.float32, "gpu") == "direct"
  assert conv.resolve_algorithm("winograd", jnp.bfloat16, "gpu") == "winograd"
  assert conv.uses_winograd("mixed", 256)
  assert not conv.uses_winograd("mixed", conv.WINOGRAD_MIN_CHANNELS - 1)
  assert conv.uses_winograd("mixed", 3, differentiated=True)
  assert conv.uses_winograd("winograd", 3)
  assert not conv.uses_winograd("direct", 256, differentiated=True)
  with pytest.raises(ValueError, match="conv_algorithm"):
    conv.resolve_algorithm("fast", jnp.float32, "cpu")
  with pytest.raises(ValueError, match="resolve 'auto'"):
    conv.uses_winograd("auto", 256)


def test_winograd_if_differentiated_is_direct_forward_and_winograd_backward():
  """Forward-only: bit-equal to XLA's convolution. Under jax.grad: Winograd's own
  gradients (bit-equal to winograd_conv3x3's), which equal the direct ones to rounding."""
  x = jnp.asarray(_random((2, 9, 8, 16), 10), jnp.float32)
  k = jnp.asarray(_random((3, 3, 16, 8), 11, scale=0.1), jnp.float32)
  cotangent = jnp.asarray(_random((2, 9, 8, 8), 12), jnp.float32)
  fwd = jax.jit(conv.winograd_if_differentiated, static_argnums=2)
  np.testing.assert_array_equal(np.asarray(fwd(x, k, 4)), np.asarray(jax.jit(conv.direct_conv3x3)(x, k)))

  def grads(conv_fn):
    return jax.jit(jax.grad(lambda x, k: jnp.sum(conv_fn(x, k) * cotangent), argnums=(0, 1)))(x, k)

  got = grads(lambda x, k: conv.winograd_if_differentiated(x, k, 4))
  winograd = grads(lambda x, k: conv.winograd_conv3x3(x, k, 4))
  direct = grads(conv.direct_conv3x3)
  for g, w, d in zip(got, winograd, direct):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    np.testing.assert_allclose(np.asarray(g), np.asarray(d), rtol=0,
                               atol=1e-5 * float(np.abs(np.asarray(d)).max()))


def test_conv3x3_mixed_differentiates_narrow_layers_by_winograd():
  """A 64-channel layer under 'mixed': XLA's forward pass, Winograd's gradients."""
  x = jnp.asarray(_random((1, 8, 8, 64), 13), jnp.float32)
  layer = conv.Conv3x3(8, algorithm="mixed")
  variables = layer.init(jax.random.key(1), x)

  def kernel_grad(module):
    return jax.grad(lambda v: jnp.sum(module.apply(v, x) ** 2))(variables)["params"]["kernel"]

  np.testing.assert_array_equal(np.asarray(layer.apply(variables, x)),
                                np.asarray(conv.Conv3x3(8, algorithm="direct").apply(variables, x)))
  want = conv.Conv3x3(8, algorithm="winograd")
  np.testing.assert_array_equal(np.asarray(kernel_grad(layer)), np.asarray(kernel_grad(want)))


@pytest.mark.parametrize("stride,padding", [(1, 2), (2, 2), (2, 0)])
def test_matmul_kernel_grad_conv_equals_lax_conv(stride, padding):
  """Output and both gradients equal XLA's convolution (float64, exact up to rounding)."""
  x, k = _random((2, 9, 11, 3), 8), _random((4, 4, 3, 5), 9)
  with jax.enable_x64(True):
    x, k = jnp.asarray(x), jnp.asarray(k)

    def reference(x, k):
      return jax.lax.conv_general_dilated(x, k, (stride, stride), ((padding, padding),) * 2,
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def ours(x, k):
      return conv.conv2d_matmul_kernel_grad(x, k, stride, padding)

    want = reference(x, k)
    np.testing.assert_allclose(np.asarray(ours(x, k)), np.asarray(want), rtol=0, atol=1e-12)
    cotangent = jnp.asarray(_random(want.shape, 10))
    grads = [jax.grad(lambda x, k, f=f: jnp.sum(f(x, k) * cotangent), argnums=(0, 1))(x, k)
             for f in (ours, reference)]
  for g, w in zip(*grads):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=0, atol=1e-11)


def test_conv_module_is_a_drop_in_for_nn_conv():
  x = jnp.asarray(_random((1, 10, 10, 6), 11), jnp.float32)
  reference = nn.Conv(8, (4, 4), strides=(2, 2), padding=ops.conv_padding(2))
  ours = conv.Conv(8, 4, 2, 2)
  variables = reference.init(jax.random.key(0), x)
  ours_vars = ours.init(jax.random.key(0), x)
  for a, b in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(ours_vars)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_allclose(np.asarray(ours.apply(variables, x)),
                             np.asarray(reference.apply(variables, x)), rtol=0, atol=1e-6)
