"""Why LSE scoring is not 2x the reference on a 2-core CPU: SyncNet's layers one by one.

For one batch of `--windows` windows, milliseconds (best of `--repeats`, after a warm-up)
and GFLOP/s of every way tried to compute each convolution, against PyTorch's (oneDNN)
on the same shapes in the same process, plus the machine's float32 matrix-product
throughput in both frameworks. Random data; every variant is checked against XLA's
convolution (largest error relative to the largest output, printed).

Rows:
  * gemm: [M, K] x [K, N] products, XLA and PyTorch: the ceiling for any convolution.
  * lip stem (5x7x7, stride 2, 3 -> 96 on 224 px): PyTorch's Conv3d per window; XLA's
    convolution of the 2 * windows planes of the temporal Winograd F(4, 5) (what the
    scorer runs), the same planes as one patch matrix product, and as FFT products
    (polyphase 112 px planes, each frequency's [windows, 60] x [60, 96] product).
  * conv2 (5x5, stride 2, 96 -> 256, 54 -> 26 px): PyTorch, XLA, and Winograd F(m, 3)
    after splitting the stride into 4 phases (a 3x3 convolution of 384 channels).
  * the 3x3 layers (lips on 13 px, audio on 13 x 20 and 11 x 9): PyTorch, XLA,
    Winograd F(2), F(3), F(4) (`models.conv`).

Run: .venv/bin/python benchmarks/bench_syncnet_layers.py --windows 24
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from typing import Any, Callable

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ip_lap_jax.models import conv as conv_lib  # noqa: E402
from ip_lap_jax.models import syncnet  # noqa: E402
from bench_eval import best_ms  # noqa: E402  (this folder is the script's sys.path[0])


def _xla_conv(x, w, strides, padding):
  return jax.lax.conv_general_dilated(x, w, strides, padding,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _stem_patches(x, w):
  """The stem's planes as one product: column taps gathered first, then row taps."""
  n = x.shape[0]
  cols = jnp.concatenate([x[:, :, j:j + 217:2] for j in range(7)], -1)  # [N, 224, 109, 21]
  patches = jnp.concatenate([cols[:, i:i + 217:2] for i in range(7)], -1)  # [N, 109, 109, 147]
  return (patches.reshape(-1, 147) @ w.reshape(147, -1)).reshape(n, 109, 109, -1)


def _stem_spectra(w):
  """The stem kernel's polyphase taps [5, 4, 4, 12, 96] as conjugate 112 px spectra."""
  k = jnp.pad(w, ((0, 0), (0, 1), (0, 1), (0, 0), (0, 0)))
  k = k.reshape(5, 4, 2, 4, 2, 3, -1).transpose(0, 1, 3, 2, 4, 5, 6).reshape(5, 4, 4, 12, -1)
  k = jnp.pad(k, ((0, 0), (0, 108), (0, 108), (0, 0), (0, 0)))
  return jnp.conj(jnp.fft.rfft2(k, axes=(1, 2)))  # [5, 112, 57, 12, 96]


def _stem_fft(frames, spectra):
  """Every window's stem by FFT: polyphase planes [T, 112, 112, 12], spectra multiplied
  per frequency ([windows, 5 * 12] x [5 * 12, 96]), inverse FFT, valid corner kept.
  The kernel's spectra are computed beforehand (not timed)."""
  t = frames.shape[0]
  planes = frames.reshape(t, 112, 2, 112, 2, 3).transpose(0, 1, 3, 2, 4, 5).reshape(t, 112, 112, 12)
  x = jnp.fft.rfft2(planes, axes=(1, 2))  # [T, 112, 57, 12]
  windows = t - 4
  stacked = jnp.concatenate([x[d:d + windows] for d in range(5)], -1)
  stacked = stacked.reshape(windows, -1, 60).transpose(1, 0, 2)
  k = spectra.transpose(1, 2, 0, 3, 4).reshape(-1, 60, spectra.shape[-1])
  y = jnp.einsum("ftc,fco->fto", stacked, k).transpose(1, 0, 2).reshape(windows, 112, 57, -1)
  return jnp.fft.irfft2(y, s=(112, 112), axes=(1, 2))[:, :109, :109]


def _conv2_by_phases(x, w, tile):
  """conv2 (5x5, stride 2, padding 1) as a 3x3 convolution of its 4 row/column phases."""
  b, h, _, c = x.shape
  half = (h + 2) // 2
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  xp = xp.reshape(b, half, 2, half, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, half, half, 4 * c)
  wp = jnp.pad(w, ((0, 1), (0, 1), (0, 0), (0, 0))).reshape(3, 2, 3, 2, c, -1)
  wp = wp.transpose(0, 2, 1, 3, 4, 5).reshape(3, 3, 4 * c, -1)
  return conv_lib.winograd_conv3x3(xp, wp, tile)[:, 1:half - 1, 1:half - 1]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--windows", type=int, default=24)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--json", default=None, help="also write the rows here")
  args = parser.parse_args()
  cores = len(os.sched_getaffinity(0))
  torch.set_num_threads(cores)
  rng = np.random.default_rng(0)
  n = args.windows
  rows = []

  def record(layer: str, method: str, fn: Callable[[], Any], flops: float,
             check: tuple[Any, Any] | None = None) -> None:
    ms = best_ms(fn, args.repeats)
    row = {"layer": layer, "method": method, "ms": round(ms, 1),
           "gflop_per_s": round(flops / ms / 1e6, 1)}
    if check is not None:
      got, want = (np.asarray(a, np.float64) for a in check)
      row["rel_err"] = float(f"{np.abs(got - want).max() / np.abs(want).max():.2g}")
    rows.append(row)
    print(json.dumps(row), flush=True)

  def randn(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)

  for m, k, nn_ in [(2 * n * 109 * 109, 147, 96), (4096, 4096, 1024)]:
    a, b = randn(m, k), randn(k, nn_)
    product = jax.jit(jnp.matmul)
    ja, jb, ta, tb = jnp.asarray(a), jnp.asarray(b), torch.from_numpy(a), torch.from_numpy(b)
    record(f"gemm {m}x{k}x{nn_}", "xla", lambda: product(ja, jb), 2 * m * k * nn_)
    record(f"gemm {m}x{k}x{nn_}", "pytorch", lambda: ta @ tb, 2 * m * k * nn_)

  with torch.no_grad():
    # Lip stem.
    frames = rng.uniform(0, 255, (n + 4, 224, 224, 3)).astype(np.float32)
    w = randn(5, 7, 7, 3, 96, scale=0.02)
    windows = np.stack([frames[i:i + 5] for i in range(n)])  # [n, 5, 224, 224, 3]
    tw = torch.from_numpy(np.ascontiguousarray(windows.transpose(0, 4, 1, 2, 3)))
    tk = torch.from_numpy(np.ascontiguousarray(w.transpose(4, 3, 0, 1, 2)))
    full = 2.0 * n * 109 * 109 * 96 * 5 * 49 * 3
    record("lip stem", "pytorch conv3d per window", lambda: F.conv3d(tw, tk, stride=(1, 2, 2)), full)
    jf, jw = jnp.asarray(frames), jnp.asarray(w)
    plane_conv = lambda u, v: _xla_conv(u, v, (2, 2), "VALID")
    scorer = jax.jit(lambda f, k: syncnet._depth_winograd(f[None], k, plane_conv)[0])  # pylint: disable=protected-access
    want = scorer(jf, jw)
    record("lip stem", "xla, temporal winograd planes (ours)", lambda: scorer(jf, jw), full, None)
    by_patches = jax.jit(lambda f, k: syncnet._depth_winograd(f[None], k, _stem_patches)[0])  # pylint: disable=protected-access
    record("lip stem", "patch product, temporal winograd planes", lambda: by_patches(jf, jw), full,
           (by_patches(jf, jw), want))
    fft, spectra = jax.jit(_stem_fft), jax.jit(_stem_spectra)(jw)
    record("lip stem", "fft per frequency product", lambda: fft(jf, spectra), full,
           (fft(jf, spectra), want))

    # conv2.
    x, w = randn(n, 54, 54, 96), randn(5, 5, 96, 256, scale=0.05)
    tx = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    tk = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
    flops = 2.0 * n * 26 * 26 * 256 * 25 * 96
    record("conv2", "pytorch", lambda: F.conv2d(tx, tk, stride=2, padding=1), flops)
    jx, jw = jnp.asarray(x), jnp.asarray(w)
    direct = jax.jit(lambda a, b: _xla_conv(a, b, (2, 2), ((1, 1), (1, 1))))
    want = direct(jx, jw)
    record("conv2", "xla", lambda: direct(jx, jw), flops)
    for tile in (2, 4):
      phases = jax.jit(lambda a, b, t=tile: _conv2_by_phases(a, b, t))
      record("conv2", f"4 phases, winograd F({tile}, 3)", lambda: phases(jx, jw), flops,
             (phases(jx, jw), want))

    # 3x3 layers.
    for layer, (h, wd, cin, cout) in {"lip 3x3 13 px": (13, 13, 256, 256),
                                      "audio 64->192 13x20": (13, 20, 64, 192),
                                      "audio 192->384 11x9": (11, 9, 192, 384),
                                      "audio 384->256 11x9": (11, 9, 384, 256)}.items():
      x, w = randn(n, h, wd, cin), randn(3, 3, cin, cout, scale=0.05)
      tx = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
      tk = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
      flops = 2.0 * n * h * wd * cout * 9 * cin
      record(layer, "pytorch", lambda: F.conv2d(tx, tk, padding=1), flops)
      jx, jw = jnp.asarray(x), jnp.asarray(w)
      direct = jax.jit(conv_lib.direct_conv3x3)
      want = direct(jx, jw)
      record(layer, "xla", lambda: direct(jx, jw), flops)
      for tile in (2, 3, 4):
        wino = jax.jit(lambda a, b, t=tile: conv_lib.winograd_conv3x3(a, b, t))
        record(layer, f"winograd F({tile}, 3)", lambda: wino(jx, jw), flops, (wino(jx, jw), want))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
  main()
