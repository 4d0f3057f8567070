"""PSNR / SSIM (ip_lap_jax.evaluation.image_metrics) against piq 0.8 itself, per image,
at 128 px (no downsampling) and at sizes where piq average-pools first.

piq imports torchvision at module level; where the real one does not import (see
tests/torch_mirror/torchvision_standin.py) a minimal stand-in is injected. piq's psnr and
ssim never call into torchvision.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_mirror import torchvision_standin

from ip_lap_jax.evaluation import image_metrics
from ip_lap_jax.training import metrics as training_metrics

torchvision_standin.install()
piq = pytest.importorskip("piq")


def _pair(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  base = np.linspace(0, 1, w)[None, None, :, None] * np.ones((2, h, w, 3))
  x = np.clip(base + rng.normal(0, 0.1, base.shape), 0, 1).astype(np.float32)
  y = np.clip(x + rng.normal(0, 0.05, x.shape), 0, 1).astype(np.float32)
  y[1] = x[1]  # identical images: PSNR 80 dB (the eps), SSIM 1
  return x, y


def _nchw(a: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(a.transpose(0, 3, 1, 2).copy())


@pytest.mark.parametrize("h, w, factor", [(128, 128, 1), (384, 384, 2), (200, 390, 1),
                                          (650, 700, 3)])
def test_matches_piq(h, w, factor):
  assert image_metrics.ssim_downsample_factor(h, w) == factor
  x, y = _pair(h, w)
  want_psnr = piq.psnr(_nchw(x), _nchw(y), data_range=1.0, reduction="none").numpy()
  want_ssim = piq.ssim(_nchw(x), _nchw(y), data_range=1.0, reduction="none").numpy()
  got_psnr = np.asarray(image_metrics.psnr(x, y))
  got_ssim = np.asarray(image_metrics.ssim(x, y))
  print(f"{h}x{w}: psnr {got_psnr} vs {want_psnr}, ssim {got_ssim} vs {want_ssim}")
  np.testing.assert_allclose(got_psnr, want_psnr, rtol=0, atol=1e-5)  # ~1 float32 ulp at 80 dB
  np.testing.assert_allclose(got_ssim, want_ssim, rtol=0, atol=1e-5)
  assert 0.2 < got_ssim[0] < 0.99 and abs(got_ssim[1] - 1) < 1e-6


def test_downsampling_rounds_like_python():
  # round(1.5) = 2 and round(2.5) = 2: ties to even, as piq's Python round.
  assert [image_metrics.ssim_downsample_factor(s, s) for s in (383, 384, 640, 641, 100)] == \
      [1, 2, 2, 3, 1]


def test_training_metrics_are_the_same_functions():
  assert training_metrics.psnr is image_metrics.psnr
  assert training_metrics.ssim is image_metrics.ssim
