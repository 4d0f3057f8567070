"""Shared building blocks: the ConvBN block and the 13-layer mel (audio) encoder.

ConvBN mirrors the release's `Conv1d`/`Conv2d` wrappers: Conv (with bias) -> BatchNorm
(eps 1e-5, PyTorch momentum 0.1 = Flax momentum 0.9) -> (+ input if residual) -> ReLU or
Tanh. Submodules are `conv_block_0` (nn.Conv) and `conv_block_1` (nn.BatchNorm), the
official `conv_block.0` / `conv_block.1` under the converter's naming rule.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from ip_lap_jax import ops

Array = jax.Array
Activation = Literal["relu", "tanh"]

_ACTIVATIONS = {"relu": nn.relu, "tanh": jnp.tanh}


class ConvBN(nn.Module):
  """Conv -> BatchNorm -> (+x) -> activation, for 1-D or 2-D inputs.

  The number of spatial axes is `len(kernel_size)`: inputs are [B, L, C] for 1-D and
  [B, H, W, C] for 2-D; the output has `features` channels and the strided spatial size
  floor((n + 2*padding - k) / s) + 1, exactly as PyTorch computes it.

  Attributes:
    features: output channels.
    kernel_size: one entry per spatial axis.
    strides: one entry per spatial axis ((3, 1), (3, 2) occur in the mel encoder).
    padding: symmetric zero padding applied to every spatial axis (PyTorch `padding=p`).
    residual: add the input before the activation (needs equal shapes in and out).
    activation: 'relu' or 'tanh'.
    dtype: compute dtype; parameters and batch statistics stay float32.
  """

  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int]
  padding: int = 1
  residual: bool = False
  activation: Activation = "relu"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    ndim = len(self.kernel_size)
    chex.assert_rank(x, ndim + 2)
    if len(self.strides) != ndim:
      raise ValueError(f"strides {self.strides} do not match kernel_size {self.kernel_size}")
    y = nn.Conv(
        self.features,
        tuple(self.kernel_size),
        strides=tuple(self.strides),
        padding=ops.conv_padding(self.padding, ndim),
        dtype=self.dtype,
        name="conv_block_0",
    )(x)
    y = nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        dtype=self.dtype,
        name="conv_block_1",
    )(y)
    if self.residual:
      chex.assert_equal_shape((x, y))
      y = y + x.astype(y.dtype)
    return _ACTIVATIONS[self.activation](y)


# One ConvBN layer of a stack: (features, kernel, stride, padding, residual); kernel and
# stride are ints (same on every spatial axis) or per-axis tuples.
LayerSpec = tuple[int, int | tuple[int, ...], int | tuple[int, ...], int, bool]


def conv_bn_stack(
    x: Array,
    layers: Sequence[LayerSpec],
    *,
    name_prefix: str,
    final_activation: Activation,
    dtype: Any,
    train: bool,
) -> Array:
  """Runs ConvBN layers `f"{name_prefix}_{i}"` in the calling module's scope.

  Call it from inside an `@nn.compact` method: the layers become submodules of that
  module, named like the official `nn.Sequential` entries `<name_prefix>.<i>`. Every layer
  ends in ReLU except the last, which ends in `final_activation`.

  Args:
    x: [B, L, C] (1-D) or [B, H, W, C] (2-D).
    layers: LayerSpec per layer.
  Returns:
    the last layer's output.
  """
  ndim = x.ndim - 2
  last = len(layers) - 1
  for i, (features, kernel, stride, pad, residual) in enumerate(layers):
    x = ConvBN(
        features,
        (kernel,) * ndim if isinstance(kernel, int) else tuple(kernel),
        (stride,) * ndim if isinstance(stride, int) else tuple(stride),
        padding=pad,
        residual=residual,
        activation=final_activation if i == last else "relu",
        dtype=dtype,
        name=f"{name_prefix}_{i}",
    )(x, train=train)
  return x


# The 13 mel-encoder layers (the release's `mel_encoder`); input [B, 80, 16, 1] -> [B, 1, 1, 512].
MEL_ENCODER_LAYERS: tuple[LayerSpec, ...] = (
    (32, 3, 1, 1, False),
    (32, 3, 1, 1, True),
    (32, 3, 1, 1, True),
    (64, 3, (3, 1), 1, False),
    (64, 3, 1, 1, True),
    (64, 3, 1, 1, True),
    (128, 3, 3, 1, False),
    (128, 3, 1, 1, True),
    (128, 3, 1, 1, True),
    (256, 3, (3, 2), 1, False),
    (256, 3, 1, 1, True),
    (512, 3, 1, 0, False),
    (512, 1, 1, 0, False),
)


class MelEncoder(nn.Module):
  """The 13-layer ConvBN stack that embeds one mel window: [B, 80, 16, 1] -> [B, 512].

  The landmark generator's `mel_encoder` ends in Tanh; the renderer's
  `translation.audio_encoder` is the same stack ending in ReLU. Layer i is the submodule
  `f"{name_prefix}_{i}"` (official key `<name_prefix>.<i>.conv_block...`).

  To get the official flat parameter layout (`mel_encoder_0/...` directly in the parent,
  not `<encoder name>/mel_encoder_0/...`), the parent shares its scope with the encoder:

      enc = MelEncoder(name_prefix="audio_encoder", final_activation="relu",
                       dtype=self.dtype, name="audio_encoder")
      nn.share_scope(self, enc)
      feature = enc(mels, train=train)    # [B, 512]

  (Equivalently, call `conv_bn_stack(mels, MEL_ENCODER_LAYERS, name_prefix=...)` from the
  parent's compact method and reshape the [B, 1, 1, 512] result.)

  Attributes:
    final_activation: 'tanh' (landmark generator) or 'relu' (renderer).
    name_prefix: submodule name prefix.
    dtype: compute dtype.
  """

  final_activation: Activation = "tanh"
  name_prefix: str = "mel_encoder"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, mels: Array, *, train: bool) -> Array:
    """mels: [B, 80, 16, 1] -> [B, 512]."""
    chex.assert_shape(mels, (None, 80, 16, 1))
    x = conv_bn_stack(
        mels.astype(self.dtype),
        MEL_ENCODER_LAYERS,
        name_prefix=self.name_prefix,
        final_activation=self.final_activation,
        dtype=self.dtype,
        train=train,
    )
    chex.assert_shape(x, (mels.shape[0], 1, 1, 512))
    return x.reshape(mels.shape[0], 512)
