"""Sketch drawing: the release's per-edge drawing rule, canvas shapes, known pixels."""

import math

import cv2
import numpy as np
import pytest

from ip_lap_jax.face import landmarks as L
from ip_lap_jax.face import sketch


def _release_sketch(points131, box_hw):
  """MediaPipe/release drawing restated: one cv2.line per edge on a float64 canvas."""
  h, w = box_hw
  img = np.zeros((int(h * 128 / min(h, w)), int(w * 128 / min(h, w)), 3))
  rows, cols = img.shape[:2]

  def valid(v):
    return (v > 0 or math.isclose(0, v)) and (v < 1 or math.isclose(1, v))

  px = {}
  for idx, (x, y) in zip(L.CANONICAL_ORDER.tolist(), points131.tolist()):
    if valid(x) and valid(y):
      px[idx] = (min(math.floor(x * cols), cols - 1), min(math.floor(y * rows), rows - 1))
  for a, b in L.CONNECTIONS:
    if a in px and b in px:
      cv2.line(img, px[a], px[b], (224, 224, 224), 1)
  return cv2.resize(img, (128, 128))


@pytest.mark.parametrize("box_hw", [(150.3, 101.7), (90.0, 240.5), (128, 128), (77, 77.4)])
def test_matches_release_rule(box_hw):
  rng = np.random.default_rng(int(box_hw[0]))
  pts = rng.uniform(-0.05, 1.05, size=(131, 2))  # some points out of range
  pts[:3] = [(1.0, 1.0), (0.0, 0.5), (1.0, 0.0)]  # boundaries are drawn, capped to W-1
  ref = _release_sketch(pts, box_hw)
  got = sketch.draw_sketch(pts, box_hw)
  assert got.shape == (128, 128, 3) and got.dtype == np.float32
  np.testing.assert_allclose(got, ref / 255.0, rtol=0, atol=1e-6)
  stored = sketch.draw_sketch_uint8(pts, box_hw)
  assert stored.dtype == np.uint8 and stored.shape == (128, 128, 3)
  np.testing.assert_array_equal(stored, np.clip(np.rint(ref), 0, 255).astype(np.uint8))
  assert ref.max() > 0


def test_mapping_input_equals_array_input():
  rng = np.random.default_rng(1)
  pts = rng.uniform(0.1, 0.9, size=(131, 2))
  mapping = {int(i): tuple(p) for i, p in zip(L.CANONICAL_ORDER, pts)}
  mapping[999] = (0.5, 0.5)  # extra points (e.g. all 478) are ignored
  np.testing.assert_array_equal(sketch.draw_sketch(mapping, (100, 120)),
                                sketch.draw_sketch(pts, (100, 120)))
  with pytest.raises(KeyError):
    sketch.draw_sketch({1: (0.1, 0.1)}, (100, 100))


def _two_point_sketch(p, q, box_hw):
  """All points off-canvas except the two ends of one edge."""
  a, b = L.CONNECTION_POSITIONS[0]
  pts = np.full((131, 2), 2.0)
  pts[a], pts[b] = p, q
  return sketch.draw_sketch_canvas(pts, box_hw), pts


def test_single_edge_lights_its_line_only():
  canvas, _ = _two_point_sketch((0.1, 0.5), (0.9, 0.5), (128, 128))
  assert canvas.shape == (128, 128, 3)
  lit = np.argwhere(canvas[..., 0] > 0)
  assert set(lit[:, 0].tolist()) == {64}  # row floor(0.5*128)
  assert lit[:, 1].min() == 12 and lit[:, 1].max() == 115  # floor(0.1*128) .. floor(0.9*128)
  assert len(lit) == 115 - 12 + 1
  assert set(np.unique(canvas).tolist()) == {0, 224}
  # An edge with one end out of range is not drawn at all.
  canvas, _ = _two_point_sketch((0.1, 0.5), (1.2, 0.5), (128, 128))
  assert canvas.max() == 0


def test_canvas_shape_non_square_box():
  assert sketch.canvas_shape((100.0, 150.0)) == (128, 192)
  assert sketch.canvas_shape((151.3, 100.9)) == (int(151.3 * 128 / 100.9), 128)
  canvas, _ = _two_point_sketch((0.0, 0.0), (0.999, 0.999), (100, 200))
  assert canvas.shape == (128, 256, 3)
  assert canvas[0, 0, 0] == 224 and canvas[127, 255, 0] == 224
  out = sketch.draw_sketch(np.full((131, 2), 0.5), (100, 200))
  assert out.shape == (128, 128, 3)
  with pytest.raises(ValueError):
    sketch.canvas_shape((0, 10))
