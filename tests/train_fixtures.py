"""A tiny official-layout dataset for the training tests, written with numpy/cv2.

Every file encodes its frame number so tests can decode which frames a sampler drew:
landmark pose[0, 0] = frame / 1000 and pose[0, 1] = (clip ordinal + 1) / 100 (clips in
the order given); face image pixel (0, 0, 0) = frame, (0, 0, 1) = clip ordinal. Content
landmarks follow the mel loudness of the frame, a relation a model can learn.
"""

from __future__ import annotations

import pathlib

import cv2
import numpy as np

from ip_lap_jax.data import layout

FPS = 25


def build_layout(root: pathlib.Path, clips: dict[str, int], *, gaps: dict[str, list[int]] | None = None,
                 images: bool = True, seed: int = 0) -> dict[str, str]:
  """Writes faces/, sketches/, landmarks/, audio/ under root; returns the four roots.

  clips: speaker/clip -> number of frames; gaps: frames left out (no face found).
  """
  rng = np.random.default_rng(seed)
  roots = {k: str(root / k) for k in ("faces", "sketches", "landmarks", "audio")}
  gaps = gaps or {}
  for ordinal, (name, n) in enumerate(clips.items()):
    m = int(np.ceil(n * 80 / FPS)) + 16
    mel = np.clip(rng.standard_normal((80, m)).cumsum(axis=1) * 0.1, -4, 4).astype(np.float32)
    (root / "audio" / name).mkdir(parents=True, exist_ok=True)
    layout.save_mel(root / "audio" / name / "audio.npy", mel)
    base_pose = rng.uniform(0.2, 0.8, (74, 2)).astype(np.float32)
    base_content = rng.uniform(0.2, 0.8, (57, 2)).astype(np.float32)
    for sub in ("landmarks", "faces", "sketches"):
      (root / sub / name).mkdir(parents=True, exist_ok=True)
    for f in range(n):
      if f in gaps.get(name, ()):
        continue
      loud = float(mel[:, int(80 * f / FPS)].mean())
      pose = base_pose.copy()
      pose[0, 0] = f / 1000.0
      pose[0, 1] = (ordinal + 1) / 100.0
      content = base_content + np.float32(0.05 * loud)
      layout.save_landmarks(root / "landmarks" / name / f"{f}.npy", pose, content)
      if images:
        face = np.full((128, 128, 3), 60, np.uint8)
        cv2.circle(face, (64, 64), 30 + f % 10, (200, 150, 100), -1)
        face[0, 0, 0] = f
        face[0, 0, 1] = ordinal
        sketch = np.zeros((128, 128, 3), np.uint8)
        cv2.line(sketch, (20, 80 + f % 10), (108, 80 + f % 10), (224, 224, 224), 1)
        cv2.imwrite(str(root / "faces" / name / f"{f}.png"), face)
        cv2.imwrite(str(root / "sketches" / name / f"{f}.png"), sketch)
  return roots


def write_list(path: pathlib.Path, names: list[str]) -> str:
  layout.write_filelist(path, names)
  return str(path)


def train_test_layout(root: pathlib.Path) -> dict[str, str]:
  """build_layout of two training clips (s/a, s/b) and one test clip (t/c), with the
  file lists under 'train' and 'test'."""
  roots = build_layout(root, {"s/a": 40, "s/b": 35, "t/c": 30})
  roots["train"] = write_list(root / "train.txt", ["s/a", "s/b"])
  roots["test"] = write_list(root / "test.txt", ["t/c"])
  return roots
