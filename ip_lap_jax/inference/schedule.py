"""Which frames go where: output length, template playback, windows and references.

Pure numpy on frame indices, no media and no models. Output position j shows template
frame `pingpong(j)`; window k covers output positions k..k+4 and renders the centre one,
k+2 (the first window also fills positions 0 and 1); frame j of a window uses mel chunk
max(0, j - 2).
"""

from __future__ import annotations

import numpy as np

from ip_lap_jax.constants import CENTRE, FPS, WINDOW
from ip_lap_jax.media import audio as audio_lib


def output_frame_count(num_samples: int, sample_rate: int = audio_lib.SAMPLE_RATE) -> int:
  """Output frames for audio of `num_samples`: round(duration * 25)."""
  return int(round(num_samples * FPS / sample_rate))


def pingpong(position: int | np.ndarray, length: int) -> int | np.ndarray:
  """Template frame shown at output position: 0..L-1, then L-1..0, repeated."""
  r = np.mod(position, 2 * length)
  return np.where(r < length, r, 2 * length - 1 - r)


def select_references(openness: np.ndarray, count: int) -> np.ndarray:
  """Frames at evenly spaced ranks of the lip-openness order (release: linspace ranks).

  Args:
    openness: [F] lip openness per frame, NaN for frames without a face.
    count: how many references (repeats happen when fewer frames have a face).
  Returns:
    int [count] frame indices into `openness`, from most closed to most open.
  """
  valid = np.flatnonzero(~np.isnan(openness))
  if valid.size == 0:
    raise ValueError("no frame with a face")
  order = valid[np.argsort(openness[valid], kind="stable")]
  ranks = np.linspace(0, valid.size - 1, count).astype(np.int64)
  return order[ranks]


def nearest_valid(valid: np.ndarray) -> np.ndarray:
  """[F] bool -> [F] int: each frame's nearest frame with a face (itself if it has one)."""
  idx = np.flatnonzero(valid)
  if idx.size == 0:
    raise ValueError("no frame with a face")
  pos = np.searchsorted(idx, np.arange(valid.size))
  lo = idx[np.clip(pos - 1, 0, idx.size - 1)]
  hi = idx[np.clip(pos, 0, idx.size - 1)]
  frames = np.arange(valid.size)
  return np.where(np.abs(frames - lo) <= np.abs(hi - frames), lo, hi)


def window_positions(window: int) -> np.ndarray:
  """Output positions of window k's frames: k..k+4 (the centre is k+2)."""
  return window + np.arange(WINDOW)


def window_mel_indices(window: int, num_chunks: int) -> np.ndarray:
  """Mel chunk of each frame of window k: max(0, j - 2), capped at the last chunk."""
  return np.minimum(np.maximum(window_positions(window) - CENTRE, 0), num_chunks - 1)


def window_outputs(window: int) -> list[int]:
  """Output positions a window's rendered frame fills (the first window: 0, 1 and 2)."""
  return [0, 1, 2] if window == 0 else [window + CENTRE]


def num_windows(num_out: int) -> int:
  """Windows that fill `num_out` output frames (each renders one centre frame)."""
  return num_out - CENTRE
