"""Image quality metrics for renderer evaluation (piq's definitions) and sample grids.

psnr(x, y), ssim(x, y): piq's, per image, from `ip_lap_jax.evaluation.image_metrics`
(re-exported here for the training loop).
fid(x_features, y_features): `piq.FID().compute_metric(x, y)` on two [N, D] feature sets
(the release: generated vs ground truth Inception features of one eval batch).
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np

from ip_lap_jax.evaluation.image_metrics import psnr, ssim  # noqa: F401  (re-exported)

Array = jax.Array

log = logging.getLogger(__name__)


def sample_grid(columns: list[np.ndarray], max_rows: int) -> np.ndarray:
  """Columns of [B, H, W, 3] images in [0, 1] -> uint8 [rows*H, cols*W, 3] (same order)."""
  rows = min(max_rows, columns[0].shape[0])
  tiles = [np.concatenate([np.asarray(col[r]) for col in columns], axis=1) for r in range(rows)]
  return (np.clip(np.concatenate(tiles, axis=0), 0, 1) * 255).round().astype(np.uint8)


# ----------------------------------------------------------------------------- FID
#
# piq 0.8's FID, step by step (piq/fid.py), all in float64:
#   mu = mean(features, 0); sigma = unbiased covariance (divides by N - 1);
#   covmean = sqrtm(sigma_x @ sigma_y) by Newton-Schulz iterations, not an eigen or Schur
#   decomposition: Y0 = A / ||A||_F, Z0 = I; T = (3I - Z Y) / 2, Y <- Y T, Z <- T Z;
#   S = Y sqrt(||A||_F); stop after 100 iterations or as soon as ||A - S S||_F / ||A||_F
#   <= 1e-5 (torch.isclose(error, 0, atol=1e-5)); if S is not finite, once more on
#   (sigma_x + 1e-6 I)(sigma_y + 1e-6 I);
#   fid = |mu_x - mu_y|^2 + tr(sigma_x) + tr(sigma_y) - 2 tr(S).
# Newton-Schulz stops at that relative tolerance, so the value is not the exact-root FID
# of pytorch-fid (scipy.linalg.sqrtm); on random features, also with fewer samples than
# dimensions as in a 96-image eval batch of 2048-d features, the two agree to ~1e-6
# relative (tests/test_inception.py), and identical sets give ~1e-6 of the traces, not 0.
# This mirrors piq rather than being exact: the release's target (FID ~ 20) was measured
# this way.

FID_NEWTON_SCHULZ_ITERS = 100
FID_NEWTON_SCHULZ_TOL = 1e-5
FID_SINGULAR_EPS = 1e-6
_HIGHEST = jax.lax.Precision.HIGHEST


def _fid_statistics(features: Array) -> tuple[Array, Array]:
  """features: [N, D] -> (mean [D], unbiased covariance [D, D]), as piq's `_cov`."""
  mu = jnp.mean(features, axis=0)
  centred = features - mu
  sigma = jnp.matmul(centred.T, centred, precision=_HIGHEST) / (features.shape[0] - 1)
  return mu, sigma


def sqrtm_newton_schulz(a: Array, num_iters: int = FID_NEWTON_SCHULZ_ITERS,
                        tol: float = FID_NEWTON_SCHULZ_TOL) -> tuple[Array, Array]:
  """piq's `_sqrtm_newton_schulz`: a: [D, D] -> (square root [D, D], relative error []).

  The same iterations and the same early stop (error <= tol; a NaN error does not stop
  piq). One addition: the loop also ends once the root holds a NaN or inf. piq would run
  on to its 100 iterations, but a non-finite entry never becomes finite again (every
  entry of the next Y = Y T depends on a whole row of Y), so its result is non-finite as
  well and the caller's finiteness check decides the same; this only skips up to 100
  wasted iterations on degenerate batches (e.g. identical images: a zero matrix).
  """
  mm = functools.partial(jnp.matmul, precision=_HIGHEST)
  norm = jnp.linalg.norm(a)  # Frobenius
  eye = jnp.eye(a.shape[0], dtype=a.dtype)

  def body(carry):
    i, y, z, _, _, _ = carry
    t = 0.5 * (3.0 * eye - mm(z, y))
    y = mm(y, t)
    z = mm(t, z)
    s = y * jnp.sqrt(norm)
    return i + 1, y, z, s, jnp.linalg.norm(a - mm(s, s)) / norm, jnp.all(jnp.isfinite(s))

  def cond(carry):
    i, *_, error, finite = carry
    return (i < num_iters) & ~(error <= tol) & finite

  init = (jnp.asarray(0), a / norm, eye, jnp.zeros_like(a), jnp.asarray(jnp.inf, a.dtype),
          jnp.asarray(True))
  _, _, _, s, error, _ = jax.lax.while_loop(cond, body, init)
  return s, error


@jax.jit
def _fid(x_features: Array, y_features: Array) -> tuple[Array, Array]:
  """float64 [N, D], [M, D] -> (fid [], whether the singular-product retry ran [])."""
  mu_x, sigma_x = _fid_statistics(x_features)
  mu_y, sigma_y = _fid_statistics(y_features)
  product = jnp.matmul(sigma_x, sigma_y, precision=_HIGHEST)
  covmean, _ = sqrtm_newton_schulz(product)
  singular = ~jnp.all(jnp.isfinite(covmean))

  def retry():
    offset = FID_SINGULAR_EPS * jnp.eye(sigma_x.shape[0], dtype=sigma_x.dtype)
    return sqrtm_newton_schulz(
        jnp.matmul(sigma_x + offset, sigma_y + offset, precision=_HIGHEST))[0]

  covmean = jax.lax.cond(singular, retry, lambda: covmean)
  diff = mu_x - mu_y
  value = (jnp.dot(diff, diff, precision=_HIGHEST) + jnp.trace(sigma_x) + jnp.trace(sigma_y)
           - 2.0 * jnp.trace(covmean))
  return value, singular


def _float64_device() -> jax.Device:
  # TPUs have no native float64: there the host CPU computes it.
  if jax.default_backend() == "tpu":
    return jax.devices("cpu")[0]
  return jax.devices()[0]


def fid(x_features: np.ndarray | Array, y_features: np.ndarray | Array) -> float:
  """Frechet distance between two feature sets, as `piq.FID().compute_metric(x, y)`.

  Computed in float64 (inside `jax.enable_x64`, on the default device; the host CPU on
  TPU) whatever the input dtype, as piq casts to float64. The release calls it as
  `compute_metric(generated_features, gt_features)`; the order only changes rounding.

  Args:
    x_features: [N, D], N >= 2.
    y_features: [M, D], M >= 2.
  Returns:
    the FID as a Python float.
  Raises:
    ValueError: on shapes piq rejects (not 2-D, different D, a single sample: its
      covariance divides by N - 1 = 0).
  """
  x = np.asarray(x_features, np.float64)
  y = np.asarray(y_features, np.float64)
  if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
    raise ValueError(f"fid expects [N, D] and [M, D] features, got {x.shape} and {y.shape}")
  if min(x.shape[0], y.shape[0]) < 2:
    raise ValueError(f"fid needs at least 2 samples per set, got {x.shape[0]} and {y.shape[0]}")
  with jax.enable_x64(True):
    device = _float64_device()
    value, singular = _fid(jax.device_put(x, device), jax.device_put(y, device))
    value, singular = float(value), bool(singular)
  if singular:
    log.warning("FID: singular covariance product; added %g to the diagonals, as piq does",
                FID_SINGULAR_EPS)
  return value
