"""Renderer examples, drawn as the release's `train_video_renderer.py` does.

A clip with >= `min_len` face images is picked uniformly; len = its number of images.
A window of 5 frames (by number) starts uniformly in [0, len - 5]; N reference images
are drawn without replacement from the clip's existing images. The target is the
window's centre frame, and the mel window is the centre frame's (Wav2Lip's rule). A
draw touching a missing face or sketch image, or a mel window outside the audio, is
replaced.

Example: face [S, S, 3] uint8 (the centre frame, BGR), sketches [5, S, S, 3] uint8,
ref_images [N, S, S, 3] uint8, ref_sketches [N, S, S, 3] uint8, mels [80, 16, 1] float32.
Images stay uint8 until they reach the device (4x less to move); the train step
divides by 255.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import cv2
import numpy as np

from ip_lap_jax.constants import WINDOW
from ip_lap_jax.media import audio
from ip_lap_jax.data import layout
from ip_lap_jax.data import pipeline

log = logging.getLogger(__name__)



@dataclasses.dataclass
class RendererSampler:
  """Draws renderer examples from the face, sketch and audio roots."""

  face_root: str
  sketch_root: str
  audio_root: str
  clips: list[tuple[str, np.ndarray]]  # (speaker/clip, sorted face frame numbers)
  ref_N: int = 3
  image_size: int = 128

  @classmethod
  def from_layout(cls, face_root: str, sketch_root: str, audio_root: str,
                  clip_list: str = "", *, ref_N: int = 3, image_size: int = 128,
                  min_len: int = 25) -> "RendererSampler":
    clips = []
    for name in pipeline.read_clip_list(clip_list, face_root):
      frames = layout.frame_numbers(os.path.join(face_root, name), ".png")
      if len(frames) >= min_len:
        clips.append((name, np.asarray(frames, np.int64)))
    if not clips:
      raise ValueError(f"no clip with >= {min_len} face images under {face_root}"
                       f" (list: {clip_list or 'all folders'})")
    log.info("renderer data: %d clips from %s", len(clips), clip_list or face_root)
    return cls(face_root, sketch_root, audio_root, clips, ref_N, image_size)

  def _image(self, root: str, clip: str, frame: int) -> np.ndarray:
    path = os.path.join(root, clip, f"{frame}.png")
    if not os.path.exists(path):
      raise pipeline.SampleError(f"gap at {path}", quiet=True)
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
      raise pipeline.SampleError(f"corrupt image {path}")
    if img.shape[:2] != (self.image_size, self.image_size):
      img = cv2.resize(img, (self.image_size, self.image_size))
    return img

  def _pairs(self, clip: str, frames: list[int]) -> tuple[np.ndarray, np.ndarray]:
    faces = [self._image(self.face_root, clip, f) for f in frames]
    sketches = [self._image(self.sketch_root, clip, f) for f in frames]
    return np.stack(faces), np.stack(sketches)

  def draw(self, rng: np.random.Generator) -> pipeline.Example:
    clip, frames = self.clips[int(rng.integers(len(self.clips)))]
    n = len(frames)
    start = int(rng.integers(0, n - WINDOW + 1))
    window = list(range(start, start + WINDOW))
    refs = [int(f) for f in rng.choice(frames, self.ref_N, replace=False)]
    faces, sketches = self._pairs(clip, window)
    ref_images, ref_sketches = self._pairs(clip, refs)
    mel = audio.training_mel_window(pipeline.load_mel(self.audio_root, clip), window[2])
    if mel is None:
      raise pipeline.SampleError(f"mel window of frame {window[2]} outside {clip}'s audio",
                                 quiet=True)
    return {
        "face": faces[2], "sketches": sketches, "ref_images": ref_images,
        "ref_sketches": ref_sketches, "mels": mel[..., None].astype(np.float32),
    }
