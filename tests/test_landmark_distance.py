"""LMD (`ip_lap_jax.evaluation.landmark_distance`) on generated face crops."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ip_lap_jax.data import synthetic
from ip_lap_jax.evaluation import landmark_distance
from ip_lap_jax.face import landmarks


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
  """10 face crops [10, 128, 128, 3] of the synthetic talking photo."""
  actor = synthetic.TalkingPhoto.from_photo(synthetic.default_photo(256))
  clip = synthetic.make_clip(actor, 0.4, seed=1)
  with landmarks.FaceMeshDetector() as detector:
    points = detector.detect(clip.frames[0])
  y1, y2, x1, x2 = landmarks.analyze(points, clip.frames[0].shape[:2]).box.pixel
  return np.stack([cv2.resize(f[y1:y2, x1:x2], (128, 128)) for f in clip.frames])


def test_zero_against_itself_and_a_shift_in_pixels(crops):
  with landmark_distance.MouthLandmarks() as detector:
    same = landmark_distance.clip_distances(crops, crops, detector)
    assert same.lmd == 0.0 and same.lmd_jaw_lips == 0.0
    assert same.frames_scored == same.frames_total == len(crops)
    # Shifting the generated crops by 2 px moves every landmark by about 2 px.
    shifted = landmark_distance.clip_distances(np.roll(crops, 2, axis=2), crops, detector)
    assert 1.5 < shifted.lmd < 2.5 and 1.5 < shifted.lmd_jaw_lips < 2.5
    # At 64 px the same shift is twice as far in the 128 crop's pixels.
    small = np.stack([cv2.resize(c, (64, 64)) for c in crops])
    half = landmark_distance.clip_distances(np.roll(small, 1, axis=2), small, detector)
    assert 1.2 < half.lmd < 3.0


def test_faceless_frames_are_not_scored(crops):
  blank = np.full_like(crops, 128)
  with landmark_distance.MouthLandmarks() as detector:
    result = landmark_distance.clip_distances(blank, crops, detector)
  assert result.frames_scored == 0 and np.isnan(result.lmd)
  with pytest.raises(ValueError, match="differ"):
    landmark_distance.clip_distances(crops[:2], crops[:3], None)
