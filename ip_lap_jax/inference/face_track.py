"""Where the face is in each template frame: Face Mesh once per frame, cached on disk.

`detect_template` runs Face Mesh on every frame at 25 fps, in one process per usable
core (`face.video_mesh`; the same result as one pass), looking for up to `MAX_FACES`
faces, and keeps one: the face `--face` chooses, followed from frame to frame
(`face.selection`; a frame where it is lost counts as a frame without a face). The
result is cached under `cache_dir`, keyed by the template's SHA-256, the detector
settings and the choice;
`frame_geometry` derives what inference uses from it: the release's 25 px padded face
box, landmarks normalised to the integer pixel box, and lip openness.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import tempfile

import cv2
import numpy as np

from ip_lap_jax.constants import FACE_SIZE, FPS
from ip_lap_jax.errors import require_file
from ip_lap_jax.face import landmarks
from ip_lap_jax.face import selection
from ip_lap_jax.face import sketch
from ip_lap_jax.face import video_mesh
from ip_lap_jax.files import file_sha256
from ip_lap_jax.media import video

_DETECTION_CACHE_VERSION = 2  # 2: several faces per frame, one chosen (`face`)
# Faces Face Mesh looks for in a frame; the chosen one is among them. More only cost
# time in frames that have that many faces.
MAX_FACES = 6


@dataclasses.dataclass(frozen=True)
class FaceTrack:
  """Face Mesh results of a template at 25 fps.

  Attributes:
    points: [F, 131, 2] float64 canonical points normalised to the frame (x, y); NaN
      rows for frames without a face.
    frame_hw: (height, width) of the frames.
  """
  points: np.ndarray
  frame_hw: tuple[int, int]

  @property
  def num_frames(self) -> int:
    return self.points.shape[0]

  @property
  def valid(self) -> np.ndarray:
    return ~np.isnan(self.points[:, 0, 0])


def default_cache_dir() -> pathlib.Path:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(base) / "ip_lap_jax"


def _detection_cache_path(template: str, cache_dir: str | os.PathLike[str] | None,
                          small_faces: bool, face: selection.FaceChoice) -> pathlib.Path:
  import mediapipe  # its version is part of the key: another model finds other points

  settings = {"version": _DETECTION_CACHE_VERSION, "fps": FPS, "small_faces": small_faces,
              "mediapipe": mediapipe.__version__, "refine_landmarks": True,
              "min_detection_confidence": 0.5, "max_num_faces": MAX_FACES,
              "face": face.key()}
  key = hashlib.sha256(
      (file_sha256(template) + json.dumps(settings, sort_keys=True)).encode()).hexdigest()
  root = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
  return root / "face_tracks" / f"{key[:32]}.npz"


def choose_faces(faces: list[list[np.ndarray]], face: selection.FaceChoice,
                 frame_hw: tuple[int, int]) -> np.ndarray:
  """The chosen face of every frame, followed by box overlap (`selection.FaceTracker`).

  Args:
    faces: per frame, the faces found ([131, 2] points each, normalised to the frame).
  Returns:
    [F, 131, 2] float64; NaN rows where the face is not there (or not yet chosen).
  """
  tracker = selection.FaceTracker(face, frame_hw)
  rows = np.full((len(faces), landmarks.NUM_ALL, 2), np.nan)
  for i, found in enumerate(faces):
    points = tracker.update(found)
    if points is not None:
      rows[i] = points
  return rows


def detect_template(template: str | os.PathLike[str], *, small_faces: bool = False,
                    cache_dir: str | os.PathLike[str] | None = None,
                    use_cache: bool = True,
                    face: selection.FaceChoice = selection.FaceChoice()
                    ) -> tuple[FaceTrack, bool]:
  """Face Mesh on every template frame (at 25 fps), the chosen face kept, cached on disk.

  Returns:
    (track, from_cache).
  """
  template = require_file(template)
  cache_path = _detection_cache_path(template, cache_dir, small_faces, face)
  if use_cache and cache_path.is_file():
    with np.load(cache_path) as data:
      return FaceTrack(points=data["points"], frame_hw=tuple(int(v) for v in data["frame_hw"])), True
  faces, frame_hw = detect_points(template, small_faces=small_faces)
  found = [[f for f in frame if not np.isnan(f).any()] for frame in faces]
  track = FaceTrack(points=choose_faces(found, face, frame_hw), frame_hw=frame_hw)
  if use_cache:
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_path.parent, suffix=".npz")
    os.close(fd)
    np.savez(tmp, points=track.points, frame_hw=np.array(track.frame_hw))
    os.replace(tmp, cache_path)  # atomic: a reader never sees half a file
  return track, False


def detect_points(template: str, *, small_faces: bool = False,
                  workers: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
  """Face Mesh on every template frame, uncached: (faces [F, MAX_FACES, 131, 2], NaN rows
  after each frame's last face, (height, width)).

  Args:
    workers: processes; None: one per usable core, at most one per
      `video_mesh.MIN_FRAMES_PER_WORKER` frames (a short clip or a still runs here).
  """
  info = video.probe(template)
  num_frames = 1 if video.is_image(template) else int(round(info.duration * FPS))
  if workers is None:
    workers = video_mesh.worker_count(num_frames, len(os.sched_getaffinity(0)))
  return video_mesh.detect_video(template, small_faces=small_faces, max_faces=MAX_FACES,
                                 workers=workers, num_frames=num_frames)


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
  """[H, W, C] -> [size, size, C] (area interpolation; unchanged if already that size)."""
  if img.shape[0] == size and img.shape[1] == size:
    return img
  return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


@dataclasses.dataclass(frozen=True)
class FrameGeometry:
  """Per template frame, derived from a track (arrays over its F frames).

  Attributes:
    boxes: [F, 4] int pixel face boxes (y1, y2, x1, x2).
    pose: [F, 74, 2], content: [F, 57, 2] float32 box-normalised landmarks.
    openness: [F] lip openness in image coordinates, NaN without a usable face.
    usable: [F] bool, the frame has a face with a non-empty box.
  """
  boxes: np.ndarray
  pose: np.ndarray
  content: np.ndarray
  openness: np.ndarray
  usable: np.ndarray

  def face(self, frame: np.ndarray, index: int, size: int) -> np.ndarray:
    """The face of template frame `index` as the renderer takes it.

    Args:
      frame: uint8 [H, W, 3], that template frame.
    Returns:
      float32 [size, size, 3] in [0, 1]: the box crop at 128 px (the release's), then
      resized to `size`.
    """
    y1, y2, x1, x2 = self.boxes[index]
    crop = cv2.resize(frame[y1:y2, x1:x2], (FACE_SIZE, FACE_SIZE))
    return resize_square(crop, size).astype(np.float32) / 255.0

  def sketch(self, pose: np.ndarray, content: np.ndarray, index: int) -> np.ndarray:
    """Sketch of pose [74, 2] + content [57, 2] on the box of frame `index`.

    Returns:
      float32 [128, 128, 3] in [0, 1], drawn for the box's pixel size
      (`sketch.draw_sketch`).
    """
    y1, y2, x1, x2 = self.boxes[index]
    points = landmarks.content_and_pose_to_all(pose.astype(np.float64), content.astype(np.float64))
    return sketch.draw_sketch(points, (int(y2 - y1), int(x2 - x1)))


def frame_geometry(track: FaceTrack, pad: int) -> FrameGeometry:
  """Boxes padded by `pad` px, landmarks normalised to the pixel box, lip openness."""
  f = track.num_frames
  boxes = np.zeros((f, 4), np.int64)
  pose = np.zeros((f, landmarks.NUM_POSE, 2), np.float32)
  content = np.zeros((f, landmarks.NUM_CONTENT, 2), np.float32)
  usable = track.valid.copy()
  for i in np.flatnonzero(usable):
    pts = track.points[i]
    box = landmarks.face_box(pts, pad, track.frame_hw)
    y1, y2, x1, x2 = box.pixel
    if y2 <= y1 or x2 <= x1:  # a degenerate detection: treat as no face
      usable[i] = False
      continue
    boxes[i] = box.pixel
    pose[i], content[i] = landmarks.pose_content(
        landmarks.normalize_to_box(pts, box, pixel_grid=True))
  openness = np.where(usable, landmarks.lip_openness(track.points), np.nan)
  return FrameGeometry(boxes, pose, content, openness, usable)
