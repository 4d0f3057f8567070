"""Shape and dtype assertions for NumPy arrays, without importing JAX.

The media and dataset modules (video, audio, landmarks, sketch, dataset_layout) run in
preprocessing worker processes that never touch JAX. `chex` imports JAX at import time
(~0.7 s of CPU per process, paid serially before the workers start), so these modules
use the few checks they need from here instead. Same contract as the chex functions of
the same names: an `AssertionError` naming what was expected and what was got.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def assert_rank(x: np.ndarray, rank: int) -> None:
  """`x.ndim == rank`."""
  if np.ndim(x) != rank:
    raise AssertionError(f"expected rank {rank}, got shape {np.shape(x)}")


def assert_shape(x: np.ndarray, shape: Sequence[int]) -> None:
  """`x.shape == shape` exactly."""
  if tuple(np.shape(x)) != tuple(shape):
    raise AssertionError(f"expected shape {tuple(shape)}, got {np.shape(x)}")


def assert_axis_dimension(x: np.ndarray, axis: int, dim: int) -> None:
  """`x.shape[axis] == dim` (negative axes count from the end)."""
  shape = np.shape(x)
  if not -len(shape) <= axis < len(shape) or shape[axis] != dim:
    raise AssertionError(f"expected size {dim} on axis {axis}, got shape {shape}")


def assert_type(x: np.ndarray, dtype: type | np.dtype) -> None:
  """`x.dtype == dtype`."""
  if np.asarray(x).dtype != np.dtype(dtype):
    raise AssertionError(f"expected dtype {np.dtype(dtype)}, got {np.asarray(x).dtype}")
