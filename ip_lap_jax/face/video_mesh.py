"""Face Mesh on every frame of a video at 25 fps, in parallel worker processes.

Static-image Face Mesh treats each frame alone, so a video splits into contiguous
chunks of frames, the first run in the calling process and each other one in a worker
process, each with its own `FaceMeshDetector`, and the chunks' rows concatenated in
order equal a sequential pass exactly. A worker seeks to the keyframe before its chunk
(`video.iter_frames(start=...)`) rather than decoding the file from its start, which at
1080p costs about as much per frame as Face Mesh itself.

Workers are subprocesses running this module (`python -m ip_lap_jax.face.video_mesh`),
not a multiprocessing pool: forkserver and spawn workers re-import the parent's
`__main__` (`infer.py`, a benchmark), which imports JAX, and that cost several seconds
per worker. Here a worker imports numpy, OpenCV, PyAV and MediaPipe only, and hands its
rows back in an .npz file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import numpy as np

from ip_lap_jax.constants import FPS
from ip_lap_jax.errors import MediaError
from ip_lap_jax.face import landmarks

# Frames a worker must have to pay for its start (Python, MediaPipe's import and graph,
# seeking to its chunk), given that one process already keeps more than one core busy
# (threaded decoding and inference): on 2 cores a 1080p split breaks even near 200 frames
# per worker (benchmarks/README.md). Shorter templates run in the calling process.
MIN_FRAMES_PER_WORKER = 250


def frame_faces(detector: landmarks.FaceMeshDetector, frame_rgb: np.ndarray,
                max_faces: int) -> np.ndarray:
  """Every face of one frame as the template track keeps them.

  Args:
    frame_rgb: uint8 [H, W, 3], RGB order.
    max_faces: rows of the result (the detector's `max_num_faces`).
  Returns:
    float64 [max_faces, 131, 2] canonical points normalised to the frame (x, y), in
    Face Mesh's order, NaN rows after the last face found.
  """
  rows = np.full((max_faces, landmarks.NUM_ALL, 2), np.nan)
  for k, points in enumerate(detector.detect_all_rgb(frame_rgb)[:max_faces]):
    rows[k] = points[landmarks.ALL_INDICES]
  return rows


def _detect_range(path: str, small_faces: bool, max_faces: int, start: int, stop: int | None,
                  decoder_threads: int) -> tuple[np.ndarray, tuple[int, int] | None]:
  """Rows of frames [start, stop) (stop None: to the end); (rows [n, max_faces, 131, 2],
  frame hw)."""
  from ip_lap_jax.media import video

  rows, frame_hw = [], None
  with landmarks.FaceMeshDetector(small_faces=small_faces, max_num_faces=max_faces) as detector:
    frames = video.iter_frames(path, fps=FPS, pixel_format="rgb24", threads=decoder_threads,
                               start=start)
    try:
      for i, frame in enumerate(frames, start):
        if stop is not None and i >= stop:
          break
        frame_hw = (int(frame.shape[0]), int(frame.shape[1]))
        rows.append(frame_faces(detector, frame, max_faces))
    finally:  # a generator holds an open container until closed
      close = getattr(frames, "close", None)
      if close is not None:
        close()
  empty = np.zeros((0, max_faces, landmarks.NUM_ALL, 2))
  return (np.stack(rows) if rows else empty), frame_hw


def worker_count(num_frames: int, cores: int) -> int:
  """Processes for a video of about `num_frames` frames: one per core, at least
  MIN_FRAMES_PER_WORKER frames each."""
  return max(1, min(cores, num_frames // MIN_FRAMES_PER_WORKER))


def detect_video(path: str | os.PathLike[str], *, small_faces: bool = False, max_faces: int = 1,
                 workers: int = 1, num_frames: int | None = None
                 ) -> tuple[np.ndarray, tuple[int, int]]:
  """Face Mesh on every frame of `path` at 25 fps.

  Args:
    workers: processes; 1 runs in this process.
    num_frames: the video's frames at 25 fps, roughly (it sets the chunk bounds only:
      the last chunk runs to the end, so any estimate gives the same result).
  Returns:
    (points float64 [F, max_faces, 131, 2] as `frame_faces`, (height, width)).
  Raises:
    MediaError: the video cannot be read or has no frames.
  """
  path = os.fspath(path)
  if workers <= 1 or not num_frames:
    rows, frame_hw = _detect_range(path, small_faces, max_faces, 0, None, 0)
    return rows, frame_hw
  bounds = [k * num_frames // workers for k in range(workers)] + [None]
  # The workers import this package from where this process found it.
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [root] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
  with tempfile.TemporaryDirectory(prefix="ip_lap_jax_mesh_") as tmp:
    outs = [os.path.join(tmp, f"{k}.npz") for k in range(workers)]
    procs = []
    try:
      for k in range(1, workers):
        stop = "end" if bounds[k + 1] is None else str(bounds[k + 1])
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "ip_lap_jax.face.video_mesh", path, str(bounds[k]), stop,
             str(int(small_faces)), str(max_faces), outs[k]],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env))
      # The first chunk runs here meanwhile: MediaPipe is loaded already (the cache key
      # reads its version), so that chunk pays no start-up.
      first = _detect_range(path, small_faces, max_faces, 0, bounds[1], 0)
      errors = [proc.communicate()[1] for proc in procs]
    finally:  # on an interrupt, no worker outlives the run
      for proc in procs:
        if proc.poll() is None:
          proc.kill()
          proc.wait()
    parts = [first]
    for proc, out, stderr in zip(procs, outs[1:], errors):
      if proc.returncode:
        raise RuntimeError(f"{path}: Face Mesh worker failed:\n{stderr[-2000:]}")
      with np.load(out) as data:
        if "problem" in data.files:
          raise MediaError(path, str(data["problem"]))
        hw = tuple(int(v) for v in data["frame_hw"]) if data["frame_hw"].size else None
        parts.append((data["points"], hw))
  frame_hw = next(hw for _, hw in parts if hw is not None)
  return np.concatenate([rows for rows, _ in parts]), frame_hw


def main(argv: list[str]) -> None:
  """Worker: PATH START STOP|end SMALL_FACES(0/1) MAX_FACES OUT.npz -> rows of frames
  [START, STOP)."""
  import cv2

  cv2.setNumThreads(1)  # one process per core already
  path, start, stop, small_faces, max_faces, out = argv
  try:
    rows, frame_hw = _detect_range(path, small_faces == "1", int(max_faces), int(start),
                                   None if stop == "end" else int(stop), decoder_threads=1)
  except MediaError as e:
    np.savez(out, problem=e.problem)
    return
  np.savez(out, points=rows, frame_hw=np.array(frame_hw or (), np.int64))


if __name__ == "__main__":
  main(sys.argv[1:])
