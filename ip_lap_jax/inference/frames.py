"""Template frames in playback order with bounded memory.

Inference plays the template forward and backward (`schedule.pingpong`); holding every
decoded frame would cost gigabytes for long templates, so `FrameReader` streams forward
steps and re-decodes bounded blocks for backward ones.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ip_lap_jax.constants import FPS
from ip_lap_jax.errors import MediaError
from ip_lap_jax.media import video


class FrameReader:
  """Template frames at 25 fps in any order, holding a bounded number of them.

  Forward steps stream from one decoder; a backward step decodes a block of frames
  ending at the requested one (from the start: `iter_frames` cannot seek) and serves
  the following backward steps from it. A context manager: leaving it closes the decoder.

  Args:
    path: the template.
    num_frames: its frames at 25 fps.
    frame_bytes: bytes of one decoded frame (H * W * 3).
    budget_bytes: most bytes of decoded frames held at once (at least one frame).
  """

  def __init__(self, path: str, num_frames: int, frame_bytes: int, budget_bytes: int):
    self._path = path
    self._block = max(1, min(num_frames, budget_bytes // max(frame_bytes, 1)))
    self._it: Iterator[np.ndarray] | None = None
    self._next = 0  # index of the frame self._it yields next
    self._cache: dict[int, np.ndarray] = {}

  @property
  def num_held(self) -> int:
    """Decoded frames held now (at most the budget's worth)."""
    return len(self._cache)

  def close(self) -> None:
    """Closes the decoder (a generator holding an open container)."""
    if self._it is not None and hasattr(self._it, "close"):
      self._it.close()
    self._it = None
    self._cache = {}

  def __enter__(self) -> FrameReader:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def _restart(self) -> None:
    self.close()
    self._it = iter(video.iter_frames(self._path, fps=FPS))
    self._next = 0

  def _advance_to(self, index: int) -> np.ndarray:
    if self._it is None or self._next > index:
      self._restart()
    frame = None
    while self._next <= index:
      try:
        frame = next(self._it)
      except StopIteration:
        raise MediaError(self._path, f"frame {index} vanished on re-reading") from None
      self._next += 1
    return frame

  def get(self, index: int) -> np.ndarray:
    """uint8 [H, W, 3] frame `index` (BGR, as decoded)."""
    if index in self._cache:
      return self._cache[index]
    if self._it is not None and index >= self._next:
      self._cache = {index: self._advance_to(index)}
    else:  # backwards: decode the block [lo, index]
      lo = max(0, index - self._block + 1)
      self._restart()
      self._cache = {}
      for i in range(lo, index + 1):
        self._cache[i] = self._advance_to(i)
    return self._cache[index]

  def take(self, index: int, again: bool = False) -> np.ndarray:
    """uint8 [H, W, 3] frame `index` for the caller to own: it may change it in place.

    The reader forgets the frame it hands over, so a change never reaches a later
    request (a later request for it decodes it again). `again`: the next request is for
    this index too (a ping-pong turn, a still photo), so the reader keeps its frame and
    hands over a copy instead of decoding twice.
    """
    frame = self.get(index)
    if again:
      return frame.copy()
    del self._cache[index]
    return frame
