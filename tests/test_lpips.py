"""LPIPS (AlexNet, v0.1) against the `lpips` package itself, through the converter.

The reference is `lpips.LPIPS(net='alex', version='0.1')` with its shipped heads
(`weights/v0.1/alex.pth`) and a random AlexNet backbone (`pnet_rand=True`; the ImageNet
file is the user's download). torchvision: when the real package does not import (here:
only the CUDA build of torchvision 0.28.0 exists for the venv's torch 2.13.0+cpu, and it
fails with "operator torchvision::nms does not exist"), lpips runs on a minimal stand-in
injected via sys.modules (`tests/torch_mirror/torchvision_standin.py`) whose `alexnet()`
has torchvision's exact `features` layout. Everything else is lpips's own code.
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np
import pytest
import torch
from torch_mirror import torchvision_standin

from ip_lap_jax import convert
from ip_lap_jax import conversion
from ip_lap_jax.models import registry, store
from ip_lap_jax.models.lpips import LPIPS
from tests.conversion_asserts import assert_conversion_error

torchvision_standin.install()
lpips = pytest.importorskip("lpips")


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
  torch.manual_seed(0)
  return lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True,
                     verbose=False).eval()


def _heads_file() -> pathlib.Path:
  return pathlib.Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"


@pytest.fixture(scope="module")
def converted(reference, tmp_path_factory) -> dict:
  """The reference's backbone saved as torchvision's file (with a classifier, which the
  converter drops) plus the wheel's heads file, converted by the CLI path."""
  root = tmp_path_factory.mktemp("lpips")
  alexnet = torchvision_standin.AlexNet() if torchvision_standin.install() else \
      __import__("torchvision").models.alexnet()
  state = {k: v for k, v in alexnet.state_dict().items() if k.startswith("classifier.")}
  for l, index in enumerate((0, 3, 6, 8, 10)):
    slice_ = getattr(reference.net, f"slice{l + 1}")
    state[f"features.{index}.weight"] = getattr(slice_, str(index)).weight.detach()
    state[f"features.{index}.bias"] = getattr(slice_, str(index)).bias.detach()
  torch.save(state, root / "alexnet.pth")
  assert convert.main(["--model", "lpips", "--src", str(root / "alexnet.pth"),
                       "--heads", str(_heads_file()), "--out", str(root / "out")]) == 0
  return store.load_tree(root / "out")


def _pair(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  x = rng.uniform(0, 1, (2, size, size, 3)).astype(np.float32)
  y = np.clip(x + rng.normal(0, 0.2, x.shape), 0, 1).astype(np.float32)
  return x, y


@pytest.mark.parametrize("size", [64, 100])
def test_matches_the_lpips_package(reference, converted, size):
  x, y = _pair(size)
  nchw = lambda a: torch.from_numpy(a.transpose(0, 3, 1, 2).copy())  # noqa: E731
  with torch.no_grad():
    want = reference(nchw(x), nchw(y), normalize=True).numpy().reshape(-1)
    want_pm1 = reference(nchw(2 * x - 1), nchw(2 * y - 1)).numpy().reshape(-1)
  apply = jax.jit(registry.build(registry.official_spec("lpips")).apply, static_argnames="normalize")
  got = np.asarray(apply(converted, x, y, normalize=True))
  got_pm1 = np.asarray(apply(converted, 2 * x - 1, 2 * y - 1))
  print(f"lpips {got} vs {want}")
  assert got.shape == (2,) and want.min() > 1e-3
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
  np.testing.assert_allclose(got_pm1, want_pm1, rtol=0, atol=1e-4)
  assert np.abs(np.asarray(apply(converted, x, x, normalize=True))).max() < 1e-9


def test_heads_are_the_shipped_file_and_bad_keys_are_reported(converted):
  heads = torch.load(_heads_file(), map_location="cpu", weights_only=True)
  assert sorted(heads) == [f"lin{l}.model.1.weight" for l in range(5)]
  np.testing.assert_array_equal(converted["params"]["lin2"]["model_1"]["kernel"][0, 0, :, 0],
                                heads["lin2.model.1.weight"].numpy().reshape(-1))
  template = registry.official_template("lpips")
  state = conversion.variables_to_state_dict(converted)
  assert set(state) == {*heads, *(f"features.{i}.{p}" for i in (0, 3, 6, 8, 10)
                                  for p in ("weight", "bias"))}
  assert conversion.detect_model(state) == "lpips"
  bad = {k: torch.from_numpy(v) for k, v in state.items()}
  bad["lin5.model.1.weight"] = torch.zeros(1, 256, 1, 1)
  del bad["features.8.bias"]
  bad["lin1.model.1.weight"] = torch.zeros(1, 64, 1, 1)
  assert_conversion_error(bad, template, unknown="lin5.model.1.weight",
                          missing="features.8.bias", misshaped="lin1.model.1.weight")


def test_cli_needs_heads_with_lpips(tmp_path):
  with pytest.raises(SystemExit):
    convert.main(["--model", "lpips", "--src", "x.pth", "--out", str(tmp_path / "o")])
