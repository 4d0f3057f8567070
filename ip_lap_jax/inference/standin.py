"""Models that answer at once: the host side of inference, measured and tested alone.

`StandInPredictor` has the interface `pipeline` and `api` use of `predictor.Predictor`
and its `CompiledPredictor`, with no checkpoint and no device: content landmarks are the
first reference's, and the "rendered" face is the input face inverted (cheap, and
visibly pasted). `LipSyncer.from_predictor(StandInPredictor(...), options)` then runs
the whole pipeline (decode, crop, sketches, paste, watermark, encode, detection), so
`benchmarks/bench_infer.py --host-only` shows what the host does per frame when the
accelerator costs nothing, and tests can predict every output pixel.
"""

from __future__ import annotations

import threading

import numpy as np


class StandInPredictor:
  """`predictor.Predictor`'s attributes, with `compile()` giving a `StandInCompiled`.

  Args:
    fail_at_render: raise RuntimeError in this render call (0-based; None: never), to
      test an interrupted run.
  """

  def __init__(self, *, batch_size: int = 8, render_size: int = 128, num_refs: int = 25,
               num_landmark_refs: int = 15, fail_at_render: int | None = None):
    self.batch_size, self.render_size = batch_size, render_size
    self.num_refs, self.num_landmark_refs = num_refs, num_landmark_refs
    self.fail_at_render = fail_at_render

  def replicate(self, array: np.ndarray) -> np.ndarray:
    return np.asarray(array, np.float32)

  def compile(self) -> StandInCompiled:
    return StandInCompiled(self)


def standin_face(faces: np.ndarray) -> np.ndarray:
  """What the stand-in renders: float32 faces [B, S, S, 3] in [0, 1] -> inverted uint8."""
  return 255 - (faces * 255.0).astype(np.uint8)


class StandInCompiled:
  """`predictor.CompiledPredictor`'s calls, answered on the host at once."""

  def __init__(self, predictor: StandInPredictor):
    self.predictor = predictor
    self.render_calls = 0
    self._lock = threading.Lock()

  def predict_content(self, mels: np.ndarray, pose: np.ndarray, ref_pose: np.ndarray,
                      ref_content: np.ndarray) -> np.ndarray:
    """mels [B, 5, 80, 16, 1], pose [B, 5, 74, 2] -> the first reference's content
    [B, 5, 57, 2] (a real face shape, so sketches cost what they cost)."""
    return np.broadcast_to(np.asarray(ref_content)[0], pose.shape[:2] + ref_content.shape[1:])

  def render(self, faces: np.ndarray, sketches: np.ndarray, ref_images: np.ndarray,
             ref_sketches: np.ndarray, mels: np.ndarray) -> np.ndarray:
    """faces [B, S, S, 3] -> `standin_face(faces)` uint8 [B, S, S, 3]."""
    with self._lock:
      call, self.render_calls = self.render_calls, self.render_calls + 1
    if call == self.predictor.fail_at_render:
      raise RuntimeError(f"stand-in render failed on call {call}")
    return standin_face(faces)
