"""Each JAX loss vs the PyTorch mirror of the release's loss: values and input gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ip_lap_jax.training import losses
from torch_mirror import losses as tl
from test_vgg import converted_vgg

VALUE_RTOL = 1e-5
GRAD_RTOL = 1e-5


def rel_err(got, want) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def nhwc_to_torch(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).requires_grad_(True)


def test_landmark_loss_matches_release():
  rng = np.random.default_rng(0)
  b, t = 3, 5
  pred = rng.uniform(size=(b, t, 57, 2)).astype(np.float32)
  gt = rng.uniform(size=(b, t, 57, 2)).astype(np.float32)

  # The release works on (B*T, 2, 57).
  def to_release(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 1, 3, 2).reshape(b * t, 2, 57)))

  tp = to_release(pred).requires_grad_(True)
  total_t, l1_t, vel_t = tl.landmark_loss_torch(tp, to_release(gt), t)
  total_t.backward()
  grad_t = tp.grad.numpy().reshape(b, t, 2, 57).transpose(0, 1, 3, 2)

  (total, parts), grad = jax.value_and_grad(losses.landmark_loss, has_aux=True)(
      jnp.asarray(pred), jnp.asarray(gt))
  assert rel_err(total, total_t.item()) <= VALUE_RTOL
  assert rel_err(parts['l1'], l1_t.item()) <= VALUE_RTOL
  assert rel_err(parts['velocity'], vel_t.item()) <= VALUE_RTOL
  assert rel_err(grad, grad_t) <= GRAD_RTOL


def test_velocity_loss_ignores_constant_offsets_over_time():
  rng = np.random.default_rng(1)
  gt = jnp.asarray(rng.uniform(size=(2, 5, 57, 2)).astype(np.float32))
  # A fixed shift of every frame keeps the velocities: only eps is left.
  vel = losses.velocity_loss(gt + 0.3, gt)
  np.testing.assert_allclose(float(vel), 1e-6 * np.sqrt(114), rtol=1e-2)
  # A jump in one frame changes two consecutive velocities.
  bumped = gt.at[:, 2].add(0.1)
  assert float(losses.velocity_loss(bumped, gt)) > 0.05


def noise_and_smooth_images(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
  """[2, size, size, 3] noise and smooth images in [0, 1].

  Two noise images give near-equal Gram entries in the deep layers, whose L1 sign then
  flips under float32 rounding (PyTorch float32 vs float64 already differ by ~2e-5 in
  the style gradient); a smooth target keeps the Gram differences well away from 0.
  """
  inp = np.random.default_rng(3).uniform(size=(2, size, size, 3))
  yy, xx = np.mgrid[0:size, 0:size] / (size - 1.0)
  tgt = np.stack([np.stack([np.sin(3 * xx + b), np.cos(2 * yy - b), 2 * xx * yy - 1], -1)
                  for b in range(2)]) * 0.5 + 0.5
  return inp.astype(np.float32), tgt.astype(np.float32)


@pytest.fixture(scope='module')
def perceptual_case():
  """Torch and JAX perceptual losses, with and without style, values and input gradients.

  One jitted JAX program computes both variants (their VGG passes are shared), which
  keeps the compile time of this CPU test down.
  """
  net, variables = converted_vgg(seed=2)
  loss_t = tl.PerceptualLossTorch(num_scales=2)
  loss_t.model.load_state_dict(net.state_dict())
  inp, tgt = noise_and_smooth_images()

  def both(i, t):
    return jnp.stack([losses.perceptual_loss(variables, i, t, use_style=False),
                      losses.perceptual_loss(variables, i, t, use_style=True)])

  @jax.jit
  def run(i, t):
    same = losses.perceptual_loss(variables, t, t, use_style=True)
    return both(i, t), jax.jacrev(both, argnums=(0, 1))(i, t), same

  values, (grad_i, grad_t), same = run(jnp.asarray(inp), jnp.asarray(tgt))
  case = {'same': float(same)}
  for k, use_style in enumerate((False, True)):
    ti, tt = nhwc_to_torch(inp), nhwc_to_torch(tgt)
    value_t = loss_t(ti, tt, use_style_loss=use_style,
                     weight_style_to_perceptual=250. if use_style else 0.)
    value_t.backward()
    case[use_style] = {
        'torch_value': value_t.item(), 'torch_grad': ti.grad.numpy().transpose(0, 2, 3, 1),
        'value': float(values[k]), 'grad_inp': np.asarray(grad_i[k]),
        'grad_target': np.asarray(grad_t[k])}
  return case


@pytest.mark.parametrize('use_style', [False, True])
def test_perceptual_loss_matches_release(perceptual_case, use_style):
  case = perceptual_case[use_style]
  assert rel_err(case['value'], case['torch_value']) <= VALUE_RTOL
  assert rel_err(case['grad_inp'], case['torch_grad']) <= GRAD_RTOL
  assert np.abs(case['grad_inp']).max() > 0.0
  # The release detaches the target features.
  assert np.abs(case['grad_target']).max() == 0.0


def test_style_term_adds_to_the_loss(perceptual_case):
  assert perceptual_case[True]['value'] > perceptual_case[False]['value'] > 0.0
  assert perceptual_case['same'] == 0.0


def test_perceptual_losses_share_the_target_pass():
  """Scoring two inputs in one call (the target's VGG features computed once) gives each
  input the loss and gradient of its own `perceptual_loss` call."""
  _, variables = converted_vgg(seed=4)
  inp, tgt = noise_and_smooth_images()
  other = 0.5 * inp[::-1] + 0.25

  def separate(a, b, t):
    return jnp.stack([losses.perceptual_loss(variables, a, t, use_style=False),
                      losses.perceptual_loss(variables, b, t, use_style=True)])

  def joint(a, b, t):
    return jnp.stack(losses.perceptual_losses(variables, [a, b], t, use_style=[False, True]))

  def values_and_grads(fn):
    # a only reaches the first loss and b the second: one weighted gradient holds both.
    def weighted(*a):
      values = fn(*a)
      return values @ jnp.array([1.0, 3.0]), values
    return jax.jit(jax.value_and_grad(weighted, argnums=(0, 1), has_aux=True))

  args = tuple(map(jnp.asarray, (inp, other, tgt)))
  (_, want), want_grads = values_and_grads(separate)(*args)
  (_, got), got_grads = values_and_grads(joint)(*args)
  assert float(want[1]) > float(want[0]) > 0.0
  assert rel_err(np.asarray(got), np.asarray(want)) <= VALUE_RTOL
  for g, w in zip(got_grads, want_grads):
    assert np.abs(np.asarray(w)).max() > 0.0
    assert rel_err(np.asarray(g), np.asarray(w)) <= GRAD_RTOL
  with pytest.raises(ValueError, match='2 inputs but 1 use_style'):
    losses.perceptual_losses(variables, [inp, other], tgt, use_style=[True])


def _disc_outputs(rng, batch=2):
  """Random tensors with the discriminator's output shapes at 32x32 input."""
  shapes = [[(17, 64), (9, 128), (5, 256), (6, 512), (7, 1)],
            [(9, 64), (5, 128), (3, 256), (4, 512), (5, 1)]]
  return [[rng.normal(size=(batch, s, s, c)).astype(np.float32) for s, c in scale]
          for scale in shapes]


def _to_torch_nested(outputs):
  return [[nhwc_to_torch(x) for x in scale] for scale in outputs]


def _grads_torch(nested):
  return [[np.zeros(x.shape, np.float32).transpose(0, 2, 3, 1) if x.grad is None
           else x.grad.numpy().transpose(0, 2, 3, 1) for x in scale] for scale in nested]


def _assert_nested_grads(got, want):
  for g_scale, w_scale in zip(got, want):
    for g, w in zip(g_scale, w_scale):
      assert rel_err(g, w) <= GRAD_RTOL


@pytest.mark.parametrize('target_is_real', [False, True])
def test_lsgan_loss_matches_release(target_is_real):
  outs = _disc_outputs(np.random.default_rng(5))
  touts = _to_torch_nested(outs)
  value_t = tl.lsgan_loss_torch(touts, target_is_real)
  value_t.backward()
  jouts = jax.tree.map(jnp.asarray, outs)
  value, grads = jax.value_and_grad(losses.lsgan_loss)(jouts, target_is_real)
  assert rel_err(value, value_t.item()) <= VALUE_RTOL
  # Only the prediction maps get a gradient.
  for scale, tscale in zip(grads, _grads_torch(touts)):
    assert rel_err(scale[-1], tscale[-1]) <= GRAD_RTOL
    assert all(float(jnp.abs(g).max()) == 0.0 for g in scale[:-1])


def test_feature_matching_loss_matches_release():
  rng = np.random.default_rng(6)
  fake, real = _disc_outputs(rng), _disc_outputs(rng)
  tfake, treal = _to_torch_nested(fake), _to_torch_nested(real)
  value_t = tl.feature_matching_loss_torch(tfake, treal, n_layers=3)
  value_t.backward()
  value, (g_fake, g_real) = jax.value_and_grad(losses.feature_matching_loss, argnums=(0, 1))(
      jax.tree.map(jnp.asarray, fake), jax.tree.map(jnp.asarray, real))
  assert rel_err(value, value_t.item()) <= VALUE_RTOL
  want = _grads_torch(tfake)
  for g_scale, w_scale in zip(g_fake, want):
    for g, w in zip(g_scale[:-1], w_scale[:-1]):
      assert rel_err(g, w) <= GRAD_RTOL
    assert float(jnp.abs(g_scale[-1]).max()) == 0.0  # the prediction map is not matched
  assert all(float(jnp.abs(g).max()) == 0.0 for s in g_real for g in s)


def test_discriminator_loss_matches_release():
  rng = np.random.default_rng(7)
  fake, real = _disc_outputs(rng), _disc_outputs(rng)
  want = 0.5 * (tl.lsgan_loss_torch(_to_torch_nested(fake), False)
                + tl.lsgan_loss_torch(_to_torch_nested(real), True)).item()
  got = losses.discriminator_loss(jax.tree.map(jnp.asarray, fake), jax.tree.map(jnp.asarray, real))
  assert rel_err(got, want) <= VALUE_RTOL


@pytest.mark.parametrize('epoch', [0, 25, 26, 40])
def test_renderer_generator_loss_schedule(epoch):
  warp, gen, gan, fm = 0.7, 1.3, 0.9, 2.1
  want = tl.generator_loss_torch(*(torch.tensor(v) for v in (warp, gen, gan, fm)), epoch).item()
  got = losses.renderer_generator_loss(*(jnp.float32(v) for v in (warp, gen, gan, fm)), epoch)
  assert rel_err(got, want) <= VALUE_RTOL
  traced = jax.jit(losses.renderer_generator_loss)(*(jnp.float32(v) for v in (warp, gen, gan, fm)),
                                                   jnp.int32(epoch))
  assert rel_err(traced, want) <= VALUE_RTOL


def test_renderer_generator_loss_start_epoch_is_configurable():
  terms = [jnp.float32(v) for v in (0.7, 1.3, 0.9, 2.1)]
  assert float(losses.renderer_generator_loss(*terms, 5, gan_start_epoch=4)) > 2.5 * 0.7 + 1.0
  assert float(losses.renderer_generator_loss(*terms, 4, gan_start_epoch=4)) == pytest.approx(2.5 * 0.7)
