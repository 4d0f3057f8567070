"""Landmark generator examples, drawn as the release's `train_landmarks_generator.py` does.

A clip (from the file list, kept if it has >= `min_len` landmark files) is picked
uniformly; its length is its number of landmark files, frames are addressed by number
(`<n>.npy`). A window of T consecutive frames starts uniformly in [2, len - T - 2]; Nl
distinct reference frames are drawn from the other frames of [0, len). A draw whose
window or references hit a missing file (a faceless frame left a gap in the numbering)
is replaced, as is one whose mel windows leave the audio.

Example (float32): mels [T, 80, 16, 1], pose [T, 74, 2], content [T, 57, 2],
ref_pose [Nl, 74, 2], ref_content [Nl, 57, 2]; last axis (x, y).
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np

from ip_lap_jax.media import audio
from ip_lap_jax.data import layout
from ip_lap_jax.data import pipeline

log = logging.getLogger(__name__)


@dataclasses.dataclass
class LandmarkSampler:
  """Draws landmark-generator examples from `<landmark_root>` and `<audio_root>`."""

  landmark_root: str
  audio_root: str
  clips: list[tuple[str, int]]  # (speaker/clip, number of landmark files)
  T: int = 5
  Nl: int = 15

  @classmethod
  def from_layout(cls, landmark_root: str, audio_root: str, clip_list: str = "", *,
                  T: int = 5, Nl: int = 15, min_len: int = 25) -> "LandmarkSampler":
    """Lists the clips (file list or folder) and keeps those with >= min_len frames."""
    clips = []
    for name in pipeline.read_clip_list(clip_list, landmark_root):
      n = len(layout.frame_numbers(os.path.join(landmark_root, name), ".npy"))
      if n >= min_len:
        clips.append((name, n))
    if not clips:
      raise ValueError(f"no clip with >= {min_len} landmark frames under {landmark_root}"
                       f" (list: {clip_list or 'all folders'})")
    log.info("landmark data: %d clips from %s", len(clips), clip_list or landmark_root)
    return cls(landmark_root, audio_root, clips, T, Nl)

  def _load(self, clip: str, frames: list[int]) -> tuple[np.ndarray, np.ndarray]:
    poses, contents = [], []
    for f in frames:
      path = os.path.join(self.landmark_root, clip, f"{f}.npy")
      if not os.path.exists(path):
        raise pipeline.SampleError(f"gap at {path}", quiet=True)
      try:
        pose, content = layout.load_landmarks(path)
      except Exception as e:  # any unreadable pickle is replaced, never fatal
        raise pipeline.SampleError(f"corrupt landmark file {path}: {e!r}") from e
      poses.append(pose)
      contents.append(content)
    return (np.asarray(poses, np.float32).reshape(len(frames), 74, 2),
            np.asarray(contents, np.float32).reshape(len(frames), 57, 2))

  def draw(self, rng: np.random.Generator) -> pipeline.Example:
    clip, n = self.clips[int(rng.integers(len(self.clips)))]
    start = int(rng.integers(2, n - self.T - 2 + 1))  # inclusive upper bound, as randint
    window = list(range(start, start + self.T))
    others = np.asarray([i for i in range(n) if i < start or i >= start + self.T])
    refs = [int(i) for i in rng.choice(others, self.Nl, replace=False)]
    ref_pose, ref_content = self._load(clip, refs)
    pose, content = self._load(clip, window)
    mel = pipeline.load_mel(self.audio_root, clip)
    mels = []
    for f in window:
      m = audio.training_mel_window(mel, f)
      if m is None:
        raise pipeline.SampleError(f"mel window of frame {f} outside {clip}'s audio", quiet=True)
      mels.append(m)
    return {
        "mels": np.stack(mels)[..., None].astype(np.float32),
        "pose": pose, "content": content, "ref_pose": ref_pose, "ref_content": ref_content,
    }
