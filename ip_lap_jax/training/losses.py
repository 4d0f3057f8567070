"""Training losses of the release, in JAX (the release's training scripts).

- `landmark_loss`: L1 + velocity loss of train_landmarks_generator.py.
- `perceptual_loss`: the renderer's VGG19 L1 perceptual loss (2 scales) with the Gram
  style term, as `PerceptualLoss` in models/video_renderer.py, including its quirk of
  mapping [0, 1] images through (x + 1) / 2 before the ImageNet normalisation;
  `perceptual_losses` scores several inputs against one target in one VGG pass.
- `lsgan_loss`, `feature_matching_loss`, `discriminator_loss`,
  `renderer_generator_loss`: the GAN terms and weighting of train_video_renderer.py.

Every function returns float32 scalars; parity with the PyTorch originals is tested in
tests/test_losses.py against ip_lap_jax/torch_mirror/losses.py.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import chex
import jax
import jax.numpy as jnp

from ip_lap_jax import ops
from ip_lap_jax.models.vgg import PERCEPTUAL_LAYERS, VGG19Features

Array = jax.Array
DiscOutputs = Sequence[Sequence[Array]]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STYLE_WEIGHT = 250.0
# train_video_renderer.py: the generator loss adds GAN terms only when global_epoch > 25.
GAN_START_EPOCH = 25
# torch.nn.functional.pairwise_distance adds eps to the difference before the norm.
_PAIRWISE_EPS = 1e-6


def _l1(a: Array, b: Array) -> Array:
  """Mean absolute difference, in float32 (float64 for float64 inputs)."""
  wide = ops.at_least_float32(jnp.result_type(a, b))
  d = a.astype(wide) - b.astype(wide)
  # d * sign(d) has PyTorch's L1 gradient sign(d), which is 0 at a tie; jnp.abs has 1.
  return jnp.mean(d * jax.lax.stop_gradient(jnp.sign(d)))


# ----------------------------------------------------------------------------- landmarks

def velocity_loss(pred: Array, gt: Array) -> Array:
  """Mean over (b, t) of ||(pred[t+1] - pred[t]) - (gt[t+1] - gt[t]) + 1e-6||_2.

  Args:
    pred, gt: [B, T, 57, 2]; the norm runs over all 114 coordinates of a frame.
  Returns:
    scalar.
  """
  chex.assert_equal_shape((pred, gt))
  chex.assert_rank(pred, 4)
  b, t = pred.shape[:2]
  pred = pred.astype(jnp.float32).reshape(b, t, -1)
  gt = gt.astype(jnp.float32).reshape(b, t, -1)
  diff = (pred[:, 1:] - pred[:, :-1]) - (gt[:, 1:] - gt[:, :-1]) + _PAIRWISE_EPS
  return jnp.mean(jnp.sqrt(jnp.sum(jnp.square(diff), axis=-1)))


def landmark_loss(pred: Array, gt: Array) -> tuple[Array, dict[str, Array]]:
  """Landmark generator loss: L1(pred, gt) + velocity loss (weights 1, 1).

  Args:
    pred, gt: [B, T, 57, 2] content landmarks (x, y).
  Returns:
    (loss, {'l1': ..., 'velocity': ...}), all scalars.
  """
  chex.assert_equal_shape((pred, gt))
  chex.assert_rank(pred, 4)
  chex.assert_axis_dimension(pred, 3, 2)
  l1 = _l1(pred, gt)
  vel = velocity_loss(pred, gt)
  return l1 + vel, {'l1': l1, 'velocity': vel}


# ---------------------------------------------------------------------------- perceptual

def imagenet_normalize(x: Array) -> Array:
  """[B, H, W, 3] -> ((x + 1) / 2 - mean) / std, the release's normalisation (see module doc)."""
  wide = ops.at_least_float32(x.dtype)
  mean = jnp.asarray(IMAGENET_MEAN, wide)
  std = jnp.asarray(IMAGENET_STD, wide)
  return ((x.astype(wide) + 1.0) / 2.0 - mean) / std


def gram_matrix(f: Array) -> Array:
  """[B, H, W, C] -> [B, C, C] = f^T f / (H * W * C), in float32."""
  chex.assert_rank(f, 4)
  b, h, w, c = f.shape
  f = f.astype(ops.at_least_float32(f.dtype)).reshape(b, h * w, c)
  gram = jnp.einsum('bnc,bnd->bcd', f, f, precision=jax.lax.Precision.HIGHEST)
  return gram / (h * w * c)


def perceptual_losses(vgg_variables: Mapping[str, Any], inputs: Sequence[Array], target: Array,
                      *, use_style: Sequence[bool], style_weight: float = STYLE_WEIGHT,
                      num_scales: int = 2, layers: Sequence[str] = PERCEPTUAL_LAYERS,
                      dtype: Any = jnp.float32) -> list[Array]:
  """`perceptual_loss` of several inputs against one target, one VGG pass per scale.

  The renderer scores its warped and its generated face against the same ground truth;
  the target's features are computed once for both (the release computes them twice).

  Args:
    vgg_variables, target, style_weight, num_scales, layers, dtype: as `perceptual_loss`.
    inputs: images [B, H, W, 3], each of target's shape.
    use_style: per input, whether its loss adds the Gram style term.
  Returns:
    one scalar float32 per input.
  """
  if len(inputs) != len(use_style):
    raise ValueError(f'{len(inputs)} inputs but {len(use_style)} use_style flags')
  chex.assert_equal_shape((*inputs, target))
  chex.assert_rank(target, 4)
  chex.assert_axis_dimension(target, 3, 3)
  vgg = VGG19Features(dtype=dtype)
  vgg_variables = jax.lax.stop_gradient(vgg_variables)
  batch = target.shape[0]
  images = jnp.concatenate([imagenet_normalize(x) for x in inputs]
                           + [imagenet_normalize(jax.lax.stop_gradient(target))], axis=0)
  zero = jnp.zeros((), jnp.float32)
  content, style = [zero] * len(inputs), [zero] * len(inputs)
  for scale in range(num_scales):
    feats = vgg.apply(vgg_variables, images)
    for name in layers:
      ft = jax.lax.stop_gradient(feats[name][-batch:])
      gram_t = gram_matrix(ft) if scale == 0 and any(use_style) else None
      for i, styled in enumerate(use_style):
        fi = feats[name][i * batch:(i + 1) * batch]
        content[i] = content[i] + _l1(fi, ft)
        if styled and scale == 0:
          style[i] = style[i] + _l1(gram_matrix(fi), gram_t)
    if scale != num_scales - 1:
      h, w = images.shape[1:3]
      images = ops.resize_bilinear(images, (h // 2, w // 2))
  return [c + style_weight * s if styled else c
          for c, s, styled in zip(content, style, use_style)]


def perceptual_loss(vgg_variables: Mapping[str, Any], inp: Array, target: Array, *,
                    use_style: bool, style_weight: float = STYLE_WEIGHT,
                    num_scales: int = 2, layers: Sequence[str] = PERCEPTUAL_LAYERS,
                    dtype: Any = jnp.float32) -> Array:
  """VGG19 perceptual loss of the release (weight 1 per layer, L1, `num_scales` scales).

  loss = sum_{scale, layer} L1(phi(inp), phi(target)) + style_weight * sum_layer
  L1(G(phi(inp)), G(phi(target))) at scale 0 only (when use_style). Each next scale
  shrinks both images by 0.5 (bilinear, align_corners False, no antialias). The VGG
  weights and the target branch carry no gradient, as in the release.

  Args:
    vgg_variables: {'params': ...} of `VGG19Features`.
    inp: [B, H, W, 3] the generated (or warped) image, BGR in [0, 1] as the release feeds it.
    target: [B, H, W, 3] the ground truth.
    use_style: add the Gram style term.
    style_weight: its weight (250 in the release).
    num_scales: number of scales (2 in the release).
    layers: VGG19 feature names used.
    dtype: VGG compute dtype.
  Returns:
    scalar float32.
  """
  return perceptual_losses(vgg_variables, [inp], target, use_style=[use_style],
                           style_weight=style_weight, num_scales=num_scales, layers=layers,
                           dtype=dtype)[0]


# ---------------------------------------------------------------------------------- GAN

def lsgan_loss(disc_outputs: DiscOutputs, target_is_real: bool) -> Array:
  """LSGAN: sum over scales of mean((prediction map - label)^2), label 1 (real) or 0 (fake).

  Args:
    disc_outputs: `MultiscaleDiscriminator` output; the last entry per scale is the map.
  """
  label = 1.0 if target_is_real else 0.0
  loss = jnp.zeros((), jnp.float32)
  for per_scale in disc_outputs:
    pred = per_scale[-1].astype(jnp.float32)
    loss = loss + jnp.mean(jnp.square(pred - label))
  return loss


def feature_matching_loss(fake_outputs: DiscOutputs, real_outputs: DiscOutputs) -> Array:
  """pix2pixHD feature matching with the release's weights.

  sum over scales i and intermediate layers j (all but the prediction map) of
  (1 / num_d) * (4 / (n_layers + 1)) * 2.5 * L1(fake[i][j], stop_gradient(real[i][j])),
  where n_layers + 2 = layers per scale (0.5 * 1.0 * 2.5 for the release's 2 x 5).
  """
  if len(fake_outputs) != len(real_outputs):
    raise ValueError(f'{len(fake_outputs)} fake scales vs {len(real_outputs)} real scales')
  num_d = len(fake_outputs)
  loss = jnp.zeros((), jnp.float32)
  for fake, real in zip(fake_outputs, real_outputs):
    if len(fake) != len(real):
      raise ValueError(f'{len(fake)} fake layers vs {len(real)} real layers')
    n_layers = len(fake) - 2
    weight = (1.0 / num_d) * (4.0 / (n_layers + 1)) * 2.5
    for f, r in zip(fake[:-1], real[:-1]):
      chex.assert_equal_shape((f, r))
      loss = loss + weight * _l1(f, jax.lax.stop_gradient(r))
  return loss


def discriminator_loss(fake_outputs: DiscOutputs, real_outputs: DiscOutputs) -> Array:
  """0.5 * (LSGAN(D(fake), 0) + LSGAN(D(real), 1)); `fake_outputs` must come from
  D(stop_gradient(generated)), as the release detaches the generator output here."""
  return 0.5 * (lsgan_loss(fake_outputs, False) + lsgan_loss(real_outputs, True))


def renderer_phase_loss(warp_loss: Array, gen_loss: Array, gan_loss: Array, fm_loss: Array,
                        gan_phase: bool) -> Array:
  """Renderer loss of a known phase: 2.5*warp (warp-only phase) or
  2.5*warp + 4*gen + 0.25*GAN + FM (GAN phase); scalars in, scalar out.

  Args:
    warp_loss: perceptual(warped reference, gt), no style.
    gen_loss: perceptual(generated, gt) with style.
    gan_loss: lsgan_loss(D(generated), True).
    fm_loss: feature_matching_loss(D(generated), D(gt)).
    gan_phase: a Python bool (the train step is compiled once per phase).
  """
  if gan_phase:
    return 2.5 * warp_loss + 4.0 * gen_loss + 0.1 * 2.5 * gan_loss + fm_loss
  return 2.5 * warp_loss


def renderer_generator_loss(warp_loss: Array, gen_loss: Array, gan_loss: Array,
                            fm_loss: Array, epoch: int | Array,
                            gan_start_epoch: int = GAN_START_EPOCH) -> Array:
  """`renderer_phase_loss` with the release's phase rule: the GAN phase starts once
  epoch > gan_start_epoch (release: 25). `epoch` counts from 0 and may be traced."""
  terms = (warp_loss, gen_loss, gan_loss, fm_loss)
  return jnp.where(jnp.asarray(epoch) > gan_start_epoch, renderer_phase_loss(*terms, True),
                   renderer_phase_loss(*terms, False))
