"""Face Mesh on every frame of a video at 25 fps, in parallel worker processes.

Static-image Face Mesh treats each frame alone, so a video splits into contiguous
chunks of frames, one worker process per chunk, each with its own `FaceMeshDetector`,
and the chunks' rows concatenated in order equal a sequential pass exactly. A worker
decodes from the start of the file (`video.iter_frames` cannot seek) and runs Face Mesh
on its own chunk only; decoding is a small part of a frame's cost next to Face Mesh.

Workers fork from a forkserver that preloads this module, the video reader and
MediaPipe; nothing here imports JAX (`ip_lap_jax.inference` does), so a worker is ready
in a fraction of a second instead of paying the framework's import.
"""

from __future__ import annotations

import multiprocessing
import os

import numpy as np

from ip_lap_jax.constants import FPS
from ip_lap_jax.face import landmarks

# Frames below which another worker process costs more (its start, MediaPipe's graph)
# than it saves.
MIN_FRAMES_PER_WORKER = 24

_PRELOAD = ("ip_lap_jax.face.video_mesh", "ip_lap_jax.media.video", "mediapipe")


def frame_points(detector: landmarks.FaceMeshDetector, frame_bgr: np.ndarray) -> np.ndarray:
  """The face of one frame as the template track keeps it.

  Args:
    frame_bgr: uint8 [H, W, 3].
  Returns:
    float64 [131, 2] canonical points normalised to the frame (x, y), NaN without a face.
  """
  points = detector.detect(frame_bgr)
  if points is None:
    return np.full((landmarks.NUM_ALL, 2), np.nan)
  return points[landmarks.ALL_INDICES]


def _detect_range(path: str, small_faces: bool, start: int, stop: int | None,
                  decoder_threads: int) -> tuple[np.ndarray, tuple[int, int] | None]:
  """Rows of frames [start, stop) (stop None: to the end); (rows [n, 131, 2], frame hw)."""
  from ip_lap_jax.media import video

  rows, frame_hw = [], None
  with landmarks.FaceMeshDetector(small_faces=small_faces) as detector:
    frames = video.iter_frames(path, fps=FPS, threads=decoder_threads)
    try:
      for i, frame in enumerate(frames):
        frame_hw = (int(frame.shape[0]), int(frame.shape[1]))
        if stop is not None and i >= stop:
          break
        if i >= start:
          rows.append(frame_points(detector, frame))
    finally:  # a generator holds an open container until closed
      close = getattr(frames, "close", None)
      if close is not None:
        close()
  empty = np.zeros((0, landmarks.NUM_ALL, 2))
  return (np.stack(rows) if rows else empty), frame_hw


def _init_worker() -> None:
  import cv2

  cv2.setNumThreads(1)  # one process per core already


def _run_range(args: tuple) -> tuple[np.ndarray, tuple[int, int] | None]:
  return _detect_range(*args)


def worker_count(num_frames: int, cores: int) -> int:
  """Processes for a video of about `num_frames` frames: one per core, at least
  MIN_FRAMES_PER_WORKER frames each."""
  return max(1, min(cores, num_frames // MIN_FRAMES_PER_WORKER))


def detect_video(path: str | os.PathLike[str], *, small_faces: bool = False, workers: int = 1,
                 num_frames: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
  """Face Mesh on every frame of `path` at 25 fps.

  Args:
    workers: processes; 1 runs in this process.
    num_frames: the video's frames at 25 fps, roughly (it sets the chunk bounds only:
      the last chunk runs to the end, so any estimate gives the same result).
  Returns:
    (points float64 [F, 131, 2] as `frame_points`, (height, width)).
  Raises:
    MediaError: the video cannot be read or has no frames.
  """
  path = os.fspath(path)
  if workers <= 1 or not num_frames:
    rows, frame_hw = _detect_range(path, small_faces, 0, None, 0)
    return rows, frame_hw
  bounds = [k * num_frames // workers for k in range(workers)] + [None]
  jobs = [(path, small_faces, bounds[k], bounds[k + 1], 1) for k in range(workers)]
  ctx = multiprocessing.get_context("forkserver")
  ctx.set_forkserver_preload(list(_PRELOAD))
  with ctx.Pool(workers, initializer=_init_worker) as pool:
    parts = pool.map(_run_range, jobs, chunksize=1)
  frame_hw = next(hw for _, hw in parts if hw is not None)
  return np.concatenate([rows for rows, _ in parts]), frame_hw
