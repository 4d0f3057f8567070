"""Test clips of the preprocessed layout, and their generation by inference's code path.

A clip is read as its frames that have a face (the layout's numbering may have gaps):
the 128x128 crops (ground truth), the box-normalised pose and content landmarks, and
its 16 kHz audio. Generation runs the inference pipeline's steps on the crops instead of
a template video: Nl landmark and N image references at evenly spaced lip-openness ranks
(`inference.schedule.select_references`), windows of 5 frames with mel chunk
max(0, j - 2) (`schedule.window_*`), the landmark generator and the renderer through the
jitted, sharded `inference.predictor`, sketches drawn from the ground-truth pose and
the predicted content (`face.sketch`). The crop is the face box, so sketches are drawn
for a box of `box_px` pixels (default 128: the release's layout does not keep the box's
size; LRS2's faces are about that large).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from ip_lap_jax.constants import CENTRE, FACE_SIZE, FPS, WINDOW
from ip_lap_jax.data import layout
from ip_lap_jax.evaluation import lip_sync
from ip_lap_jax.face import landmarks
from ip_lap_jax.face import sketch
from ip_lap_jax.inference import predictor as predictor_lib
from ip_lap_jax.inference import schedule
from ip_lap_jax.inference.face_track import resize_square
from ip_lap_jax.media import audio as audio_lib


@dataclasses.dataclass(frozen=True)
class Clip:
  """One preprocessed clip, frames with a face only.

  Attributes:
    name: `speaker/clip`.
    faces: uint8 [T, 128, 128, 3] BGR ground-truth crops.
    pose: float32 [T, 74, 2], content: float32 [T, 57, 2] box-normalised landmarks.
    wav: float32 [S] its 16 kHz audio.
  """
  name: str
  faces: np.ndarray
  pose: np.ndarray
  content: np.ndarray
  wav: np.ndarray

  @property
  def num_frames(self) -> int:
    return len(self.faces)


def load_clip(roots: layout.DatasetRoots, name: str) -> Clip:
  """Reads a clip of the layout.

  Raises:
    ValueError / OSError: a file is missing or unreadable (the message names it).
  """
  frames = layout.frame_numbers(roots.landmark_root / name)
  if len(frames) < WINDOW:
    raise ValueError(f"{roots.landmark_root / name}: {len(frames)} frames with landmarks, "
                     f"at least {WINDOW} needed")
  pose, content = zip(*(layout.load_landmarks(roots.landmark_path(name, i)) for i in frames))
  faces = np.stack([layout.read_png(roots.face_path(name, i)) for i in frames])
  if faces.shape[1:] != (FACE_SIZE, FACE_SIZE, 3):
    raise ValueError(f"{roots.face_root / name}: crops are {faces.shape[1:3]}, not 128x128")
  wav_path = roots.wav_path(name)
  if not wav_path.is_file():
    raise FileNotFoundError(f"{wav_path}: no audio")
  return Clip(name, faces, np.stack(pose), np.stack(content),
              audio_lib.load_audio(os.fspath(wav_path)))


def fit_audio(wav: np.ndarray, num_frames: int) -> np.ndarray:
  """The driving audio made exactly `num_frames` video frames long: cut, or repeated
  (dubbing with a shorter clip's speech)."""
  samples = int(round(num_frames * audio_lib.SAMPLE_RATE / FPS))
  if wav.size == 0:
    raise ValueError("empty driving audio")
  reps = -(-samples // wav.size)
  return np.tile(wav, reps)[:samples]


class Generator:
  """Generates clips with a checkpoint's two models (see the module docstring).

  Args:
    saved: `inference.predictor.load_checkpoint(dir)`.
    num_refs, num_landmark_refs: N and Nl (release: 25 and 15).
    batch_size: windows per device call; dtype: compute dtype.
    box_px: face box size the sketches are drawn for.
    devices: devices to split each batch over (default: every device when they are
      accelerators; one CPU device otherwise: fake CPU devices share the same cores, so
      splitting a batch over them only adds partitioning and synchronisation).
  """

  def __init__(self, saved, *, num_refs: int = 25, num_landmark_refs: int = 15,
               batch_size: int = 8, dtype: str = "float32", box_px: int = FACE_SIZE,
               devices: list[jax.Device] | None = None):
    if devices is None:
      devices = lip_sync.default_devices()
    self.predictor = predictor_lib.Predictor(
        saved, dtype=dtype, batch_size=batch_size, render_size=None, num_refs=num_refs,
        num_landmark_refs=num_landmark_refs, devices=devices)
    self.compiled = self.predictor.compile()
    self.box_px = box_px

  @property
  def render_size(self) -> int:
    return self.predictor.render_size

  def _sketch(self, pose: np.ndarray, content: np.ndarray) -> np.ndarray:
    points = landmarks.content_and_pose_to_all(pose.astype(np.float64),
                                               content.astype(np.float64))
    drawn = sketch.draw_sketch(points, (self.box_px, self.box_px))
    return resize_square(drawn, self.render_size)

  def __call__(self, clip: Clip, driving_wav: np.ndarray) -> np.ndarray:
    """uint8 [T, S, S, 3] BGR generated crops for `clip` driven by `driving_wav`."""
    t, s, p = clip.num_frames, self.render_size, self.predictor
    mel_chunks = audio_lib.inference_mel_chunks(
        audio_lib.melspectrogram(fit_audio(driving_wav, t)))
    if len(mel_chunks) == 0:
      raise ValueError(f"{clip.name}: audio shorter than one mel window")
    openness = landmarks.lip_openness(clip.content)
    lmk = schedule.select_references(openness, p.num_landmark_refs)
    img = schedule.select_references(openness, p.num_refs)
    faces = np.stack([resize_square(f, s) for f in clip.faces]).astype(np.float32) / 255.0
    refs = (p.replicate(clip.pose[lmk]), p.replicate(clip.content[lmk]))
    ref_images = p.replicate(faces[img])
    ref_sketches = p.replicate(np.stack([self._sketch(clip.pose[i], clip.content[i])
                                         for i in img]))
    out = np.zeros((t, s, s, 3), np.uint8)
    windows = list(range(schedule.num_windows(t)))
    b = p.batch_size
    for first in range(0, len(windows), b):
      chunk = windows[first:first + b]
      rows = chunk + [chunk[0]] * (b - len(chunk))  # fixed shapes: pad with a repeat
      frames = np.stack([schedule.pingpong(schedule.window_positions(w), t) for w in rows])
      mels = np.stack([mel_chunks[schedule.window_mel_indices(w, len(mel_chunks))]
                       for w in rows])[..., None]
      pose = clip.pose[frames]
      content = self.compiled.predict_content(mels, pose, *refs)
      sketches = np.stack([[self._sketch(pose[r, k], content[r, k]) for k in range(WINDOW)]
                           for r in range(b)])
      rendered = np.asarray(self.compiled.render(faces[frames[:, CENTRE]], sketches,
                                                 ref_images, ref_sketches,
                                                 mels[:, CENTRE]))
      for r, w in enumerate(chunk):
        for position in schedule.window_outputs(w):
          out[position] = rendered[r]
    return out

