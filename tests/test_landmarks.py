"""Index sets, face box / normalisation against the release's loops, Face Mesh on frames.

Face Mesh runs on the generated talking photo (a fresh clone has it) and, where the
sample folder is present, on a real speaker (`real:129.mp4`).
"""

import itertools

import numpy as np
import pytest

from ip_lap_jax.face import landmarks as L


def test_edge_sets_match_mediapipe():
  from mediapipe.python.solutions import face_mesh_connections as mpc
  for ours, theirs in [(L.LIPS, mpc.FACEMESH_LIPS), (L.LEFT_EYE, mpc.FACEMESH_LEFT_EYE),
                       (L.LEFT_EYEBROW, mpc.FACEMESH_LEFT_EYEBROW),
                       (L.RIGHT_EYE, mpc.FACEMESH_RIGHT_EYE),
                       (L.RIGHT_EYEBROW, mpc.FACEMESH_RIGHT_EYEBROW),
                       (L.FACE_OVAL, mpc.FACEMESH_FACE_OVAL)]:
    assert set(ours) == set(theirs)
  # The release's trimmed oval: 24 edges from 389 around the jaw to 162.
  assert len(L.FACE_OVAL_USED) == 24
  assert (389, 356) in L.FACE_OVAL_USED and (127, 162) in L.FACE_OVAL_USED
  assert (251, 389) not in L.FACE_OVAL_USED
  assert len(L.CONNECTIONS) == 40 + 16 + 8 + 16 + 8 + 24 + 13


def test_index_sets_counts_and_positions():
  points = {i for e in L.CONNECTIONS for i in e}
  assert len(points) == 131 and set(L.ALL_INDICES.tolist()) == points
  pose = {i for e in L.NOSE + L.LEFT_EYE + L.LEFT_EYEBROW + L.RIGHT_EYE + L.RIGHT_EYEBROW
          for i in e} | {162, 127, 234, 93, 389, 356, 454, 323}
  assert len(L.POSE_INDICES) == 74 and set(L.POSE_INDICES.tolist()) == pose
  assert len(L.CONTENT_INDICES) == 57
  assert set(L.CONTENT_INDICES.tolist()) == points - pose
  assert L.POSE_POSITIONS.tolist() == list(range(0, 4)) + list(range(21, 91))
  assert L.CONTENT_POSITIONS.tolist() == list(range(4, 21)) + list(range(91, 131))
  # Pose/content keep the canonical relative order (sorted by canonical position).
  rank = {int(m): r for r, m in enumerate(L.CANONICAL_ORDER)}
  assert [rank[int(i)] for i in L.POSE_INDICES] == sorted(rank[int(i)] for i in pose)
  assert L.CANONICAL_ORDER[:4].tolist() == [162, 127, 234, 93]
  assert L.CONTENT_INDICES[:3].tolist() == [132, 58, 172]  # jaw first
  assert L.CONTENT_INDICES[17:19].tolist() == [61, 185]  # then lips
  for a, b in L.CONNECTION_POSITIONS:
    assert (int(L.CANONICAL_ORDER[a]), int(L.CANONICAL_ORDER[b])) in L.CONNECTIONS


def test_content_and_pose_to_all_inverts_split():
  rng = np.random.default_rng(0)
  mesh = rng.uniform(size=(478, 2))
  pose, content = L.pose_content(mesh)
  assert pose.shape == (74, 2) and content.shape == (57, 2)
  full = L.content_and_pose_to_all(pose, content)
  np.testing.assert_array_equal(full, mesh[L.CANONICAL_ORDER])
  # Batched, as used for predicted windows.
  batched = L.content_and_pose_to_all(np.stack([pose] * 3), np.stack([content] * 3))
  assert batched.shape == (3, 131, 2)
  np.testing.assert_array_equal(batched[2], full)


def _release_dataset_box(mesh, h, w, pad):
  """The release's preprocessing loop, restated."""
  all_idx = set(L.ALL_INDICES.tolist())
  x_min, x_max, y_min, y_max = 999, -999, 999, -999
  pose, content = [], []
  pose_idx, content_idx = set(L.POSE_INDICES.tolist()), set(L.CONTENT_INDICES.tolist())
  for idx, (x, y) in enumerate(mesh.tolist()):
    if idx in all_idx:
      x_min, x_max, y_min, y_max = min(x_min, x), max(x_max, x), min(y_min, y), max(y_max, y)
    if idx in pose_idx:
      pose.append((idx, x, y))
    if idx in content_idx:
      content.append((idx, x, y))
  x_min, x_max = max(x_min - pad / w, 0), min(x_max + pad / w, 1)
  y_min, y_max = max(y_min - pad / h, 0), min(y_max + pad / h, 1)
  norm = lambda lst: {i: ((x - x_min) / (x_max - x_min), (y - y_min) / (y_max - y_min))
                      for i, x, y in lst}
  return (x_min, x_max, y_min, y_max), norm(pose), norm(content)


@pytest.mark.parametrize("pad", [5, 25])
def test_analyze_matches_release_loops(pad):
  rng = np.random.default_rng(pad)
  h, w = 180, 320
  mesh = rng.uniform(0.2, 0.8, size=(478, 2))
  mesh[L.ALL_INDICES[0]] = (0.001, 0.999)  # forces clamping on two sides
  res = L.analyze(mesh, (h, w), pad_px=pad)
  box, pose, content = _release_dataset_box(mesh, h, w, pad)
  assert (res.box.x_min, res.box.x_max, res.box.y_min, res.box.y_max) == box
  assert res.box.pixel == (int(box[2] * h), int(box[3] * h), int(box[0] * w), int(box[1] * w))
  np.testing.assert_allclose(res.pose, [pose[int(i)] for i in L.POSE_INDICES], rtol=0, atol=1e-12)
  np.testing.assert_allclose(res.content, [content[int(i)] for i in L.CONTENT_INDICES],
                             rtol=0, atol=1e-12)
  assert res.lip_openness == pytest.approx(np.hypot(*(mesh[0] - mesh[17])))


def test_pixel_grid_normalisation_is_inference_rule():
  rng = np.random.default_rng(3)
  h, w = 256, 200
  mesh = rng.uniform(0.3, 0.7, size=(478, 2))
  res = L.analyze(mesh, (h, w), pad_px=L.INFERENCE_PAD_PX, pixel_grid=True)
  y1, y2, x1, x2 = res.box.pixel
  for k, idx in enumerate(L.CONTENT_INDICES):
    x, y = mesh[idx]
    assert res.content[k, 0] == pytest.approx((w * x - x1) / (x2 - x1), abs=1e-12)
    assert res.content[k, 1] == pytest.approx((h * y - y1) / (y2 - y1), abs=1e-12)
  assert res.box.pixel_hw == (y2 - y1, x2 - x1)


def test_crop_face_shape_and_content():
  frame = np.zeros((100, 200, 3), np.uint8)
  frame[20:60, 50:130] = 200
  box = L.FaceBox(x_min=0.25, x_max=0.65, y_min=0.2, y_max=0.6, frame_hw=(100, 200))
  assert box.pixel == (20, 60, 50, 130)
  crop = L.crop_face(frame, box)
  assert crop.shape == (128, 128, 3) and crop.dtype == np.uint8
  assert (crop == 200).all()
  with pytest.raises(ValueError):
    L.crop_face(np.zeros((50, 50, 3), np.uint8), box)


def _frames(path, n):
  from ip_lap_jax.media import video
  return list(itertools.islice(video.iter_frames(path), n))


@pytest.fixture(scope="module")
def detector():
  with L.FaceMeshDetector() as det:
    yield det


FACE_CLIPS = ["square_30fps.mp4", "real:129.mp4"]


@pytest.mark.parametrize("clip", FACE_CLIPS, indirect=True)
def test_face_mesh_on_frames(clip, detector):
  frames = _frames(clip.path, 4)
  assert len(frames) == 4
  for frame in frames:
    mesh = detector.detect(frame)
    assert mesh is not None and mesh.shape == (478, 2)
    res = L.analyze(mesh, frame.shape[:2])
    assert res.pose.shape == (74, 2) and res.content.shape == (57, 2)
    inside = np.mean((res.all_points >= 0) & (res.all_points <= 1))
    assert inside > 0.95
    # The box's extreme points sit about pad px inside its edges.
    assert res.all_points.min() >= -1e-9 and res.all_points.max() <= 1 + 1e-9
    assert 0 < res.lip_openness < 0.2
    face = L.crop_face(frame, res.box)
    assert face.shape == (128, 128, 3)
  assert detector.detect(np.full((240, 320, 3), 127, np.uint8)) is None


@pytest.mark.parametrize("clip", FACE_CLIPS, indirect=True)
def test_small_faces_crop_and_retry(clip, detector):
  import cv2
  frame = _frames(clip.path, 1)[0]
  reference = detector.detect(frame)
  side, x0, y0 = 240, 900, 500
  big = np.full((1080, 1920, 3), 90, np.uint8)
  big[y0:y0 + side, x0:x0 + side] = cv2.resize(frame, (side, side))
  assert detector.detect(big) is None  # short-range detector misses it
  with L.FaceMeshDetector(small_faces=True) as small:
    found = small.detect(big)
  assert found is not None and found.shape == (478, 2)
  expected = (reference * side + np.array([x0, y0])) / np.array([1920, 1080])
  err_px = np.abs(found - expected) * np.array([1920, 1080])
  assert np.median(err_px) < 3.0
