"""The release's on-disk dataset layout: readers and writers (the release's `preprocess_video.py`).

A clip is named `speaker/clip` (LRS2: `main/<speaker>/<clip>.mp4`). For each clip:

    <face_root>/<speaker>/<clip>/<frame>.png       128x128 BGR face crop
    <sketch_root>/<speaker>/<clip>/<frame>.png     128x128 sketch (lines 224 on black)
    <landmark_root>/<speaker>/<clip>/<frame>.npy   pickled dict, see below
    <audio_root>/<speaker>/<clip>/audio.npy        mel, float32 (M, 80)
    <audio_root>/<speaker>/<clip>/audio.wav        the clip's audio

`<frame>` is the 25 fps frame number without padding (`0.png`, `1.png`, ...); frames
without a detected face have no files (gaps in the numbering, as the release).

A landmark file holds `{'pose_landmarks': [(mediapipe_index, x, y), ...] (74),
'content_landmarks': [...] (57)}` with Python ints/floats, x and y normalised to the
face box, stored with `np.save(..., allow_pickle=True)`; the release lists the points
in ascending MediaPipe index order and every reader sorts them into the canonical
order, which `load_landmarks` does.

File lists: one `speaker/clip` per line; anything after the first space is ignored
(the release's reader does the same).

Names used by the training data loader (keep stable): `load_landmarks`,
`read_filelist`, `make_filelist`, `DatasetRoots`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import threading
from typing import Iterable

import cv2
import numpy as np

from ip_lap_jax import array_checks
from ip_lap_jax.face import landmarks

PathLike = str | os.PathLike[str]

_POSE_ORDER = np.argsort(landmarks.POSE_INDICES)  # canonical -> ascending mp index
_CONTENT_ORDER = np.argsort(landmarks.CONTENT_INDICES)
_CANONICAL_RANK = {int(m): r for r, m in enumerate(landmarks.CANONICAL_ORDER)}


@dataclasses.dataclass(frozen=True)
class DatasetRoots:
  """The four roots of the layout (the release's defaults are separate folders)."""
  face_root: pathlib.Path
  sketch_root: pathlib.Path
  landmark_root: pathlib.Path
  audio_root: pathlib.Path

  @classmethod
  def under(cls, output_dir: PathLike) -> "DatasetRoots":
    """`faces/`, `sketches/`, `landmarks/`, `audio/` inside one output folder."""
    out = pathlib.Path(output_dir)
    return cls(out / "faces", out / "sketches", out / "landmarks", out / "audio")

  def clip_dirs(self, clip: str) -> tuple[pathlib.Path, ...]:
    """The clip's folder under each root (face, sketch, landmark, audio)."""
    return tuple(pathlib.Path(r, clip) for r in
                 (self.face_root, self.sketch_root, self.landmark_root, self.audio_root))

  def face_path(self, clip: str, frame: int) -> pathlib.Path:
    return pathlib.Path(self.face_root, clip, f"{int(frame)}.png")

  def sketch_path(self, clip: str, frame: int) -> pathlib.Path:
    return pathlib.Path(self.sketch_root, clip, f"{int(frame)}.png")

  def landmark_path(self, clip: str, frame: int) -> pathlib.Path:
    return pathlib.Path(self.landmark_root, clip, f"{int(frame)}.npy")

  def mel_path(self, clip: str) -> pathlib.Path:
    return pathlib.Path(self.audio_root, clip, "audio.npy")

  def wav_path(self, clip: str) -> pathlib.Path:
    return pathlib.Path(self.audio_root, clip, "audio.wav")


# --- Landmarks ------------------------------------------------------------------

def landmark_dict(pose: np.ndarray, content: np.ndarray) -> dict[str, list]:
  """Canonical (pose [74, 2], content [57, 2]) -> the release's landmark dict."""
  pose = np.asarray(pose, np.float64)
  content = np.asarray(content, np.float64)
  array_checks.assert_shape(pose, (landmarks.NUM_POSE, 2))
  array_checks.assert_shape(content, (landmarks.NUM_CONTENT, 2))

  def entries(indices: np.ndarray, points: np.ndarray, order: np.ndarray) -> list:
    return [(int(indices[i]), float(points[i, 0]), float(points[i, 1])) for i in order]

  return {
      "pose_landmarks": entries(landmarks.POSE_INDICES, pose, _POSE_ORDER),
      "content_landmarks": entries(landmarks.CONTENT_INDICES, content, _CONTENT_ORDER),
  }


def save_landmarks(path: PathLike, pose: np.ndarray, content: np.ndarray) -> None:
  """Writes one frame's landmark file (`.npy` is appended by np.save if missing)."""
  np.save(path, landmark_dict(pose, content), allow_pickle=True)


def _sorted_points(entries: Iterable, expected: np.ndarray, what: str) -> np.ndarray:
  rows = sorted(((int(i), float(x), float(y)) for i, x, y in entries),
                key=lambda e: _CANONICAL_RANK.get(e[0], 1 << 30))
  got = np.array([r[0] for r in rows], np.int64)
  if got.shape != expected.shape or np.any(got != expected):
    raise ValueError(f"{what}: expected MediaPipe indices {len(expected)} of the "
                     f"canonical set, got {len(got)} ({sorted(set(got.tolist()) ^ set(expected.tolist()))[:8]} differ)")
  return np.array([(r[1], r[2]) for r in rows], np.float32)


def parse_landmark_dict(data: dict) -> tuple[np.ndarray, np.ndarray]:
  """The release's landmark dict -> (pose [74, 2], content [57, 2]) float32, canonical."""
  return (_sorted_points(data["pose_landmarks"], landmarks.POSE_INDICES, "pose_landmarks"),
          _sorted_points(data["content_landmarks"], landmarks.CONTENT_INDICES,
                         "content_landmarks"))


# np.load parses a .npy header with ast.literal_eval, and CPython 3.11's AST constructor
# keeps its recursion depth in interpreter-wide state (cpython#106905): loads in two
# loader threads at once failed with "SystemError: AST constructor recursion depth
# mismatch", which the samplers took for a corrupt file and replaced the example.
_NPY_LOCK = threading.Lock()


def _load_npy(path: PathLike, allow_pickle: bool = False) -> np.ndarray:
  with _NPY_LOCK:
    return np.load(path, allow_pickle=allow_pickle)


def load_landmarks(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
  """Reads a `<frame>.npy` landmark file.

  Returns:
    (pose [74, 2], content [57, 2]) float32, (x, y) box-normalised, canonical order.
  Raises:
    ValueError: the file does not hold the expected dict or index sets.
  """
  data = _load_npy(path, allow_pickle=True)
  if data.shape != () or not isinstance(data.item(), dict):
    raise ValueError(f"{path}: not a pickled landmark dict")
  try:
    return parse_landmark_dict(data.item())
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f"{path}: {e}") from e


# --- Images and audio -----------------------------------------------------------

def write_png(path: PathLike, image: np.ndarray) -> None:
  """Writes a uint8 [H, W, 3] BGR image as PNG (folders must exist)."""
  array_checks.assert_type(image, np.uint8)
  if not cv2.imwrite(os.fspath(path), image):
    raise OSError(f"{path}: cv2.imwrite failed")


def read_png(path: PathLike) -> np.ndarray:
  """Reads a face or sketch image: uint8 [H, W, 3] BGR."""
  image = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
  if image is None:
    raise OSError(f"{path}: unreadable image")
  return image


def save_mel(path: PathLike, mel: np.ndarray) -> None:
  """Stores a mel spectrogram [80, M] as the release does: transposed, (M, 80)."""
  mel = np.asarray(mel, np.float32)
  array_checks.assert_rank(mel, 2)
  array_checks.assert_axis_dimension(mel, 0, 80)
  np.save(path, mel.T)


def load_mel(path: PathLike) -> np.ndarray:
  """Reads `audio.npy` (M, 80) and returns it as [80, M] float32."""
  mel = _load_npy(path)
  if mel.ndim != 2 or mel.shape[1] != 80:
    raise ValueError(f"{path}: expected a (M, 80) mel, got {mel.shape}")
  return np.ascontiguousarray(mel.T, dtype=np.float32)


def frame_numbers(clip_dir: PathLike, suffix: str = ".npy") -> list[int]:
  """Sorted frame numbers of `<n><suffix>` files in a clip folder ([] if missing)."""
  try:
    names = os.listdir(clip_dir)
  except OSError:
    return []
  stems = (n[:-len(suffix)] for n in names if n.endswith(suffix))
  return sorted(int(s) for s in stems if s.isdigit())


# --- File lists -----------------------------------------------------------------

def read_filelist(path: PathLike) -> list[str]:
  """`speaker/clip` names from a list file (blank lines skipped, text after a space
  ignored)."""
  names = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      line = line.strip()
      if line:
        names.append(line.split()[0])
  return names


def write_filelist(path: PathLike, names: Iterable[str]) -> None:
  """Writes one name per line."""
  with open(path, "w", encoding="utf-8") as f:
    for name in names:
      f.write(f"{name}\n")


def make_filelist(folder: PathLike) -> list[str]:
  """Every `<speaker>/<clip>` folder two levels under `folder` (e.g. a landmark root),
  sorted; hidden folders are skipped."""
  root = pathlib.Path(folder)
  if not root.is_dir():
    return []
  names = []
  for speaker in sorted(p for p in root.iterdir() if p.is_dir()):
    if speaker.name.startswith("."):
      continue
    for clip in sorted(p for p in speaker.iterdir() if p.is_dir()):
      if not clip.name.startswith("."):
        names.append(f"{speaker.name}/{clip.name}")
  return names
