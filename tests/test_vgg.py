"""VGG19 perceptual features: Flax vs the PyTorch mirror with converted random weights."""

import jax
import jax.numpy as jnp
import numpy as np
import torch

from ip_lap_jax.convert import state_dict_to_variables
from ip_lap_jax.models.vgg import PERCEPTUAL_LAYERS, VGG19Features
from torch_mirror.vgg import PerceptualNetworkTorch, vgg19_conv_indices


def he_init_(module: torch.nn.Module, seed: int) -> None:
  """He-normal weights and small random biases, so relu_5_1 is not vanishingly small."""
  gen = torch.Generator().manual_seed(seed)
  for m in module.modules():
    if isinstance(m, torch.nn.Conv2d):
      fan_in = m.weight[0].numel()
      with torch.no_grad():
        m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
        m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.05)


def converted_vgg(seed: int = 0) -> tuple[PerceptualNetworkTorch, dict]:
  net = PerceptualNetworkTorch().eval()
  he_init_(net, seed)
  template = jax.eval_shape(VGG19Features().init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  return net, state_dict_to_variables(net.state_dict(), template)


def test_param_tree_holds_every_official_conv():
  template = jax.eval_shape(VGG19Features().init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  names = set(template['params'])
  assert names == {f'network_{i}' for i in vgg19_conv_indices()}
  assert template['params']['network_34']['kernel'].shape == (3, 3, 512, 512)


def test_features_match_torch_mirror():
  net, variables = converted_vgg(seed=1)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 128, 128, 3)).astype(np.float32)
  with torch.no_grad():
    expected = net(torch.from_numpy(x.transpose(0, 3, 1, 2)))
  got = jax.jit(VGG19Features().apply)(variables, jnp.asarray(x))
  assert set(got) == set(PERCEPTUAL_LAYERS)
  for name in PERCEPTUAL_LAYERS:
    want = expected[name].numpy().transpose(0, 2, 3, 1)
    assert got[name].shape == want.shape, name
    # The comparison only means something if the feature is far from zero.
    assert np.abs(want).max() > 0.1, name
    np.testing.assert_allclose(np.asarray(got[name]), want, rtol=0, atol=1e-4, err_msg=name)
