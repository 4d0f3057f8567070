"""ConvBN and MelEncoder: shapes, parameter names, activations, and parity with PyTorch."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ip_lap_jax.models.layers import ConvBN, MelEncoder


@pytest.mark.parametrize(
    "shape,kernel,stride,pad,features",
    [((2, 131, 2), (3,), (2,), 1, 4), ((2, 74, 8), (3,), (1,), 0, 16),
     ((2, 80, 16, 1), (3, 3), (3, 2), 1, 8), ((1, 27, 16, 4), (3, 3), (3, 1), 1, 4)],
)
def test_convbn_output_size_matches_pytorch_formula(shape, kernel, stride, pad, features):
  x = jnp.ones(shape)
  m = ConvBN(features, kernel, stride, padding=pad)
  variables = m.init(jax.random.key(0), x, train=False)
  y = m.apply(variables, x, train=False)
  spatial = tuple((n + 2 * pad - k) // s + 1 for n, k, s in zip(shape[1:-1], kernel, stride))
  assert y.shape == (shape[0], *spatial, features)
  assert set(variables["params"]) == {"conv_block_0", "conv_block_1"}
  assert set(variables["batch_stats"]["conv_block_1"]) == {"mean", "var"}


def test_convbn_matches_torch_in_eval_and_train():
  rng = np.random.default_rng(0)
  conv = torch.nn.Conv2d(6, 6, 3, (3, 2), 1)
  bn = torch.nn.BatchNorm2d(6)
  with torch.no_grad():
    bn.weight.uniform_(0.5, 1.5)
    bn.bias.uniform_(-0.5, 0.5)
    bn.running_mean.uniform_(-0.3, 0.3)
    bn.running_var.uniform_(0.5, 2.0)
  x = rng.standard_normal((2, 6, 12, 10)).astype(np.float32)
  variables = {
      "params": {
          "conv_block_0": {"kernel": jnp.asarray(conv.weight.detach().numpy().transpose(2, 3, 1, 0)),
                           "bias": jnp.asarray(conv.bias.detach().numpy())},
          "conv_block_1": {"scale": jnp.asarray(bn.weight.detach().numpy()),
                           "bias": jnp.asarray(bn.bias.detach().numpy())},
      },
      "batch_stats": {"conv_block_1": {"mean": jnp.asarray(bn.running_mean.numpy()),
                                       "var": jnp.asarray(bn.running_var.numpy())}},
  }
  m = ConvBN(6, (3, 3), (3, 2), padding=1, activation="tanh")
  x_nhwc = jnp.asarray(x.transpose(0, 2, 3, 1))
  # Eval: running statistics.
  conv.eval(); bn.eval()
  want = torch.tanh(bn(conv(torch.from_numpy(x)))).detach().numpy().transpose(0, 2, 3, 1)
  got = m.apply(variables, x_nhwc, train=False)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
  # Train: batch statistics and the running-stat update (PyTorch momentum 0.1, unbiased var).
  conv.train(); bn.train()
  want = torch.tanh(bn(conv(torch.from_numpy(x)))).detach().numpy().transpose(0, 2, 3, 1)
  got, updates = m.apply(variables, x_nhwc, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
  np.testing.assert_allclose(np.asarray(updates["batch_stats"]["conv_block_1"]["mean"]),
                             bn.running_mean.numpy(), atol=1e-5)


def test_convbn_residual_requires_equal_shapes():
  m = ConvBN(8, (3,), (2,), padding=1, residual=True)
  with pytest.raises(AssertionError):
    m.init(jax.random.key(0), jnp.ones((1, 10, 8)), train=False)


@pytest.mark.parametrize("final_activation", ["tanh", "relu"])
def test_mel_encoder_shapes_names_and_activation(final_activation):
  mels = jax.random.normal(jax.random.key(1), (3, 80, 16, 1))
  m = MelEncoder(final_activation=final_activation, name_prefix="audio_encoder")
  variables = m.init(jax.random.key(0), mels, train=False)
  assert set(variables["params"]) == {f"audio_encoder_{i}" for i in range(13)}
  assert variables["params"]["audio_encoder_3"]["conv_block_0"]["kernel"].shape == (3, 3, 32, 64)
  assert variables["params"]["audio_encoder_12"]["conv_block_0"]["kernel"].shape == (1, 1, 512, 512)
  out, _ = m.apply(variables, mels, train=True, mutable=["batch_stats"])
  assert out.shape == (3, 512)
  if final_activation == "relu":
    assert float(out.min()) >= 0.0
  else:
    assert float(out.min()) < 0.0 and float(jnp.abs(out).max()) <= 1.0


def test_mel_encoder_shared_scope_is_flat():
  class Parent(nn.Module):
    @nn.compact
    def __call__(self, x):
      enc = MelEncoder(name_prefix="audio_encoder", final_activation="relu", name="audio_encoder")
      nn.share_scope(self, enc)
      return enc(x, train=False)

  shapes = jax.eval_shape(Parent().init, jax.random.key(0), jnp.ones((1, 80, 16, 1)))
  assert "audio_encoder_0" in shapes["params"]
  assert "audio_encoder" not in shapes["params"]
