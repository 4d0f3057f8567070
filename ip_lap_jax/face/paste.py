"""Paste-back of a generated face into its frame, blended with a feathered face mask.

The release pastes the resized 128x128 face into the frame's face box, then keeps it
only inside a mask: the convex fill of a 68-point detector's jaw line and eyebrows,
blurred with a 21x21 Gaussian (sigma 11), so that the box's edges never show. That
detector downloads its own weights; here the mask comes from the Face Mesh points the
pipeline already has: the face-oval points the sketches use (jaw and cheeks, temple to
temple through the chin, `landmarks.FACE_OVAL_USED`) plus the upper edge of both
eyebrows, the same region as the release's jaw + eyebrow contour. All of these points
lie inside the padded face box, so the feathered edge stays inside the pasted area.

Only the box region (plus the blur's reach) is touched, so cost does not grow with the
frame size.
"""

from __future__ import annotations

import chex
import cv2
import numpy as np

from ip_lap_jax.face import landmarks

BLUR_KERNEL = 21  # the release's GaussianBlur((21, 21), 11)
BLUR_SIGMA = 11.0

# Upper edges of the eyebrows, outer to inner (MediaPipe indices): the eyebrow part of
# the release's jaw + eyebrow contour.
_BROW_TOPS = (70, 63, 105, 66, 107, 336, 296, 334, 293, 300)


def _oval_points() -> tuple[int, ...]:
  return tuple(sorted({i for edge in landmarks.FACE_OVAL_USED for i in edge}))


MASK_INDICES: tuple[int, ...] = _oval_points() + _BROW_TOPS
# The same points as positions in the canonical 131-point order.
MASK_POSITIONS: np.ndarray = np.array(
    [int(np.flatnonzero(landmarks.CANONICAL_ORDER == i)[0]) for i in MASK_INDICES])


def mask_polygon(points: np.ndarray, frame_hw: tuple[int, int]) -> np.ndarray:
  """Convex hull of the mask points in pixels.

  Args:
    points: [131, 2] canonical points (or [478, 2] Face Mesh points), normalised to the
      full frame, (x, y).
    frame_hw: (height, width).
  Returns:
    int32 [K, 1, 2] hull vertices (x, y), as `cv2.fillConvexPoly` takes them.
  """
  points = np.asarray(points, np.float64)
  if points.shape == (landmarks.NUM_MESH_POINTS, 2):
    selected = points[list(MASK_INDICES)]
  else:
    chex.assert_shape(points, (landmarks.NUM_ALL, 2))
    selected = points[MASK_POSITIONS]
  h, w = frame_hw
  # astype(int) truncates, as the release's `preds.astype(int)`.
  pixels = (selected * np.array([w, h])).astype(np.int32)
  return cv2.convexHull(pixels)


def feathered_mask(polygon: np.ndarray, region: tuple[int, int, int, int]) -> np.ndarray:
  """The blurred filled polygon over `region` = (y1, y2, x1, x2) of the frame.

  The fill is drawn on a canvas larger than the region by the blur's reach so that the
  blur near the region's border sees the same pixels as on the full frame.

  Returns:
    float32 [y2 - y1, x2 - x1] in [0, 1].
  """
  y1, y2, x1, x2 = region
  reach = BLUR_KERNEL // 2
  canvas = np.zeros((y2 - y1 + 2 * reach, x2 - x1 + 2 * reach), np.uint8)
  shifted = polygon - np.array([x1 - reach, y1 - reach], np.int32)
  cv2.fillConvexPoly(canvas, shifted, 255)
  blurred = cv2.GaussianBlur(canvas, (BLUR_KERNEL, BLUR_KERNEL), BLUR_SIGMA)
  return blurred[reach:reach + y2 - y1, reach:reach + x2 - x1].astype(np.float32) / 255.0


def paste_face_inplace(frame: np.ndarray, face: np.ndarray, box: tuple[int, int, int, int],
                       polygon: np.ndarray) -> None:
  """Pastes `face` into `frame`'s box and blends it in with the feathered mask, in place.

  Args:
    frame: uint8 [H, W, 3] BGR, changed inside `box` only (the caller must own it).
    face: uint8 [s, s, 3] generated face (any s; resized bilinearly to the box).
    box: (y1, y2, x1, x2) pixel box the face was cropped from.
    polygon: `mask_polygon` of the frame's points.
  The box becomes frame * (1 - mask) + pasted * mask, truncated to uint8 as the release
  does; nothing outside the box is read or written.
  """
  chex.assert_rank([frame, face], 3)
  y1, y2, x1, x2 = box
  if y2 <= y1 or x2 <= x1:
    return
  resized = cv2.resize(face, (x2 - x1, y2 - y1)).astype(np.float32)
  mask = feathered_mask(polygon, box)[..., None]
  original = frame[y1:y2, x1:x2].astype(np.float32)
  # The mask is zero outside the box (the polygon lies inside it, the blur reaches
  # at most 10 px and the box is padded by 25 px), so blending the box suffices.
  frame[y1:y2, x1:x2] = (resized * mask + original * (1.0 - mask)).astype(np.uint8)


def paste_face(frame: np.ndarray, face: np.ndarray, box: tuple[int, int, int, int],
               polygon: np.ndarray) -> np.ndarray:
  """`paste_face_inplace` on a copy of `frame` (left unchanged); returns the copy."""
  out = frame.copy()
  paste_face_inplace(out, face, box, polygon)
  return out
