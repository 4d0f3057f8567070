"""The IP_LAP renderer: alignment (flow) module G_a and translation module G_r.

The release's `models/video_renderer.py`. Images are BGR in
[0, 1], NHWC. Official parameter paths: `flow_module/...`, `translation/...`; the
release's `perceptual.*` (VGG19) weights belong to `ip_lap_jax.models.vgg`.

Speed: the flow module's SPADE modulations (`conv1`, `gamma`, `beta` of every SPADE
layer) see only the driving sketches, identical for the N references of a frame. With
`shared_modulation=True` (default) they are computed once per frame and broadcast over
the references, which run as one batched axis; the result equals the release's
per-reference loop (`shared_modulation=False` computes it that way, for tests and
benchmarks). At N = 25 this removes about 64% of the renderer's arithmetic.

Ablations:
- `use_warping=False`: the flow module predicts no flow (`conv_4` does not exist); the
  references' features h1, h2 and the reference images themselves are fused unwarped,
  with the learned per-pixel weights (`conv_5`) still used. "Identity deformation" means
  no resampling at all: the release's grid is built align-corners style but sampled with
  align_corners=False, so its zero-flow warp would blur slightly; we skip it.
- `use_audio=False`: the translation module has no `audio_encoder_*` and no `adain_*`
  blocks (params absent); the decoder is spade_1 -> pixel shuffle -> spade_2 -> spade_4.
"""

from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from ip_lap_jax import ops
from ip_lap_jax.constants import WINDOW  # driving sketches; their 15 channels modulate both modules
from ip_lap_jax.models.conv import Algorithm
from ip_lap_jax.models.layers import MelEncoder
from ip_lap_jax.models.modulation import SPADE, AdaIN

Array = jax.Array

IMAGE_SIZE = 128
_TORCH_BN_MOMENTUM = 0.1
# The flow head turns feature errors into sampling-position errors, which the warped
# images amplify by their local gradient. F(4x4) Winograd in all four per-reference
# 256-channel convolutions doubled the warped reference's float32 error against the
# release (test fixture with exaggerated flow: 1.1e-4 vs 6.7e-5 for direct convolutions);
# F(2x2) in the first block keeps it at 8.5e-5 for 70% of F(4x4)'s saving.
FLOW_SPADE_OUTPUT_TILES = (2, 4)


class GroupedBatchNorm(nn.Module):
  """BatchNorm2d applied as the release applies it inside a Python loop over G groups.

  x: [G, B, H, W, C] -> same shape. Training mode normalises each group with its own
  batch statistics (biased variance) and updates the running statistics as G consecutive
  PyTorch calls would (momentum 0.1, unbiased variance for `var`). Eval mode uses the
  running statistics, like `nn.BatchNorm`. Parameter and statistic names equal
  `nn.BatchNorm`'s (`scale`, `bias`; batch_stats `mean`, `var`), so the converter's rule
  holds. G = 1 is plain BatchNorm2d with PyTorch's running-variance update.

  Attributes:
    dtype: compute dtype; statistics are taken in float32 (float64 under float64 compute).
    epsilon: 1e-5 as in PyTorch.
    axis_name: when set (inside pmap), training statistics are averaged over that axis:
      synchronised BatchNorm, as one large batch split evenly over the devices.
  """

  dtype: Any = jnp.float32
  epsilon: float = 1e-5
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    chex.assert_rank(x, 5)
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
    x_wide = x.astype(ops.at_least_float32(x.dtype))
    if train:
      mean = jnp.mean(x_wide, axis=(1, 2, 3), keepdims=True)  # [G, 1, 1, 1, C]
      devices = 1
      if self.axis_name is not None:
        mean = jax.lax.pmean(mean, self.axis_name)
        devices = jax.lax.psum(1, self.axis_name)
      var = jnp.mean(jnp.square(x_wide - mean), axis=(1, 2, 3), keepdims=True)
      if self.axis_name is not None:
        var = jax.lax.pmean(var, self.axis_name)
      if not self.is_initializing():
        count = x.shape[1] * x.shape[2] * x.shape[3] * devices
        unbiased = var[:, 0, 0, 0] * (count / max(count - 1, 1))
        new_mean, new_var = ra_mean.value, ra_var.value
        for g in range(x.shape[0]):  # G is small (N references); sequential as in the loop
          new_mean = (1 - _TORCH_BN_MOMENTUM) * new_mean + _TORCH_BN_MOMENTUM * mean[g, 0, 0, 0]
          new_var = (1 - _TORCH_BN_MOMENTUM) * new_var + _TORCH_BN_MOMENTUM * unbiased[g]
        ra_mean.value, ra_var.value = new_mean, new_var
    else:
      mean, var = ra_mean.value, ra_var.value
    y = (x_wide - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
    return y.astype(self.dtype)


def _conv(features: int, kernel: int, *, stride: int = 1, padding: int, use_bias: bool = True,
          dtype: Any, name: str) -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=ops.conv_padding(padding), use_bias=use_bias, dtype=dtype, name=name)


def _fold(x: Array) -> Array:
  """[B, N, ...] -> [B * N, ...]."""
  return x.reshape((-1,) + x.shape[2:])


def _unfold(x: Array, b: int) -> Array:
  """[B * N, ...] -> [B, N, ...]."""
  return x.reshape((b, -1) + x.shape[1:])


def identity_grid(h: int, w: int, dtype: Any = jnp.float32) -> Array:
  """The release's `make_coordinate_grid`: [h, w, 2] (x, y), built align-corners style."""
  xs = 2.0 * (jnp.arange(w, dtype=dtype) / (w - 1)) - 1.0
  ys = 2.0 * (jnp.arange(h, dtype=dtype) / (h - 1)) - 1.0
  return jnp.stack(jnp.broadcast_arrays(xs[None, :], ys[:, None]), axis=-1)


def flow_to_deformation(flow: Array) -> Array:
  """flow: [B, H, W, 2] in pixels (x, y) -> sampling grid [B, H, W, 2] in [-1, 1] units."""
  _, h, w, _ = flow.shape
  flow = flow.astype(ops.at_least_float32(flow.dtype))
  norm = 2.0 * jnp.stack([flow[..., 0] / (w - 1), flow[..., 1] / (h - 1)], axis=-1)
  return identity_grid(h, w, flow.dtype)[None] + norm


def warp(source: Array, deformation: Array) -> Array:
  """The release's `warping`: source [B, h, w, C], deformation [B, H, W, 2] -> [B, h, w, C].

  A deformation larger than the source is first resized to the source's size (bilinear,
  align_corners False, no antialiasing); sampling is bilinear with zero padding and
  align_corners False, although the grid was built align-corners style (a release quirk
  kept for parity).
  """
  h, w = source.shape[1:3]
  if deformation.shape[1:3] != (h, w):
    deformation = ops.resize_bilinear(deformation, (h, w))
  return ops.grid_sample(source, deformation)


class DenseFlowNetwork(nn.Module):
  """Alignment module: warps N reference images and their features to the driving pose.

  Attributes:
    use_warping: False skips the flow (see the module docstring).
    shared_modulation: compute the SPADE modulations once per frame (True) or once per
      reference as the release does (False); the outputs are equal.
    dtype: compute dtype.
    conv_algorithm: how the SPADE blocks' 3x3 convolutions compute (`models.conv`).
    spade_output_tiles: Winograd tiles of `spade_layer_1`'s and `spade_layer_2`'s
      per-reference convolutions (see `FLOW_SPADE_OUTPUT_TILES`).
  """

  use_warping: bool = True
  shared_modulation: bool = True
  dtype: Any = jnp.float32
  conv_algorithm: Algorithm = "direct"
  spade_output_tiles: tuple[int, int] = FLOW_SPADE_OUTPUT_TILES

  @nn.compact
  def __call__(self, ref_images: Array, ref_sketches: Array, driving: Array, *,
               train: bool) -> tuple[Array, Array, Array]:
    """Fused warped features and images.

    Args:
      ref_images: [B, N, 128, 128, 3].
      ref_sketches: [B, N, 128, 128, 3].
      driving: [B, 128, 128, 15], the 5 driving sketches stacked on channels in time order.
    Returns:
      h1 [B, 128, 128, 32], h2 [B, 64, 64, 256], reference image [B, 128, 128, 3], all
      float32: sum_n w_n * warp(x_n) / (sum_n w_n + 1e-5).
    """
    chex.assert_rank([ref_images, ref_sketches, driving], [5, 5, 4])
    chex.assert_equal_shape([ref_images, ref_sketches])
    b, n, h, w, _ = ref_images.shape
    chex.assert_shape(driving, (b, h, w, 3 * WINDOW))
    half = (h // 2, w // 2)
    dt = self.dtype

    x = jnp.concatenate([ref_images, ref_sketches], axis=-1).astype(dt)  # [B, N, H, W, 6]
    x = _unfold(_conv(32, 7, padding=3, dtype=dt, name="conv1")(_fold(x)), b)
    # The release runs BatchNorm once per reference: in training each reference has its
    # own batch statistics, hence the reference axis leads.
    h1 = nn.relu(GroupedBatchNorm(dt, name="conv1_bn")(x.swapaxes(0, 1), train=train)).swapaxes(0, 1)
    x = _unfold(_conv(256, 3, stride=2, padding=1, dtype=dt, name="conv2")(_fold(h1)), b)
    h2 = nn.relu(GroupedBatchNorm(dt, name="conv2_bn")(x.swapaxes(0, 1), train=train)).swapaxes(0, 1)

    algo = self.conv_algorithm
    tile_1, tile_2 = self.spade_output_tiles
    spade_1 = SPADE(256, dtype=dt, conv_algorithm=algo, output_tile=tile_1, name="spade_layer_1")
    spade_2 = SPADE(256, dtype=dt, conv_algorithm=algo, output_tile=tile_2, name="spade_layer_2")
    spade_4 = SPADE(64, dtype=dt, conv_algorithm=algo, name="spade_layer_4")
    if self.shared_modulation:
      driving_full = driving
      feat = h2  # [B, N, 64, 64, 256]: modulations broadcast over N
    else:
      driving_full = _fold(jnp.broadcast_to(driving[:, None], (b, n) + driving.shape[1:]))
      feat = _fold(h2)  # [B * N, 64, 64, 256]: one modulation per reference
    driving_half = ops.resize_nearest(driving_full, half)
    feat = spade_1.apply_modulations(feat, spade_1.modulations(driving_half))
    feat = spade_2.apply_modulations(feat, spade_2.modulations(driving_half))
    feat = ops.pixel_shuffle(feat.reshape((-1,) + feat.shape[-3:]), 2)
    if self.shared_modulation:
      feat = _unfold(feat, b)
    feat = spade_4.apply_modulations(feat, spade_4.modulations(driving_full))
    feat = feat.reshape((b * n,) + feat.shape[-3:])  # [B * N, 128, 128, 64]

    hidden = nn.relu(_conv(32, 7, padding=3, dtype=dt, name="conv_5_0")(feat))
    weight = nn.sigmoid(_conv(1, 7, padding=3, dtype=dt, name="conv_5_2")(hidden))
    wide = ops.at_least_float32(dt)
    weight = _unfold(weight.astype(wide), b)  # [B, N, H, W, 1]

    sources = (h1, h2, ref_images)
    if self.use_warping:
      # The flow is in pixels (tens of them): bfloat16's 8-bit mantissa would quantise it
      # to ~0.1 px, so this small conv (2 outputs) and the warp run in float32.
      flow = _conv(2, 7, padding=3, dtype=wide, name="conv_4")(feat.astype(wide))
      deformation = flow_to_deformation(flow)
      sources = tuple(_unfold(warp(_fold(s), deformation), b) for s in sources)
    sources = tuple(s.astype(wide) for s in sources)

    weight_half = _unfold(ops.resize_nearest(_fold(weight), half), b)
    denominator = jnp.sum(weight, axis=1) + 1e-5
    denominator_half = ops.resize_nearest(denominator, half)
    warped_h1, warped_h2, warped_ref = sources
    fused_h1 = jnp.sum(warped_h1 * weight, axis=1) / denominator
    fused_h2 = jnp.sum(warped_h2 * weight_half, axis=1) / denominator_half
    fused_ref = jnp.sum(warped_ref * weight, axis=1) / denominator
    return fused_h1, fused_h2, fused_ref


class TranslationNetwork(nn.Module):
  """Translation module: masked face + driving sketches + warped features (+ audio) -> face.

  Attributes:
    use_audio: False drops the audio encoder and both AdaIN blocks.
    dtype: compute dtype.
    conv_algorithm: how the SPADE/AdaIN blocks' 3x3 convolutions compute (`models.conv`).
  """

  use_audio: bool = True
  dtype: Any = jnp.float32
  conv_algorithm: Algorithm = "direct"

  @nn.compact
  def __call__(self, masked_face: Array, driving: Array, warped_ref: Array, warped_h1: Array,
               warped_h2: Array, mels: Array | None, *, train: bool) -> Array:
    """Generated face.

    Args:
      masked_face: [B, 128, 128, 3], lower half already zeroed.
      driving: [B, 128, 128, 15].
      warped_ref: [B, 128, 128, 3]; warped_h1: [B, 128, 128, 32]; warped_h2: [B, 64, 64, 256].
      mels: [B, 80, 16, 1] (ignored when use_audio is False).
    Returns:
      [B, 128, 128, 3] float32 in [0, 1].
    """
    chex.assert_rank([masked_face, driving, warped_ref, warped_h1, warped_h2], 4)
    dt = self.dtype
    x = jnp.concatenate([masked_face, driving], axis=-1).astype(dt)  # [B, H, W, 18]
    x = _conv(32, 7, padding=3, use_bias=False, dtype=dt, name="conv1")(x)
    x = nn.relu(GroupedBatchNorm(dt, name="conv1_bn")(x[None], train=train)[0])
    x = _conv(256, 3, stride=2, padding=1, use_bias=False, dtype=dt, name="conv2")(x)
    x = nn.relu(GroupedBatchNorm(dt, name="conv2_bn")(x[None], train=train)[0])

    audio = None
    if self.use_audio:
      if mels is None:
        raise ValueError("TranslationNetwork(use_audio=True) needs mels [B, 80, 16, 1]")
      chex.assert_shape(mels, (x.shape[0], 80, 16, 1))
      encoder = MelEncoder(final_activation="relu", name_prefix="audio_encoder", dtype=dt,
                           name="audio_encoder")
      nn.share_scope(self, encoder)  # official flat layout: translation/audio_encoder_<i>
      audio = encoder(mels, train=train)  # [B, 512]

    algo = self.conv_algorithm
    x = SPADE(256, dtype=dt, conv_algorithm=algo, name="spade_1")(x, warped_h2)
    if self.use_audio:
      x = AdaIN(256, dtype=dt, conv_algorithm=algo, name="adain_1")(x, audio)
    x = ops.pixel_shuffle(x, 2)  # official `pixel_suffle_1`, no params
    x = SPADE(64, dtype=dt, conv_algorithm=algo, name="spade_2")(x, warped_h1)
    if self.use_audio:
      x = AdaIN(64, dtype=dt, conv_algorithm=algo, name="adain_2")(x, audio)
    x = SPADE(64, dtype=dt, conv_algorithm=algo, name="spade_4")(x, warped_ref)
    x = nn.leaky_relu(x, 0.01)  # PyTorch's default slope here, not the blocks' 0.2
    x = _conv(3, 7, padding=3, use_bias=False, dtype=dt, name="conv_last")(x)
    return nn.sigmoid(x.astype(ops.at_least_float32(x.dtype)))


def mask_lower_half(face: Array) -> Array:
  """face: [B, H, W, 3] -> the same with rows H//2.. zeroed, as the release masks the target."""
  face = jnp.asarray(face)
  return face.at[:, face.shape[1] // 2:].set(0)


class Renderer(nn.Module):
  """Full renderer: `flow_module` (DenseFlowNetwork) then `translation` (TranslationNetwork).

  Attributes:
    use_warping: see DenseFlowNetwork.
    use_audio: see TranslationNetwork.
    shared_modulation: see DenseFlowNetwork (speed only; outputs equal).
    dtype: compute dtype (float32 or bfloat16); parameters stay float32.
    conv_algorithm: 'mixed' (Winograd for the wide 3x3 convolutions, and for all of them
      under differentiation), 'winograd' or 'direct' (XLA's own); speed only, outputs equal
      to float rounding. A config's 'auto' is resolved where the model is built
      (`models.registry.build`, `models.conv.resolve_algorithm`).
  """

  use_warping: bool = True
  use_audio: bool = True
  shared_modulation: bool = True
  dtype: Any = jnp.float32
  conv_algorithm: Algorithm = "direct"

  @nn.compact
  def __call__(self, face: Array, target_sketches: Array, ref_images: Array, ref_sketches: Array,
               mels: Array | None, *, train: bool) -> tuple[Array, Array]:
    """Renders the centre frame of a 5-frame window.

    Args:
      face: [B, 128, 128, 3], the target/template face (its lower half is masked here).
      target_sketches: [B, 5, 128, 128, 3], driving sketches in time order.
      ref_images: [B, N, 128, 128, 3]; ref_sketches: [B, N, 128, 128, 3].
      mels: [B, 80, 16, 1], the centre frame's mel window (None if use_audio is False).
    Returns:
      (generated [B, 128, 128, 3], warped_ref [B, 128, 128, 3]), float32, BGR in [0, 1].
    """
    # The networks are convolutional: the release's size is 128 (IMAGE_SIZE), and smaller
    # even sizes keep CPU smoke training and pipeline tests cheap.
    b, size = face.shape[0], face.shape[1]
    if size % 2:
      raise ValueError(f"renderer: image side must be even (h2 is half size), got {size}")
    chex.assert_shape(face, (b, size, size, 3))
    chex.assert_shape(target_sketches, (b, WINDOW, size, size, 3))
    chex.assert_shape([ref_images, ref_sketches], (b, None, size, size, 3))
    # Channel 3*t + c is sketch t's channel c, as the release's torch.cat over time.
    driving = jnp.moveaxis(target_sketches, 1, 3).reshape(b, size, size, 3 * WINDOW)
    warped_h1, warped_h2, warped_ref = DenseFlowNetwork(
        self.use_warping, self.shared_modulation, self.dtype, self.conv_algorithm,
        name="flow_module")(
            ref_images, ref_sketches, driving, train=train)
    generated = TranslationNetwork(self.use_audio, self.dtype, self.conv_algorithm,
                                   name="translation")(
        mask_lower_half(face), driving, warped_ref, warped_h1, warped_h2, mels, train=train)
    return generated, warped_ref
