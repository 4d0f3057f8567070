"""A minimal `torchvision` for importing `lpips` and `piq` in tests, used only when the
real one does not import.

Why: the venv's torch is 2.13.0+cpu. torchvision 0.28.0 (the release pinned to torch
2.13.0) is only available here as the CUDA build, whose `_C.so` needs
`libc10_cuda.so` / `libtorch_cuda.so`; with the CPU torch, `import torchvision` fails
with `RuntimeError: operator torchvision::nms does not exist` (its fake-kernel
registration runs after the extension failed to load). No CPU build is reachable.

What it provides: `torchvision.models.alexnet(pretrained=False)` building torchvision's
AlexNet with the exact `features` layout (indices 0..12, the layers lpips slices and
whose `features.<i>.weight` keys torchvision's ImageNet file holds), plus the names
`lpips` and `piq` import or subclass at module level (vgg16, vgg19, squeezenet1_1,
inception_v3, which raise if called; `models.inception.Inception{A,C,E}`, empty
modules). Nothing here downloads weights: `pretrained=True` raises.
"""

from __future__ import annotations

import sys
import types

from torch import nn


class AlexNet(nn.Module):
  """torchvision.models.AlexNet's modules (forward not needed by lpips)."""

  def __init__(self, num_classes: int = 1000, dropout: float = 0.5):
    super().__init__()
    self.features = nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )
    self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
    self.classifier = nn.Sequential(
        nn.Dropout(dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
        nn.Dropout(dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
        nn.Linear(4096, num_classes))


def alexnet(pretrained: bool = False, weights: object = None, **kwargs) -> AlexNet:
  if pretrained or weights is not None:
    raise RuntimeError("the torchvision stand-in has no pretrained weights")
  return AlexNet(**kwargs)


def _unavailable(name: str):
  def build(*args, **kwargs):
    raise RuntimeError(f"torchvision.models.{name} is not in the test stand-in")
  return build


def install() -> bool:
  """Makes `import torchvision` work: the real package if it imports, else this stand-in.
  Returns whether the stand-in was installed."""
  try:
    import torchvision  # noqa: F401
    return False
  except (ImportError, RuntimeError):
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
      del sys.modules[name]
  package = types.ModuleType("torchvision")
  package.__path__ = []  # a package, so that `from torchvision.models.x import y` fails cleanly
  models = types.ModuleType("torchvision.models")
  models.alexnet, models.AlexNet = alexnet, AlexNet
  for name in ("vgg16", "vgg19", "squeezenet1_1", "inception_v3"):
    setattr(models, name, _unavailable(name))
  inception = types.ModuleType("torchvision.models.inception")
  for name in ("InceptionA", "InceptionC", "InceptionE"):  # piq subclasses these
    setattr(inception, name, type(name, (nn.Module,), {}))
  models.inception = inception
  package.models = models
  sys.modules["torchvision.models.inception"] = inception
  sys.modules["torchvision"] = package
  sys.modules["torchvision.models"] = models
  return True
