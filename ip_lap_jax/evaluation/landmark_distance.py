"""LMD: landmark distance between generated and ground-truth mouths.

Convention (this project's; the release publishes no evaluation code): Face Mesh (the
same detector and index sets as the landmark pipeline, `face.landmarks`) runs on each
128x128 face crop, generated and ground truth; LMD is the mean Euclidean distance, in
pixels of the 128 crop, between corresponding points, averaged over points and then over
the frames where both crops have a face. `lmd` uses the release's 40 lip points (the lip
part of its content set); `lmd_jaw_lips` all 57 content points (17 jaw + 40 lips).

Other papers compute LMD on dlib's 68 points, on other crops and often after aligning
the mouths: their numbers are not directly comparable with these.

Face Mesh finds faces poorly when they fill the whole image, so each crop is placed in
the middle of a grey canvas twice its size before detection and the points are mapped
back to the crop's pixels.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ip_lap_jax.face import landmarks

LIP_POINTS = landmarks.CONTENT_INDICES[17:]  # MediaPipe indices of the release's 40 lips
JAW_LIP_POINTS = landmarks.CONTENT_INDICES  # + the 17 jaw points
_CANVAS_GREY = 128


@dataclasses.dataclass(frozen=True)
class LandmarkDistances:
  """Per-clip LMD figures (NaN when no frame has a face in both crops)."""

  lmd: float
  lmd_jaw_lips: float
  frames_scored: int
  frames_total: int


class MouthLandmarks:
  """Face Mesh content points of face crops, in crop pixels: [57, 2] or None per crop.

  Use as a context manager (it owns a MediaPipe graph).
  """

  def __init__(self):
    self._detector = landmarks.FaceMeshDetector()

  def __enter__(self) -> "MouthLandmarks":
    return self

  def __exit__(self, *exc: object) -> None:
    self._detector.close()

  def __call__(self, crop_bgr: np.ndarray) -> np.ndarray | None:
    """crop_bgr: [S, S, 3] uint8 -> [57, 2] (x, y) in crop pixels, jaw then lips, or None."""
    h, w = crop_bgr.shape[:2]
    canvas = np.full((2 * h, 2 * w, 3), _CANVAS_GREY, np.uint8)
    canvas[h // 2:h // 2 + h, w // 2:w // 2 + w] = crop_bgr
    points = self._detector.detect(canvas)
    if points is None:
      return None
    pixels = points * np.array([2 * w, 2 * h]) - np.array([w // 2, h // 2])
    return pixels[JAW_LIP_POINTS]


def clip_distances(generated: np.ndarray, truth: np.ndarray, detector: MouthLandmarks
                   ) -> LandmarkDistances:
  """LMD of one clip: generated and ground-truth crops [T, S, S, 3] uint8, frame aligned.

  Distances are in pixels of a 128 crop (crops of another size are scaled to it).
  """
  if generated.shape != truth.shape:
    raise ValueError(f"generated {generated.shape} and ground truth {truth.shape} differ")
  scale = 128.0 / generated.shape[2]
  lips, jaw_lips = [], []
  for gen, gt in zip(generated, truth):
    a, b = detector(gen), detector(gt)
    if a is None or b is None:
      continue
    dist = np.linalg.norm((a - b) * scale, axis=-1)  # [57]
    jaw_lips.append(dist.mean())
    lips.append(dist[17:].mean())
  nan = float("nan")
  return LandmarkDistances(float(np.mean(lips)) if lips else nan,
                           float(np.mean(jaw_lips)) if jaw_lips else nan,
                           len(lips), len(generated))
