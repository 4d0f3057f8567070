"""pix2pixHD multi-scale discriminator: Flax vs the PyTorch mirror with converted weights."""

import jax
import jax.numpy as jnp
import numpy as np
import torch

from ip_lap_jax.convert import state_dict_to_variables
from ip_lap_jax.models.discriminator import MultiscaleDiscriminator
from torch_mirror.discriminator import MultiscaleDiscriminatorTorch


def converted_discriminator(seed: int, size: int = 64) -> tuple[MultiscaleDiscriminatorTorch, dict]:
  torch.manual_seed(seed)
  net = MultiscaleDiscriminatorTorch().eval()
  with torch.no_grad():
    for p in net.parameters():
      if p.ndim == 1:  # random biases so a wrong bias mapping shows up
        p.copy_(torch.randn_like(p) * 0.1)
  template = jax.eval_shape(MultiscaleDiscriminator().init, jax.random.key(0),
                            jnp.zeros((1, size, size, 3)))
  return net, state_dict_to_variables(net.state_dict(), template)


def test_official_key_names_and_shapes():
  net = MultiscaleDiscriminatorTorch()
  keys = set(net.state_dict())
  expected = {f'scale{s}_layer{j}.0.{leaf}' for s in range(2) for j in range(5)
              for leaf in ('weight', 'bias')}
  assert keys == expected
  template = jax.eval_shape(MultiscaleDiscriminator().init, jax.random.key(0),
                            jnp.zeros((1, 64, 64, 3)))
  assert set(template['params']) == {f'scale{s}_layer{j}_0' for s in range(2) for j in range(5)}
  assert template['params']['scale1_layer3_0']['kernel'].shape == (4, 4, 256, 512)
  assert template['params']['scale0_layer4_0']['kernel'].shape == (4, 4, 512, 1)


def test_outputs_match_torch_mirror():
  net, variables = converted_discriminator(seed=3)
  x = np.random.default_rng(1).uniform(size=(2, 64, 64, 3)).astype(np.float32)
  with torch.no_grad():
    expected = net(torch.from_numpy(x.transpose(0, 3, 1, 2)))
  got = jax.jit(MultiscaleDiscriminator().apply)(variables, jnp.asarray(x))
  assert len(got) == len(expected) == 2
  for i, (g_scale, e_scale) in enumerate(zip(got, expected)):
    assert len(g_scale) == len(e_scale) == 5
    for j, (g, e) in enumerate(zip(g_scale, e_scale)):
      want = e.numpy().transpose(0, 2, 3, 1)
      assert g.shape == want.shape, (i, j)
      assert np.abs(want).max() > 0.05, (i, j)
      np.testing.assert_allclose(np.asarray(g), want, rtol=0, atol=1e-4, err_msg=f'scale {i} layer {j}')


def test_scale_pairing_follows_release():
  """The full-resolution outputs must come from the `scale1_*` weights (num_d = 2)."""
  net, variables = converted_discriminator(seed=4)
  x = jnp.asarray(np.random.default_rng(2).uniform(size=(1, 64, 64, 3)).astype(np.float32))
  params = dict(variables['params'])
  swapped = dict(params)
  for j in range(5):
    swapped[f'scale0_layer{j}_0'], swapped[f'scale1_layer{j}_0'] = (
        params[f'scale1_layer{j}_0'], params[f'scale0_layer{j}_0'])
  model = MultiscaleDiscriminator()
  a = model.apply({'params': params}, x)
  b = model.apply({'params': swapped}, x)
  assert np.abs(np.asarray(a[0][-1]) - np.asarray(b[0][-1])).max() > 1e-3
  with torch.no_grad():
    first_scale_map = net.scale1_layer0(torch.from_numpy(np.array(x).transpose(0, 3, 1, 2).copy()))
  np.testing.assert_allclose(np.asarray(a[0][0]), first_scale_map.numpy().transpose(0, 2, 3, 1),
                             rtol=0, atol=1e-4)
