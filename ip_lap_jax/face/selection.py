"""Which face speaks, when a frame has several, and following it from frame to frame.

`--face` picks the face in the first frame that has one (`largest`, the default; `center`,
nearest the frame's centre; `K`, the K-th from the left, counting from 0), or the face
overlapping a pixel box (`x,y,w,h`, chosen in the first frame where one overlaps it).
From then on the chosen face is followed by box overlap (IoU with its last known box),
so identity never jumps to another person: a frame where no face overlaps enough is
"lost" and passes through unchanged, and the face is picked up again when it returns
near where it was last seen.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels

MIN_TRACK_IOU = 0.3


@dataclasses.dataclass(frozen=True)
class FaceChoice:
  """A parsed `--face` value.

  Attributes:
    kind: 'largest', 'center', 'index' or 'box'.
    index: K for 'index'.
    box: (x, y, w, h) in pixels for 'box'.
  """

  kind: str = "largest"
  index: int | None = None
  box: tuple[int, int, int, int] | None = None

  @classmethod
  def parse(cls, text: str) -> FaceChoice:
    text = str(text).strip().lower()
    if text in ("largest", "center", "centre"):
      return cls("center" if text == "centre" else text)
    if re.fullmatch(r"\d+", text):
      return cls("index", index=int(text))
    parts = text.split(",")
    if len(parts) == 4 and all(re.fullmatch(r"\d+", p.strip()) for p in parts):
      x, y, w, h = (int(p) for p in parts)
      if w > 0 and h > 0:
        return cls("box", box=(x, y, w, h))
    raise ValueError(f"--face must be 'largest', 'center', a face number K (0 = leftmost) "
                     f"or a box 'x,y,w,h' in pixels, got {text!r}")

  def key(self) -> str:
    """A stable text for cache keys."""
    if self.kind == "index":
      return f"index:{self.index}"
    if self.kind == "box":
      return "box:" + ",".join(map(str, self.box))
    return self.kind


def mesh_box(points: np.ndarray, frame_hw: tuple[int, int]) -> Box:
  """Pixel bounding box of Face Mesh points `[P, 2]` normalised to the frame."""
  h, w = frame_hw
  x, y = points[:, 0] * w, points[:, 1] * h
  return float(x.min()), float(y.min()), float(x.max()), float(y.max())


def iou(a: Box, b: Box) -> float:
  """Intersection over union of two boxes."""
  ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = ix * iy
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


def _area(box: Box) -> float:
  return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def pick(boxes: Sequence[Box], choice: FaceChoice, frame_hw: tuple[int, int]) -> int | None:
  """Index of the face `choice` selects among `boxes` of one frame, or None."""
  if not boxes:
    return None
  if choice.kind == "largest":
    return int(np.argmax([_area(b) for b in boxes]))
  if choice.kind == "center":
    cy, cx = frame_hw[0] / 2, frame_hw[1] / 2
    return int(np.argmin([((b[0] + b[2]) / 2 - cx) ** 2 + ((b[1] + b[3]) / 2 - cy) ** 2
                          for b in boxes]))
  if choice.kind == "index":
    order = np.argsort([(b[0] + b[2]) / 2 for b in boxes], kind="stable")
    return int(order[choice.index]) if choice.index < len(boxes) else None
  x, y, w, h = choice.box
  target = (float(x), float(y), float(x + w), float(y + h))
  overlaps = [iou(b, target) for b in boxes]
  best = int(np.argmax(overlaps))
  return best if overlaps[best] > 0 else None


class FaceTracker:
  """Feeds on each frame's detected faces and returns the chosen face's points (or None).

  Usage:
    tracker = FaceTracker(FaceChoice.parse("largest"), frame_hw)
    for faces in detections:       # per frame: list of [478, 2] normalised points
      points = tracker.update(faces)
  """

  def __init__(self, choice: FaceChoice, frame_hw: tuple[int, int],
               min_iou: float = MIN_TRACK_IOU):
    self.choice = choice
    self.frame_hw = frame_hw
    self.min_iou = min_iou
    self.last_box: Box | None = None

  def update(self, faces: Sequence[np.ndarray]) -> np.ndarray | None:
    boxes = [mesh_box(f, self.frame_hw) for f in faces]
    if self.last_box is None:
      chosen = pick(boxes, self.choice, self.frame_hw)
    else:
      overlaps = [iou(b, self.last_box) for b in boxes]
      chosen = int(np.argmax(overlaps)) if overlaps and max(overlaps) >= self.min_iou else None
    if chosen is None:
      return None
    self.last_box = boxes[chosen]
    return faces[chosen]
