"""Landmark generator: parity with the PyTorch mirror through the real checkpoint path,
train mode, bfloat16 compute, the LSTM variant, and gradient parity of the landmark loss."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ip_lap_jax import convert
from ip_lap_jax import conversion
from ip_lap_jax.models import registry, store
from ip_lap_jax.training.losses import landmark_loss
from ip_lap_jax.models.landmark_generator import FusionLSTM, LandmarkGenerator
from torch_mirror.common import randomize_batchnorm_stats, save_official_checkpoint
from torch_mirror.landmark_generator import Landmark_generator

B, T, NL = 2, 5, 15


@pytest.fixture(scope="module")
def mirror() -> Landmark_generator:
  torch.manual_seed(0)
  model = randomize_batchnorm_stats(Landmark_generator(), seed=1)
  with torch.no_grad():  # non-trivial LayerNorm affine params and modality rows
    for name, p in model.named_parameters():
      if "norm" in name.lower() and p.ndim == 1:
        p.add_(0.1 * torch.randn_like(p))
  return model.eval()


@pytest.fixture(scope="module")
def inputs_torch() -> tuple[np.ndarray, ...]:
  """Release layouts: (B,T,1,80,16), (B,T,2,74), (B,Nl,2,74), (B,Nl,2,57)."""
  rng = np.random.default_rng(0)
  return (rng.uniform(-4, 4, (B, T, 1, 80, 16)).astype(np.float32),
          rng.random((B, T, 2, 74)).astype(np.float32),
          rng.random((B, NL, 2, 74)).astype(np.float32),
          rng.random((B, NL, 2, 57)).astype(np.float32))


def to_jax_layout(mels, pose, ref_pose, ref_content) -> tuple[jax.Array, ...]:
  return (jnp.asarray(mels.transpose(0, 1, 3, 4, 2)), jnp.asarray(pose.transpose(0, 1, 3, 2)),
          jnp.asarray(ref_pose.transpose(0, 1, 3, 2)),
          jnp.asarray(ref_content.transpose(0, 1, 3, 2)))


@pytest.fixture(scope="module")
def inputs(inputs_torch) -> tuple[jax.Array, ...]:
  return to_jax_layout(*inputs_torch)


@pytest.fixture(scope="module")
def torch_output(mirror, inputs_torch) -> np.ndarray:
  """Mirror output as [B, T, 57, 2]."""
  with torch.no_grad():
    out = mirror(*map(torch.from_numpy, inputs_torch)).numpy()  # (B*T, 2, 57)
  return out.transpose(0, 2, 1).reshape(B, T, 57, 2)


@pytest.fixture(scope="module")
def variables(mirror) -> dict:
  return conversion.state_dict_to_variables(mirror.state_dict(),
                                         registry.official_template("landmark_generator"))


@jax.jit
def apply_eval(variables, *args):
  return LandmarkGenerator().apply(variables, *args, train=False)


@pytest.mark.parametrize("data_parallel_prefix,training_extras", [(False, False), (True, True)])
def test_parity_through_official_checkpoint(mirror, inputs, torch_output, tmp_path,
                                            data_parallel_prefix, training_extras):
  src = tmp_path / "landmarkgenerator_checkpoint.pth"
  save_official_checkpoint(mirror, src, data_parallel_prefix=data_parallel_prefix,
                           training_extras=training_extras)
  provenance = convert.convert_checkpoint(src, tmp_path / "converted")
  assert provenance["model"] == "landmark_generator"
  assert provenance["data_parallel_prefix"] is data_parallel_prefix
  loaded = store.load_tree(tmp_path / "converted")
  out = np.asarray(apply_eval(loaded, *inputs))
  assert out.shape == (B, T, 57, 2)
  err = np.abs(out - torch_output).max()
  assert err <= 1e-4, err
  assert np.abs(torch_output).max() > 0.1  # the comparison is not between near-zero outputs


def test_train_mode_dropout_and_batch_stats(variables, inputs):
  model = LandmarkGenerator()

  @jax.jit
  def run(key):
    return model.apply(variables, *inputs, train=True, rngs={"dropout": key},
                       mutable=["batch_stats"])

  out_a, updates = run(jax.random.key(1))
  out_b, _ = run(jax.random.key(2))
  assert np.all(np.isfinite(np.asarray(out_a)))
  assert float(jnp.abs(out_a - out_b).max()) > 1e-3  # dropout draws differ per key
  eval_out = apply_eval(variables, *inputs)
  assert float(jnp.abs(out_a - eval_out).max()) > 1e-3
  # Running statistics moved towards the batch statistics (momentum 0.9).
  for name in ("mel_encoder_0", "pose_encoder_0", "ref_encoder_19"):
    old = variables["batch_stats"][name]["conv_block_1"]["mean"]
    new = updates["batch_stats"][name]["conv_block_1"]["mean"]
    assert float(jnp.abs(new - old).max()) > 1e-4, name


# bfloat16 compute (params float32) on the parity inputs: measured max abs error vs float32
# 0.032 for outputs up to 3.7 (0.9% of the output range; mean 0.008). About 30 layers of
# bfloat16 rounding (8-bit mantissa, 0.4% per op) accumulate; the bound is 2.5% of the
# float32 output's largest magnitude.
BF16_RELATIVE_TOLERANCE = 2.5e-2


def test_bfloat16_compute_error(variables, inputs):
  ref = apply_eval(variables, *inputs)
  out = jax.jit(lambda v, *a: LandmarkGenerator(dtype=jnp.bfloat16).apply(v, *a, train=False))(
      variables, *inputs)
  assert out.dtype == jnp.float32
  err = float(jnp.abs(out - ref).max())
  scale = float(jnp.abs(ref).max())
  assert err > 0.0  # bfloat16 compute is really in use
  assert err <= BF16_RELATIVE_TOLERANCE * scale, (err, scale)


def test_lstm_variant_wiring(inputs):
  # Full size traced abstractly (no compile: the 8 scanned LSTMs compile slowly on CPU).
  model = LandmarkGenerator(generator="lstm")
  variables = jax.eval_shape(lambda k: model.init(k, *inputs, train=False), jax.random.key(0))
  params = variables["params"]
  assert "fusion_transformer" not in params
  assert params["fusion_lstm"]["lstm_0_forward"]["ii"]["kernel"].shape == (1536, 512)
  assert params["fusion_lstm"]["lstm_3_backward"]["ii"]["kernel"].shape == (1024, 512)
  assert params["mouse_keypoint_map"]["kernel"].shape == (1024, 80)
  assert params["jaw_keypoint_map"]["kernel"].shape == (1024, 34)
  out = jax.eval_shape(
      lambda v: model.apply(v, *inputs, train=True, rngs={"dropout": jax.random.key(1)},
                            mutable=["batch_stats"])[0], variables)
  assert out.shape == (B, T, 57, 2)


def test_fusion_lstm_small_is_bidirectional_and_uses_references():
  # One layer: with more, the forward direction of layer 2 sees layer 1's backward half.
  lstm = FusionLSTM(num_layers=1, hidden=8, dropout=0.1)
  keys = jax.random.split(jax.random.key(0), 4)
  ref = jax.random.normal(keys[0], (2, 3, 4))
  audio = jax.random.normal(keys[1], (2, 5, 4))
  pose = jax.random.normal(keys[2], (2, 5, 4))
  variables = lstm.init(keys[3], ref, audio, pose, train=False)
  assert variables["params"]["lstm_0_forward"]["ii"]["kernel"].shape == (12, 8)
  run = jax.jit(lambda r, a, p: lstm.apply(variables, r, a, p, train=False))
  out = run(ref, audio, pose)
  assert out.shape == (2, 5, 16)
  # Changing the last frame's audio changes the first frame's output only through the
  # backward direction: both halves must be present.
  out2 = run(ref, audio.at[:, -1].add(1.0), pose)
  assert float(jnp.abs(out2[:, 0, 8:] - out[:, 0, 8:]).max()) > 1e-4
  assert float(jnp.abs(out2[:, 0, :8] - out[:, 0, :8]).max()) == 0.0
  # The reference summary reaches every step.
  out3 = run(ref + 1.0, audio, pose)
  assert float(jnp.abs(out3[:, 0] - out[:, 0]).max()) > 1e-4
  # Dropout is active in train mode.
  train = lambda k: lstm.apply(variables, ref, audio, pose, train=True, rngs={"dropout": k})
  assert float(jnp.abs(train(jax.random.key(1)) - train(jax.random.key(2))).max()) > 1e-4


def test_rejects_wrong_window_length(variables, inputs):
  mels, pose, ref_pose, ref_content = inputs
  with pytest.raises(AssertionError):
    LandmarkGenerator().apply(variables, mels[:, :4], pose[:, :4], ref_pose, ref_content,
                              train=False)


def _landmark_loss_torch(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
  """The release's landmark loss: L1 + mean over (b, t) of |(p[t+1]-p[t]) - (g[t+1]-g[t])|_2."""
  l1 = torch.nn.functional.l1_loss(pred, gt)
  dp = (pred[:, 1:] - pred[:, :-1]).reshape(pred.shape[0] * (pred.shape[1] - 1), -1)
  dg = (gt[:, 1:] - gt[:, :-1]).reshape(dp.shape)
  return l1 + torch.nn.functional.pairwise_distance(dp, dg, eps=1e-6).mean()


def test_gradient_parity_of_landmark_loss(mirror, variables, inputs, inputs_torch):
  rng = np.random.default_rng(3)
  gt = rng.random((B, T, 57, 2)).astype(np.float32)
  # Eval mode on both sides (BatchNorm running stats, no dropout): gradients are then a
  # deterministic function of the weights and comparable one to one.
  mirror.zero_grad()
  pred = mirror(*map(torch.from_numpy, inputs_torch)).permute(0, 2, 1).reshape(B, T, 57, 2)
  loss_torch = _landmark_loss_torch(pred, torch.from_numpy(gt))
  loss_torch.backward()
  torch_grads = {k: p.grad.numpy() for k, p in mirror.named_parameters()}

  def loss_fn(params):
    out = LandmarkGenerator().apply({**variables, "params": params}, *inputs, train=False)
    return landmark_loss(out, jnp.asarray(gt))[0]

  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(variables["params"])
  np.testing.assert_allclose(float(loss), loss_torch.item(), rtol=1e-5)
  flax_grads = conversion.variables_to_state_dict({"params": grads})
  assert set(torch_grads) <= set(flax_grads)
  worst = 0.0
  for key, g_torch in torch_grads.items():
    g_flax = flax_grads[key]
    scale = max(np.abs(g_torch).max(), 1e-6)
    rel = np.abs(g_flax - g_torch).max() / scale
    worst = max(worst, rel)
    assert rel <= 1e-3, (key, rel)
  assert worst > 0.0
