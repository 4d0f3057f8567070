"""Spatially (SPADE) and globally (AdaIN) modulated normalisation blocks of the renderer.

The release's `models/video_renderer.py`. Both layers compute `norm + norm * gamma + beta` with `norm` the
parameter-free instance norm of the input (eps 1e-5, biased variance), the same
expression order as the release so float32 results agree to rounding.

SPADE layers are split in two halves with unchanged parameters:
`modulation(m) -> (gamma, beta)` depends only on the modulation input, and
`apply(x, gamma, beta)` normalises and modulates. The renderer's flow module feeds the
same driving sketches to every reference of a frame, so it computes the modulation once
per frame and applies it to all N references (`x` with an extra reference axis), which
is exact and removes most of the flow module's arithmetic.
"""

from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from ip_lap_jax import ops
from ip_lap_jax.models.conv import Algorithm, Conv3x3

Array = jax.Array
# (gamma, beta) of one SPADE layer, each [B, H, W, C].
Modulation = tuple[Array, Array]


def _conv3x3(features: int, dtype: Any, algorithm: Algorithm, name: str,
             output_tile: int = 4) -> Conv3x3:
  return Conv3x3(features, dtype=dtype, algorithm=algorithm, output_tile=output_tile, name=name)


def _instance_norm_any_batch(x: Array) -> Array:
  """Instance norm of [..., H, W, C] with any number of leading batch axes."""
  lead = x.shape[:-3]
  flat = x.reshape((-1,) + x.shape[-3:])
  return ops.instance_norm(flat).reshape(lead + x.shape[-3:])


def _broadcast_to_refs(x: Array, m: Array) -> Array:
  """m [B, H, W, C] -> [B, 1, H, W, C] when x carries a reference axis [B, N, H, W, C]."""
  if x.ndim == m.ndim + 1:
    return m[:, None]
  return m


def _conv_any_batch(conv: nn.Module, x: Array) -> Array:
  """Applies a 2-D conv to [..., H, W, C] by folding leading axes into the batch."""
  lead = x.shape[:-3]
  y = conv(x.reshape((-1,) + x.shape[-3:]))
  return y.reshape(lead + y.shape[-3:])


class SPADELayer(nn.Module):
  """Instance norm modulated by a spatial map (official `SPADELayer`).

  Params: `conv1` (M -> hidden, k3 p1, no activation), `gamma`, `beta` (hidden -> C, k3 p1).

  Attributes:
    features: C, channels of the normalised input.
    hidden: hidden width of the modulation branch (256 in the release).
    dtype: compute dtype.
    conv_algorithm: how the 3x3 convolutions compute (`ip_lap_jax.models.conv`).
  """

  features: int
  hidden: int = 256
  dtype: Any = jnp.float32
  conv_algorithm: Algorithm = "direct"

  def setup(self) -> None:
    self.conv1 = _conv3x3(self.hidden, self.dtype, self.conv_algorithm, "conv1")
    self.gamma = _conv3x3(self.features, self.dtype, self.conv_algorithm, "gamma")
    self.beta = _conv3x3(self.features, self.dtype, self.conv_algorithm, "beta")

  def modulation(self, m: Array) -> Modulation:
    """m: [B, H, W, M] -> (gamma, beta), each [B, H, W, C]."""
    chex.assert_rank(m, 4)
    hidden = self.conv1(m.astype(self.dtype))
    return self.gamma(hidden), self.beta(hidden)

  def apply_modulation(self, x: Array, gamma: Array, beta: Array) -> Array:
    """x: [B, H, W, C] or [B, N, H, W, C] (gamma/beta shared over N) -> same shape as x."""
    chex.assert_axis_dimension(x, -1, self.features)
    norm = _instance_norm_any_batch(x.astype(self.dtype))
    gamma = _broadcast_to_refs(norm, gamma)
    beta = _broadcast_to_refs(norm, beta)
    return norm + norm * gamma + beta

  def __call__(self, x: Array, m: Array) -> Array:
    """x: [B, H, W, C], m: [B, H, W, M] -> [B, H, W, C]."""
    return self.apply_modulation(x, *self.modulation(m))


class SPADE(nn.Module):
  """SPADE block (official `SPADE`): spade_layer_1 -> lrelu(0.2) -> conv_1 -> spade_layer_2
  -> lrelu(0.2) -> conv_2. No residual.

  Attributes:
    features: C, channels in and out.
    hidden: hidden width of both SPADE layers' modulation branches.
    dtype: compute dtype.
    conv_algorithm: how the 3x3 convolutions compute (`ip_lap_jax.models.conv`).
    output_tile: Winograd tile of `conv_1` and `conv_2` when they use Winograd.
  """

  features: int
  hidden: int = 256
  dtype: Any = jnp.float32
  conv_algorithm: Algorithm = "direct"
  output_tile: int = 4

  def setup(self) -> None:
    self.spade_layer_1 = SPADELayer(self.features, self.hidden, self.dtype, self.conv_algorithm)
    self.spade_layer_2 = SPADELayer(self.features, self.hidden, self.dtype, self.conv_algorithm)
    self.conv_1 = _conv3x3(self.features, self.dtype, self.conv_algorithm, "conv_1",
                           self.output_tile)
    self.conv_2 = _conv3x3(self.features, self.dtype, self.conv_algorithm, "conv_2",
                           self.output_tile)

  def modulations(self, m: Array) -> tuple[Modulation, Modulation]:
    """m: [B, H, W, M] -> ((gamma1, beta1), (gamma2, beta2)), each [B, H, W, C]."""
    return self.spade_layer_1.modulation(m), self.spade_layer_2.modulation(m)

  def apply_modulations(self, x: Array, mods: tuple[Modulation, Modulation]) -> Array:
    """x: [B, H, W, C] or [B, N, H, W, C] with modulations shared over N -> x's shape."""
    (gamma1, beta1), (gamma2, beta2) = mods
    x = self.spade_layer_1.apply_modulation(x, gamma1, beta1)
    x = _conv_any_batch(self.conv_1, nn.leaky_relu(x, 0.2))
    x = self.spade_layer_2.apply_modulation(x, gamma2, beta2)
    return _conv_any_batch(self.conv_2, nn.leaky_relu(x, 0.2))

  def __call__(self, x: Array, m: Array) -> Array:
    """x: [B, H, W, C], m: [B, H, W, M] -> [B, H, W, C]."""
    return self.apply_modulations(x, self.modulations(m))


class AdaINLayer(nn.Module):
  """Instance norm modulated by a vector (official `AdaINLayer`).

  Params: `mlp_shared_0` (M -> 128, then ReLU), `mlp_gamma`, `mlp_beta` (128 -> C).

  Attributes:
    features: C.
    hidden: 128 in the release.
    dtype: compute dtype.
  """

  features: int
  hidden: int = 128
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, m: Array) -> Array:
    """x: [B, H, W, C], m: [B, M] -> [B, H, W, C]."""
    chex.assert_rank([x, m], [4, 2])
    chex.assert_axis_dimension(x, -1, self.features)
    norm = ops.instance_norm(x.astype(self.dtype))
    actv = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="mlp_shared_0")(m.astype(self.dtype)))
    gamma = nn.Dense(self.features, dtype=self.dtype, name="mlp_gamma")(actv)[:, None, None, :]
    beta = nn.Dense(self.features, dtype=self.dtype, name="mlp_beta")(actv)[:, None, None, :]
    return norm + norm * gamma + beta


class AdaIN(nn.Module):
  """AdaIN block (official `AdaIN`): adain_layer_1 -> lrelu(0.2) -> conv_1 -> adain_layer_2
  -> lrelu(0.2) -> conv_2.

  Attributes:
    features: C, channels in and out.
    dtype: compute dtype.
    conv_algorithm: how the 3x3 convolutions compute (`ip_lap_jax.models.conv`).
  """

  features: int
  dtype: Any = jnp.float32
  conv_algorithm: Algorithm = "direct"

  @nn.compact
  def __call__(self, x: Array, m: Array) -> Array:
    """x: [B, H, W, C], m: [B, M] -> [B, H, W, C]."""
    x = AdaINLayer(self.features, dtype=self.dtype, name="adain_layer_1")(x, m)
    x = _conv3x3(self.features, self.dtype, self.conv_algorithm, "conv_1")(nn.leaky_relu(x, 0.2))
    x = AdaINLayer(self.features, dtype=self.dtype, name="adain_layer_2")(x, m)
    return _conv3x3(self.features, self.dtype, self.conv_algorithm, "conv_2")(
        nn.leaky_relu(x, 0.2))
