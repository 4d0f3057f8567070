"""The demo's synthetic talking face: deterministic, and its mouth follows the loudness."""

import numpy as np

from ip_lap_jax.face import landmarks
from ip_lap_jax.data import synthetic


def test_speech_is_deterministic_and_has_pauses():
  a = synthetic.synth_speech(3.0, seed=5)
  b = synthetic.synth_speech(3.0, seed=5)
  c = synthetic.synth_speech(3.0, seed=6)
  assert a.dtype == np.float32 and a.shape == (48000,)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  loudness = synthetic.frame_loudness(a, 75)
  # Voiced syllables and silences both occur.
  assert loudness.max() > 10 * np.percentile(loudness, 5)
  assert np.max(np.abs(a)) <= 1.0


def test_face_mesh_openness_follows_the_driving_openness():
  actor = synthetic.TalkingPhoto.from_photo(synthetic.default_photo())
  levels = [0.0, 0.5, 1.0]
  measured = []
  with landmarks.FaceMeshDetector() as detector:
    for level in levels:
      points = detector.detect(actor.render(level, shift=(1.0, -1.0), angle_deg=1.0))
      assert points is not None
      measured.append(landmarks.lip_openness(points))
  assert measured[0] < measured[1] < measured[2]
  assert measured[2] - measured[0] > 0.01


def test_clip_is_deterministic():
  actor = synthetic.TalkingPhoto.from_photo(synthetic.default_photo())
  a = synthetic.make_clip(actor, 0.4, seed=3)
  b = synthetic.make_clip(actor, 0.4, seed=3)
  assert len(a.frames) == 10 and a.frames[0].shape == (256, 256, 3)
  np.testing.assert_array_equal(np.stack(a.frames), np.stack(b.frames))
  np.testing.assert_array_equal(a.openness, synthetic.loudness_to_openness(a.loudness))
