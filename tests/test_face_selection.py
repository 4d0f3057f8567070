"""Choosing the speaking face and following it (`ip_lap_jax.face.selection`)."""

from __future__ import annotations

import numpy as np
import pytest

from ip_lap_jax.face import selection

HW = (100, 200)


def _face(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
  """Points [478, 2] normalised to HW whose pixel box is (x0, y0, x1, y1)."""
  rng = np.random.default_rng(int(x0 * 7 + y0))
  pts = np.column_stack([rng.uniform(x0, x1, 478), rng.uniform(y0, y1, 478)])
  pts[:2] = [[x0, y0], [x1, y1]]
  return pts / np.array([HW[1], HW[0]])


LEFT_SMALL = _face(10, 30, 40, 60)
MIDDLE = _face(85, 35, 115, 65)
RIGHT_BIG = _face(140, 10, 195, 90)


def test_parse():
  assert selection.FaceChoice.parse("largest").kind == "largest"
  assert selection.FaceChoice.parse("centre").kind == "center"
  assert selection.FaceChoice.parse("2") == selection.FaceChoice("index", index=2)
  assert selection.FaceChoice.parse("10, 20, 30, 40") == selection.FaceChoice("box", box=(10, 20, 30, 40))
  assert selection.FaceChoice.parse("1").key() != selection.FaceChoice.parse("2").key()
  for bad in ("biggest", "1,2,3", "-1", "1,2,0,4"):
    with pytest.raises(ValueError, match="--face must be"):
      selection.FaceChoice.parse(bad)


@pytest.mark.parametrize("text,expected", [
    ("largest", 2), ("center", 1), ("0", 0), ("1", 1), ("2", 2), ("0,0,50,100", 0),
    ("150,20,10,10", 2)])
def test_pick(text, expected):
  faces = [RIGHT_BIG, LEFT_SMALL, MIDDLE]  # detection order is not left-to-right
  boxes = [selection.mesh_box(f, HW) for f in faces]
  assert faces[selection.pick(boxes, selection.FaceChoice.parse(text), HW)] is \
      [LEFT_SMALL, MIDDLE, RIGHT_BIG][expected]


def test_pick_nothing():
  boxes = [selection.mesh_box(LEFT_SMALL, HW)]
  assert selection.pick(boxes, selection.FaceChoice.parse("3"), HW) is None
  assert selection.pick(boxes, selection.FaceChoice.parse("150,0,10,10"), HW) is None
  assert selection.pick([], selection.FaceChoice(), HW) is None


def test_tracker_follows_identity_not_size():
  tracker = selection.FaceTracker(selection.FaceChoice.parse("0"), HW)
  assert tracker.update([]) is None  # no face yet: nothing chosen
  assert tracker.update([RIGHT_BIG, LEFT_SMALL]) is LEFT_SMALL
  moved = LEFT_SMALL + np.array([3 / HW[1], 1 / HW[0]])
  # The left face moved a little; a bigger face elsewhere does not steal the track.
  assert tracker.update([RIGHT_BIG, moved]) is moved
  # Lost (only the other person visible): the frame passes through.
  assert tracker.update([RIGHT_BIG]) is None
  # It comes back near where it was last seen.
  assert tracker.update([moved, RIGHT_BIG]) is moved
