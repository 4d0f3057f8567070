"""Face Mesh landmarks as IP_LAP uses them: index sets, detection, face box, crop.

The release works on 131 of MediaPipe Face Mesh's 478 points: every point of the lips,
eyes, eyebrows and face-oval edge sets plus a custom nose set (the release's `preprocess_video.py`).
They split into 74 *pose* points (upper face, nose, cheeks; copied from the template
video) and 57 *content* points (17 jaw + 40 lips; predicted from audio). Both groups are
kept in one canonical order (`CANONICAL_ORDER`), which the models rely on.

Coordinates: `points` arrays are `[..., 2]` with the last axis `(x, y)`, normalised
image coordinates in [0, 1] (MediaPipe's convention), float64 so that the release's
Python-float arithmetic is reproduced. After `normalize_to_box` they are relative to
the face box.

Two callers, two box conventions (both the release's):
- dataset preprocessing: pad 5 px, landmarks normalised by the float box
  (`normalize_to_box(..., pixel_grid=False)`), sketch canvas from the float box size
  (`FaceBox.float_hw`);
- inference: pad 25 px, landmarks normalised by the integer pixel box
  (`pixel_grid=True`), sketch canvas from the crop's pixel size (`FaceBox.pixel_hw`).
`crop_face` is the one crop for both.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

import cv2
import numpy as np

from ip_lap_jax import array_checks

# --- Edge sets (MediaPipe's face_mesh_connections, written out so importing this
# module does not load MediaPipe; tests check them against MediaPipe's own sets).
LIPS: tuple[tuple[int, int], ...] = (
    (61, 146), (146, 91), (91, 181), (181, 84), (84, 17), (17, 314), (314, 405),
    (405, 321), (321, 375), (375, 291), (61, 185), (185, 40), (40, 39), (39, 37),
    (37, 0), (0, 267), (267, 269), (269, 270), (270, 409), (409, 291), (78, 95),
    (95, 88), (88, 178), (178, 87), (87, 14), (14, 317), (317, 402), (402, 318),
    (318, 324), (324, 308), (78, 191), (191, 80), (80, 81), (81, 82), (82, 13),
    (13, 312), (312, 311), (311, 310), (310, 415), (415, 308))
LEFT_EYE: tuple[tuple[int, int], ...] = (
    (263, 249), (249, 390), (390, 373), (373, 374), (374, 380), (380, 381),
    (381, 382), (382, 362), (263, 466), (466, 388), (388, 387), (387, 386),
    (386, 385), (385, 384), (384, 398), (398, 362))
LEFT_EYEBROW: tuple[tuple[int, int], ...] = (
    (276, 283), (283, 282), (282, 295), (295, 285), (300, 293), (293, 334),
    (334, 296), (296, 336))
RIGHT_EYE: tuple[tuple[int, int], ...] = (
    (33, 7), (7, 163), (163, 144), (144, 145), (145, 153), (153, 154), (154, 155),
    (155, 133), (33, 246), (246, 161), (161, 160), (160, 159), (159, 158),
    (158, 157), (157, 173), (173, 133))
RIGHT_EYEBROW: tuple[tuple[int, int], ...] = (
    (46, 53), (53, 52), (52, 65), (65, 55), (70, 63), (63, 105), (105, 66),
    (66, 107))
FACE_OVAL: tuple[tuple[int, int], ...] = (
    (10, 338), (338, 297), (297, 332), (332, 284), (284, 251), (251, 389),
    (389, 356), (356, 454), (454, 323), (323, 361), (361, 288), (288, 397),
    (397, 365), (365, 379), (379, 378), (378, 400), (400, 377), (377, 152),
    (152, 148), (148, 176), (176, 149), (149, 150), (150, 136), (136, 172),
    (172, 58), (58, 132), (132, 93), (93, 234), (234, 127), (127, 162),
    (162, 21), (21, 54), (54, 103), (103, 67), (67, 109), (109, 10))
# The release trims MediaPipe's oval to the jaw and cheeks: the forehead arc
# 162 -> 10 -> 389 is dropped (it would put forehead points into the pose set).
_FOREHEAD = frozenset({10, 338, 297, 332, 284, 251, 21, 54, 103, 67, 109})
FACE_OVAL_USED: tuple[tuple[int, int], ...] = tuple(
    e for e in FACE_OVAL if e[0] not in _FOREHEAD and e[1] not in _FOREHEAD)
NOSE: tuple[tuple[int, int], ...] = (
    (168, 6), (6, 197), (197, 195), (195, 5), (5, 4), (4, 45), (45, 220),
    (220, 115), (115, 48), (4, 275), (275, 440), (440, 344), (344, 278))

# Every edge drawn into a sketch, sorted for determinism (drawing order does not
# change the picture: all lines share one colour and are not blended).
CONNECTIONS: tuple[tuple[int, int], ...] = tuple(sorted(set(
    LIPS + LEFT_EYE + LEFT_EYEBROW + RIGHT_EYE + RIGHT_EYEBROW + FACE_OVAL_USED + NOSE)))

# Canonical order of the 131 points (the release's `ori_sequence_idx`).
CANONICAL_ORDER: np.ndarray = np.array([
    162, 127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378,
    379, 365, 397, 288, 361, 323, 454, 356, 389,
    70, 63, 105, 66, 107, 55, 65, 52, 53, 46,
    336, 296, 334, 293, 300, 276, 283, 282, 295, 285,
    168, 6, 197, 195, 5,
    48, 115, 220, 45, 4, 275, 440, 344, 278,
    33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7,
    362, 398, 384, 385, 386, 387, 388, 466, 263, 249, 390, 373, 374, 380, 381, 382,
    61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181,
    91, 146,
    78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178,
    88, 95], dtype=np.int64)
NUM_ALL, NUM_POSE, NUM_CONTENT = 131, 74, 57
NUM_MESH_POINTS = 478  # Face Mesh with refine_landmarks=True (468 + 10 iris points)

# Positions in CANONICAL_ORDER: pose = upper face (0-3 cheeks, 21-90), content = jaw
# (4-20) then lips (91-130). Concatenating pose ++ content and scattering back to
# these positions gives the canonical order (the release's `full_face_sequence`).
POSE_POSITIONS: np.ndarray = np.r_[0:4, 21:91]
CONTENT_POSITIONS: np.ndarray = np.r_[4:21, 91:131]
ALL_INDICES: np.ndarray = CANONICAL_ORDER  # MediaPipe indices, canonical order
POSE_INDICES: np.ndarray = CANONICAL_ORDER[POSE_POSITIONS]
CONTENT_INDICES: np.ndarray = CANONICAL_ORDER[CONTENT_POSITIONS]
# Edges as positions into the canonical [131] order, for drawing from [131, 2] arrays.
_POSITION_OF = {int(m): p for p, m in enumerate(CANONICAL_ORDER)}
CONNECTION_POSITIONS: np.ndarray = np.array(
    [(_POSITION_OF[a], _POSITION_OF[b]) for a, b in CONNECTIONS], dtype=np.int64)
LIP_OPENNESS_INDICES = (0, 17)  # mid upper lip, mid lower lip (MediaPipe indices)
# Where those two points sit in each point set `lip_openness` accepts, by its size.
_LIP_OPENNESS_POSITIONS: dict[int, tuple[int, int]] = {
    NUM_MESH_POINTS: LIP_OPENNESS_INDICES,
    NUM_ALL: tuple(_POSITION_OF[i] for i in LIP_OPENNESS_INDICES),
    NUM_CONTENT: tuple(int(np.flatnonzero(CONTENT_INDICES == i)[0])
                       for i in LIP_OPENNESS_INDICES),
}

# Default box paddings of the release, in pixels of the full frame.
DATASET_PAD_PX = 5
INFERENCE_PAD_PX = 25


def _edge_points(edges: Iterable[tuple[int, int]]) -> set[int]:
  return {i for e in edges for i in e}


def _check_index_sets() -> None:
  """Guards the hand-written tables against each other at import (cheap)."""
  all_points = _edge_points(CONNECTIONS)
  pose = _edge_points(NOSE + LEFT_EYE + LEFT_EYEBROW + RIGHT_EYE + RIGHT_EYEBROW) | {
      162, 127, 234, 93, 389, 356, 454, 323}
  assert set(CANONICAL_ORDER.tolist()) == all_points and len(CANONICAL_ORDER) == NUM_ALL
  assert set(POSE_INDICES.tolist()) == pose and len(POSE_INDICES) == NUM_POSE
  assert set(CONTENT_INDICES.tolist()) == all_points - pose
  assert len(CONTENT_INDICES) == NUM_CONTENT


_check_index_sets()


# --- Geometry -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FaceBox:
  """A face box in normalised image coordinates plus its integer pixel version.

  Attributes:
    x_min, x_max, y_min, y_max: box edges in [0, 1] (already padded and clamped).
    frame_hw: (height, width) of the full frame in pixels.
  """
  x_min: float
  x_max: float
  y_min: float
  y_max: float
  frame_hw: tuple[int, int]

  @property
  def pixel(self) -> tuple[int, int, int, int]:
    """(y1, y2, x1, x2): the release's `int(y_min*h), int(y_max*h), ...` slice bounds."""
    h, w = self.frame_hw
    return (int(self.y_min * h), int(self.y_max * h), int(self.x_min * w),
            int(self.x_max * w))

  @property
  def float_hw(self) -> tuple[float, float]:
    """Box size in (fractional) pixels; the dataset sketch canvas is derived from it."""
    h, w = self.frame_hw
    return ((self.y_max - self.y_min) * h, (self.x_max - self.x_min) * w)

  @property
  def pixel_hw(self) -> tuple[int, int]:
    """Size of the cropped pixels; the inference sketch canvas is derived from it."""
    y1, y2, x1, x2 = self.pixel
    return (y2 - y1, x2 - x1)


def _as_all_points(points: np.ndarray) -> np.ndarray:
  """[478, 2] mesh points or [131, 2] canonical points -> the 131 points [131, 2]."""
  points = np.asarray(points, dtype=np.float64)
  if points.shape == (NUM_MESH_POINTS, 2):
    return points[ALL_INDICES]
  array_checks.assert_shape(points, (NUM_ALL, 2))
  return points


def face_box(points: np.ndarray, pad_px: float, frame_hw: tuple[int, int]) -> FaceBox:
  """The release's face box: extent of the 131 points, padded by `pad_px`, clamped.

  Args:
    points: [478, 2] Face Mesh points or [131, 2] canonical points, normalised (x, y).
    pad_px: padding in full-frame pixels (5 for the dataset, 25 at inference).
    frame_hw: (height, width) of the frame.
  """
  pts = _as_all_points(points)
  h, w = int(frame_hw[0]), int(frame_hw[1])
  x_lo, y_lo = pts.min(axis=0)
  x_hi, y_hi = pts.max(axis=0)
  return FaceBox(
      x_min=max(float(x_lo) - pad_px / w, 0.0), x_max=min(float(x_hi) + pad_px / w, 1.0),
      y_min=max(float(y_lo) - pad_px / h, 0.0), y_max=min(float(y_hi) + pad_px / h, 1.0),
      frame_hw=(h, w))


def crop_face(frame: np.ndarray, box: FaceBox, size: int = 128) -> np.ndarray:
  """Crops the box's pixels and resizes them (OpenCV bilinear) to `size` x `size`.

  Args:
    frame: [H, W, 3] image (uint8 BGR as decoded).
  Returns:
    [size, size, 3], same dtype as `frame`.
  Raises:
    ValueError: the box is empty in pixels (a degenerate detection).
  """
  array_checks.assert_rank(frame, 3)
  if tuple(frame.shape[:2]) != box.frame_hw:
    raise ValueError(f"box was made for a {box.frame_hw} frame, got {frame.shape[:2]}")
  y1, y2, x1, x2 = box.pixel
  if y2 <= y1 or x2 <= x1:
    raise ValueError(f"empty face box {box.pixel}")
  return cv2.resize(frame[y1:y2, x1:x2], (size, size))


def normalize_to_box(points: np.ndarray, box: FaceBox, *, pixel_grid: bool = False
                     ) -> np.ndarray:
  """Re-expresses normalised image points relative to the face box.

  Args:
    points: [..., 2] (x, y) in normalised image coordinates.
    pixel_grid: False (dataset): `(x - x_min) / (x_max - x_min)` with the float box.
      True (inference): `(w*x - x1) / (x2 - x1)` with the integer pixel box, as the
      release's inference script does.
  Returns:
    [..., 2] float64.
  """
  points = np.asarray(points, dtype=np.float64)
  array_checks.assert_axis_dimension(points, -1, 2)
  if pixel_grid:
    h, w = box.frame_hw
    y1, y2, x1, x2 = box.pixel
    origin = np.array([x1, y1], np.float64)
    scale = np.array([x2 - x1, y2 - y1], np.float64)
    return (points * np.array([w, h], np.float64) - origin) / scale
  origin = np.array([box.x_min, box.y_min])
  scale = np.array([box.x_max - box.x_min, box.y_max - box.y_min])
  return (points - origin) / scale


def pose_content(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Splits points into (pose [74, 2], content [57, 2]) in canonical order.

  Args:
    points: [478, 2] Face Mesh points or [131, 2] canonical points (any coordinates).
  """
  pts = _as_all_points(points)
  return pts[POSE_POSITIONS], pts[CONTENT_POSITIONS]


def content_and_pose_to_all(pose: np.ndarray, content: np.ndarray) -> np.ndarray:
  """Inverse of `pose_content`: (pose [..., 74, 2], content [..., 57, 2]) -> [..., 131, 2].

  Used to draw sketches from predicted content and the template's pose.
  """
  pose = np.asarray(pose)
  content = np.asarray(content)
  array_checks.assert_axis_dimension(pose, -2, NUM_POSE)
  array_checks.assert_axis_dimension(content, -2, NUM_CONTENT)
  out = np.empty(pose.shape[:-2] + (NUM_ALL, pose.shape[-1]),
                 np.result_type(pose, content))
  out[..., POSE_POSITIONS, :] = pose
  out[..., CONTENT_POSITIONS, :] = content
  return out


def lip_openness(points: np.ndarray) -> np.ndarray:
  """Distance between mid upper lip (0) and mid lower lip (17), over any leading axes.

  The release ranks template frames by it to pick references; the demo correlates the
  predicted one with loudness. The point set is told by its size:

  Args:
    points: [..., 478, 2] Face Mesh points, [..., 131, 2] canonical points or
      [..., 57, 2] content points (canonical order), in any coordinates (image or box).
  Returns:
    [...] distances, in the dtype of `points` (float64 for integers); NaN where a
    frame's points are NaN (no face).
  """
  points = np.asarray(points)
  if not np.issubdtype(points.dtype, np.floating):
    points = points.astype(np.float64)
  array_checks.assert_axis_dimension(points, -1, 2)
  positions = _LIP_OPENNESS_POSITIONS.get(points.shape[-2] if points.ndim >= 2 else None)
  if positions is None:
    raise ValueError(f"lip_openness takes [..., P, 2] points with P in "
                     f"{sorted(_LIP_OPENNESS_POSITIONS)}, got shape {points.shape}")
  a, b = positions
  return np.linalg.norm(points[..., a, :] - points[..., b, :], axis=-1)


@dataclasses.dataclass(frozen=True)
class LandmarkResult:
  """Everything the pipeline needs from one frame's detection.

  Attributes:
    points: [478, 2] normalised image coordinates (x, y), float64.
    box: the padded face box.
    pose: [74, 2] box-normalised pose points, canonical order.
    content: [57, 2] box-normalised content points, canonical order.
    lip_openness: distance of points 0 and 17 in image coordinates.
  """
  points: np.ndarray
  box: FaceBox
  pose: np.ndarray
  content: np.ndarray
  lip_openness: float

  @property
  def all_points(self) -> np.ndarray:
    """[131, 2] box-normalised points in canonical order."""
    return content_and_pose_to_all(self.pose, self.content)


def analyze(points: np.ndarray, frame_hw: tuple[int, int], pad_px: float = DATASET_PAD_PX,
            *, pixel_grid: bool = False) -> LandmarkResult:
  """Box, box-normalised pose/content and lip openness from [478, 2] mesh points.

  Dataset preprocessing: defaults. Inference: `pad_px=INFERENCE_PAD_PX, pixel_grid=True`.
  """
  points = np.asarray(points, dtype=np.float64)
  array_checks.assert_shape(points, (NUM_MESH_POINTS, 2))
  box = face_box(points, pad_px, frame_hw)
  pose, content = pose_content(normalize_to_box(points[ALL_INDICES], box,
                                                pixel_grid=pixel_grid))
  return LandmarkResult(points=points, box=box, pose=pose, content=content,
                        lip_openness=float(lip_openness(points)))


# --- Detection ------------------------------------------------------------------

def _landmarks_to_array(landmark_list: Any) -> np.ndarray:
  return np.array([(p.x, p.y) for p in landmark_list.landmark], dtype=np.float64)


class FaceMeshDetector:
  """One MediaPipe Face Mesh pass per frame -> [478, 2] normalised points or None.

  Settings default to the release's (static image mode, one face, refined landmarks,
  detection confidence 0.5). Face Mesh finds faces with MediaPipe's *short-range* face
  detector, which misses faces smaller than about a quarter of the frame (a 256 px
  face in a 1920x1080 frame is missed). With `small_faces=True`, a frame without a
  face gets a second chance: the *full-range* detector (`face_detection`,
  model_selection=1, bundled in the wheel) locates the face, a square crop of
  `crop_scale` times the detection's larger side around it goes through Face Mesh
  again, and the points are mapped back to full-frame coordinates. Frames where the
  first pass succeeds are unaffected, so the setting never changes existing results.

  With `max_num_faces` > 1, `detect_all` returns every face found (up to that many);
  the face Face Mesh puts first is the same as with one face, with the same points (the
  landmark model runs on each detected face's own region), so `detect` is unchanged.

  Use as a context manager or call `close()`; one instance per process (MediaPipe
  graphs are not shared across processes).
  """

  def __init__(self, static_image_mode: bool = True, max_num_faces: int = 1,
               refine_landmarks: bool = True, min_detection_confidence: float = 0.5,
               small_faces: bool = False, crop_scale: float = 2.0):
    # MediaPipe is imported here: its import is slow and array users do not need it.
    import mediapipe as mp

    self._mesh = mp.solutions.face_mesh.FaceMesh(
        static_image_mode=static_image_mode, max_num_faces=max_num_faces,
        refine_landmarks=refine_landmarks,
        min_detection_confidence=min_detection_confidence)
    self._full_range = None
    if small_faces:
      self._full_range = mp.solutions.face_detection.FaceDetection(
          model_selection=1, min_detection_confidence=min_detection_confidence)
    self.small_faces = small_faces
    self.crop_scale = crop_scale

  def __enter__(self) -> "FaceMeshDetector":
    return self

  def __exit__(self, *exc: object) -> None:
    self.close()

  def close(self) -> None:
    for graph in (self._mesh, self._full_range):
      if graph is not None:
        graph.close()
    self._mesh = self._full_range = None

  def _mesh_faces(self, rgb: np.ndarray) -> list[np.ndarray]:
    if self._mesh is None:
      raise RuntimeError("FaceMeshDetector is closed")
    result = self._mesh.process(rgb)
    return [_landmarks_to_array(face) for face in result.multi_face_landmarks or ()]

  def _mesh_points(self, rgb: np.ndarray) -> np.ndarray | None:
    faces = self._mesh_faces(rgb)
    return faces[0] if faces else None

  def detect(self, frame_bgr: np.ndarray) -> np.ndarray | None:
    """Face Mesh on one frame.

    Args:
      frame_bgr: [H, W, 3] uint8, OpenCV channel order.
    Returns:
      [478, 2] float64 (x, y) normalised to the full frame, or None if no face.
    """
    array_checks.assert_rank(frame_bgr, 3)
    array_checks.assert_axis_dimension(frame_bgr, 2, 3)
    return self.detect_rgb(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB))

  __call__ = detect

  def detect_rgb(self, frame_rgb: np.ndarray) -> np.ndarray | None:
    """`detect` for a frame already in RGB order (what MediaPipe takes).

    Args:
      frame_rgb: [H, W, 3] uint8 (e.g. `video.iter_frames(..., pixel_format="rgb24")`),
        which spares `detect`'s full-frame colour conversion.
    Returns:
      as `detect`.
    """
    array_checks.assert_rank(frame_rgb, 3)
    array_checks.assert_axis_dimension(frame_rgb, 2, 3)
    # MediaPipe takes C-contiguous pixels only (`iter_frames`' frames already are).
    frame_rgb = np.ascontiguousarray(frame_rgb)
    points = self._mesh_points(frame_rgb)
    if points is None and self._full_range is not None:
      points = self._detect_small(frame_rgb)
    return points

  def detect_all(self, frame_bgr: np.ndarray) -> list[np.ndarray]:
    """Every face of one frame (at most `max_num_faces`): a list of [478, 2] float64
    (x, y) normalised to the full frame, empty if none. BGR input, as `detect`."""
    array_checks.assert_rank(frame_bgr, 3)
    array_checks.assert_axis_dimension(frame_bgr, 2, 3)
    return self.detect_all_rgb(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB))

  def detect_all_rgb(self, frame_rgb: np.ndarray) -> list[np.ndarray]:
    """`detect_all` for an RGB frame. The small-face second chance (when enabled and no
    face was found) adds at most one face."""
    array_checks.assert_rank(frame_rgb, 3)
    array_checks.assert_axis_dimension(frame_rgb, 2, 3)
    frame_rgb = np.ascontiguousarray(frame_rgb)
    faces = self._mesh_faces(frame_rgb)
    if not faces and self._full_range is not None:
      small = self._detect_small(frame_rgb)
      faces = [] if small is None else [small]
    return faces

  def _detect_small(self, rgb: np.ndarray) -> np.ndarray | None:
    detections = self._full_range.process(rgb).detections
    if not detections:
      return None
    h, w = rgb.shape[:2]
    best = max(detections, key=lambda d: d.score[0])
    rel = best.location_data.relative_bounding_box
    cx, cy = (rel.xmin + rel.width / 2) * w, (rel.ymin + rel.height / 2) * h
    side = self.crop_scale * max(rel.width * w, rel.height * h)
    x0, y0 = int(max(cx - side / 2, 0)), int(max(cy - side / 2, 0))
    x1, y1 = int(min(cx + side / 2, w)), int(min(cy + side / 2, h))
    if x1 - x0 < 8 or y1 - y0 < 8:
      return None
    crop = np.ascontiguousarray(rgb[y0:y1, x0:x1])
    points = self._mesh_points(crop)
    if points is None:
      return None
    scale = np.array([(x1 - x0) / w, (y1 - y0) / h])
    return points * scale + np.array([x0 / w, y0 / h])


def points_from_mapping(points_by_index: Mapping[int, tuple[float, float]]
                        ) -> np.ndarray:
  """{mediapipe_index: (x, y)} for all 131 points -> [131, 2] canonical array."""
  missing = [int(i) for i in CANONICAL_ORDER if int(i) not in points_by_index]
  if missing:
    raise KeyError(f"missing landmark indices {missing[:10]}")
  return np.array([points_by_index[int(i)] for i in CANONICAL_ORDER], np.float64)
