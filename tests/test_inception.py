"""FID Inception: the Flax network vs a PyTorch mirror, and its conversion."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

from ip_lap_jax import convert
from ip_lap_jax.models.inception import FEATURE_DIM, InceptionV3
from ip_lap_jax.torch_mirror.common import randomize_batchnorm_stats
from ip_lap_jax.torch_mirror.inception import FIDInceptionV3Torch


def _mirror(seed: int = 0) -> FIDInceptionV3Torch:
  """Random mirror with He-normal convs and random BatchNorm statistics.

  PyTorch's default conv init shrinks activations layer after layer; He-normal keeps the
  2048 features O(1) through the 94 convs, so the 1e-4 bound is a relative test too.
  """
  torch.manual_seed(seed)
  net = randomize_batchnorm_stats(FIDInceptionV3Torch(), seed=seed + 1).eval()
  gen = torch.Generator().manual_seed(seed + 2)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.Conv2d):
        m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / m.weight[0].numel()) ** 0.5)
  return net


@pytest.fixture(scope="module")
def mirror() -> FIDInceptionV3Torch:
  return _mirror()


@pytest.fixture(scope="module")
def converted(mirror, tmp_path_factory) -> str:
  """The mirror saved as pytorch-fid's file (a bare state_dict), converted to a directory."""
  root = tmp_path_factory.mktemp("inception")
  src = root / "pt_inception-2015-12-05-6726825d.pth"
  torch.save(mirror.state_dict(), src)
  provenance = convert.convert_checkpoint(src, root / "converted")  # model detected
  assert provenance["model"] == "inception" and provenance["num_keys"] == len(mirror.state_dict())
  return str(root / "converted")


# ----------------------------------------------------------------------------- network


def test_features_match_torch_mirror(mirror, converted):
  variables = convert.load_variables(converted)
  noise = np.random.default_rng(0).uniform(size=(64, 64, 3))
  ramp = np.stack([*np.meshgrid(np.linspace(0, 1, 64), np.linspace(1, 0, 64)), noise[..., 0]], -1)
  x = np.stack([noise, ramp]).astype(np.float32)  # [2, 64, 64, 3] in [0, 1]
  with torch.no_grad():
    want = mirror(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  got = np.asarray(jax.jit(InceptionV3().apply)(variables, x))
  assert got.shape == want.shape == (2, FEATURE_DIM)
  # Far from zero and different per image, so the comparison means something.
  assert np.abs(want).mean() > 0.1 and np.abs(want[0] - want[1]).max() > 0.1
  err = float(np.abs(got - want).max())
  print(f"inception features max abs error {err:.3g} (max |feature| {np.abs(want).max():.3g})")
  assert err <= 1e-4


def test_param_tree_holds_every_key_of_the_weights_file(mirror):
  template = convert.model_template("inception")
  params = template["params"]
  assert params["Conv2d_1a_3x3"]["conv"]["kernel"].shape == (3, 3, 3, 32)
  assert params["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"].shape == (1, 7, 128, 128)
  assert params["fc"]["kernel"].shape == (2048, 1008)
  assert template["batch_stats"]["Mixed_7c"]["branch_pool"]["bn"]["mean"].shape == (192,)
  keys = {k for k in mirror.state_dict() if not k.endswith("num_batches_tracked")}
  rebuilt = {convert.flax_path_to_torch_key(c, tuple(p.key for p in path))
             for c in ("params", "batch_stats")
             for path, _ in jax.tree_util.tree_leaves_with_path(template[c])}
  assert rebuilt == keys


def test_converter_reports_every_bad_key(mirror):
  template = convert.model_template("inception")
  state = dict(mirror.state_dict())
  # The published file predates num_batches_tracked: converting without it is fine.
  plain = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
  variables = convert.state_dict_to_variables(plain, template)
  np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], state["fc.weight"].numpy().T)
  np.testing.assert_array_equal(variables["batch_stats"]["Mixed_5b"]["branch1x1"]["bn"]["mean"],
                                state["Mixed_5b.branch1x1.bn.running_mean"].numpy())

  bad = dict(state)
  bad["AuxLogits.fc.weight"] = torch.zeros(1000, 768)  # torchvision's aux head: not in FID
  del bad["Mixed_6e.branch7x7dbl_3.bn.running_var"]
  bad["Mixed_7a.branch3x3_2.conv.weight"] = torch.zeros(320, 192, 1, 3)
  with pytest.raises(convert.ConversionError) as info:
    convert.state_dict_to_variables(bad, template)
  message = str(info.value)
  assert "1 unknown keys" in message and "AuxLogits.fc.weight" in message
  assert "1 missing keys" in message and "Mixed_6e.branch7x7dbl_3.bn.running_var" in message
  assert "1 mis-shaped keys" in message and "Mixed_7a.branch3x3_2.conv.weight" in message


def test_export_writes_pytorch_fids_bare_format(converted, mirror, tmp_path):
  out = tmp_path / "exported.pth"
  convert.export_state_dict(convert.load_variables(converted), out, "inception")
  reloaded = torch.load(out, map_location="cpu", weights_only=True)
  assert "state_dict" not in reloaded
  for key, value in mirror.state_dict().items():
    if not key.endswith("num_batches_tracked"):
      assert torch.equal(reloaded[key], value), key
