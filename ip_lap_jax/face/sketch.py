"""Landmark sketches: the 131 box-normalised points drawn as lines (the release's `draw_landmarks`).

A sketch is drawn on a black canvas whose shorter side is 128 and whose aspect matches
the face box, with every edge of `landmarks.CONNECTIONS` as a 1 px OpenCV line of
value 224, then resized to 128 x 128 (OpenCV bilinear). Points outside [0, 1] are not
drawn, nor any edge touching them (MediaPipe's drawing rule, kept by the release).

All edges are drawn with one `cv2.polylines` call, which rasterises each 2-point
segment exactly like `cv2.line` (tested), instead of 125 Python-level calls.
"""

from __future__ import annotations

from typing import Mapping

import cv2
import numpy as np

from ip_lap_jax import array_checks
from ip_lap_jax.face import landmarks

SKETCH_SIZE = 128
LINE_VALUE = 224  # the release's "WHITE_COLOR" (224, 224, 224)


def canvas_shape(box_hw: tuple[float, float], size: int = SKETCH_SIZE) -> tuple[int, int]:
  """(rows, cols) of the drawing canvas for a box of `box_hw` = (h, w) pixels."""
  h, w = float(box_hw[0]), float(box_hw[1])
  if h <= 0 or w <= 0:
    raise ValueError(f"box size must be positive, got {box_hw}")
  short = min(h, w)
  return int(h * size / short), int(w * size / short)


def _canonical_points(points) -> np.ndarray:
  if isinstance(points, Mapping):
    return landmarks.points_from_mapping(points)
  points = np.asarray(points, dtype=np.float64)
  array_checks.assert_shape(points, (landmarks.NUM_ALL, 2))
  return points


def draw_sketch_canvas(points, box_hw: tuple[float, float], size: int = SKETCH_SIZE
                       ) -> np.ndarray:
  """The full-resolution drawing before the final resize.

  Args:
    points: [131, 2] box-normalised (x, y) in canonical order, or a mapping
      {mediapipe_index: (x, y)} holding at least the 131 points.
    box_hw: (h, w) of the face box in pixels (float box for dataset sketches, crop
      size at inference).
  Returns:
    uint8 [rows, cols, 3] with lines of value 224 on black (`canvas_shape`).
  """
  pts = _canonical_points(points)
  rows, cols = canvas_shape(box_hw, size)
  canvas = np.zeros((rows, cols, 3), np.uint8)
  valid = np.all((pts >= 0.0) & (pts <= 1.0), axis=-1)
  # floor(x * W), capped at the last column: a point at exactly 1.0 lands on the edge.
  pixel = np.minimum(np.floor(pts * np.array([cols, rows])),
                     np.array([cols - 1, rows - 1])).astype(np.int32)
  edges = landmarks.CONNECTION_POSITIONS
  keep = valid[edges[:, 0]] & valid[edges[:, 1]]
  if keep.any():
    segments = pixel[edges[keep]]  # [E, 2 points, (x, y)]
    cv2.polylines(canvas, list(segments), False, (LINE_VALUE,) * 3, 1)
  return canvas


def _resized(canvas: np.ndarray, size: int) -> np.ndarray:
  # The release draws on a float64 canvas and resizes it in float64 (uint8 resizing
  # would round differently); the canvas is small, so do the same.
  return cv2.resize(canvas.astype(np.float64), (size, size))


def draw_sketch(points, box_hw: tuple[float, float], size: int = SKETCH_SIZE
                ) -> np.ndarray:
  """Sketch of one face as the models take it.

  Args: as `draw_sketch_canvas`.
  Returns:
    float32 [size, size, 3] in [0, 1] (224/255 on lines), the three channels equal.
  """
  return (_resized(draw_sketch_canvas(points, box_hw, size), size) / 255.0
          ).astype(np.float32)


def draw_sketch_uint8(points, box_hw: tuple[float, float], size: int = SKETCH_SIZE
                      ) -> np.ndarray:
  """The sketch as the release's preprocessing stores it in PNG files.

  The release hands a float64 image to `cv2.imwrite`, which saturates and rounds
  half to even to uint8; `np.rint` rounds the same way.

  Returns:
    uint8 [size, size, 3].
  """
  resized = _resized(draw_sketch_canvas(points, box_hw, size), size)
  return np.clip(np.rint(resized), 0, 255).astype(np.uint8)
