"""The host side of inference (issue #15): parallel paste + watermark, ordered encoding,
frames owned and changed in place, parallel Face Mesh.

The models are replaced by `inference.standin` (no checkpoint, no device): its rendered
face is the input face inverted, so every output frame can be predicted pixel for pixel
from the template with the sequential, copying functions (`paste.paste_face`,
`watermark.embed_frame`), as the pipeline did before it had a worker pool.
"""

from __future__ import annotations

import pathlib

import cv2
import numpy as np
import pytest

from ip_lap_jax import inference
from ip_lap_jax.errors import MediaError
from ip_lap_jax.face import paste, video_mesh
from ip_lap_jax.inference import face_track, frames as frames_lib, standin
from ip_lap_jax.media import audio as audio_lib
from ip_lap_jax.media import video
from ip_lap_jax.media import watermark

SIZE = 32  # render size of the stand-in (any size: it only crops, inverts and pastes)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> pathlib.Path:
  return tmp_path_factory.mktemp("host")


@pytest.fixture(scope="module")
def speech(media, work):
  """Writes the first `seconds` of the generated speech as a 16 kHz wav; returns its path."""
  wav = audio_lib.load_audio(media.sound("mono_16k.wav").path)

  def make(seconds: float) -> pathlib.Path:
    path = work / f"speech_{seconds:.2f}.wav"
    if not path.exists():
      audio_lib.save_wav(path, wav[:int(round(seconds * audio_lib.SAMPLE_RATE))])
    return path
  return make


@pytest.fixture
def recorded(monkeypatch) -> list[np.ndarray]:
  """Every frame handed to a VideoWriter, copied before it is encoded."""
  frames: list[np.ndarray] = []
  original = video.VideoWriter.write

  def write(self, frame):
    frames.append(np.array(frame))
    original(self, frame)
  monkeypatch.setattr(video.VideoWriter, "write", write)
  return frames


def _syncer(work: pathlib.Path, **options) -> inference.LipSyncer:
  opts = inference.InferenceOptions(num_refs=3, batch_size=4, render_size=SIZE, progress=False,
                                    cache_dir=str(work / "cache"), **options)
  model = standin.StandInPredictor(batch_size=4, render_size=SIZE, num_refs=3)
  return inference.LipSyncer.from_predictor(model, opts)


def _expected(template: pathlib.Path, num_out: int, cache_dir: pathlib.Path,
              mark: bool = True) -> list[np.ndarray]:
  """Output frames as the sequential writer made them: copy, paste, watermark, per frame."""
  frames = video.read_frames(template)
  track, _ = face_track.detect_template(template, cache_dir=cache_dir)
  geometry = face_track.frame_geometry(track, inference.InferenceOptions().face_pad)
  out = []
  for j in range(num_out):
    t = int(inference.pingpong(max(j, inference.CENTRE), len(frames)))
    frame = frames[t]
    if geometry.usable[t]:
      face = standin.standin_face(geometry.face(frame, t, SIZE)[None])[0]
      polygon = paste.mask_polygon(track.points[t], track.frame_hw)
      frame = paste.paste_face(frame, face, tuple(geometry.boxes[t]), polygon)
    out.append(watermark.embed_frame(frame) if mark else frame)
  return out


@pytest.mark.parametrize("workers", [1, 3])
def test_frames_equal_the_sequential_writer_pingpong_and_faceless(media, speech, work, recorded,
                                                                   workers):
  clip = media.clip("faceless_gap_25fps.mp4")  # 20 frames at 25 fps, 10..13 black
  n = clip.num_frames
  out = work / f"pingpong_{workers}.mp4"
  recorded.clear()  # making the clip wrote frames too
  result = _syncer(work, workers=workers).run(clip.path, speech(2.5 * n / 25), out)
  num_out = result.num_frames
  assert num_out == round(2.5 * n)  # forward, backward, half forward: two turns
  assert result.passthrough_frames == sum(
      int(inference.pingpong(max(j, 2), n)) in range(*clip.faceless) for j in range(num_out))
  assert len(recorded) == num_out
  for j, (got, want) in enumerate(zip(recorded, _expected(clip.path, num_out, work / "cache"))):
    np.testing.assert_array_equal(got, want, err_msg=f"output frame {j}")
  assert len(video.read_frames(out)) == num_out
  assert "debug sketch" not in result.stage_seconds  # no full-frame sketch without the flag
  for stage in ("detection", "decode", "prepare", "paste", "watermark", "encode"):
    assert stage in result.stage_seconds


def test_still_photo_every_frame_its_own(media, speech, work, recorded):
  """A still: every window takes the one frame again, so each gets a copy to paste into."""
  photo = work / "photo.png"
  cv2.imwrite(str(photo), video.read_frames(media.clip("square_30fps.mp4").path)[5])
  recorded.clear()
  result = _syncer(work, watermark=False).run(photo, speech(0.6), work / "photo.mp4")
  assert result.num_frames == len(recorded) == 15
  want = _expected(photo, 15, work / "cache", mark=False)
  for got, expected in zip(recorded, want):
    np.testing.assert_array_equal(got, expected)


def test_debug_sketch_only_on_request(media, speech, work):
  clip = media.clip("square_30fps.mp4")
  result = _syncer(work, debug_sketch=True).run(clip.path, speech(0.3), work / "debug.mp4")
  assert result.stage_seconds["debug sketch"] > 0
  assert video.probe(work / "debug.mp4").width == 2 * clip.width


def test_interrupted_run_leaves_no_file(media, speech, work):
  clip = media.clip("square_30fps.mp4")
  out = work / "interrupted" / "out.mp4"
  out.parent.mkdir()
  syncer = _syncer(work)
  syncer.predictor.fail_at_render = 3  # batches 0-2 reach the writer first
  with pytest.raises(RuntimeError, match="stand-in render failed on call 3"):
    syncer.run(clip.path, speech(2.0), out)
  assert list(out.parent.iterdir()) == []  # neither the output nor a temporary file


def test_taken_frames_are_owned(media, work):
  """Changing a taken frame never reaches a later request, forward, backward or again."""
  path = media.clip("faceless_gap_25fps.mp4").path
  decoded = video.read_frames(path)
  n = len(decoded)
  reader = frames_lib.FrameReader(str(path), n, decoded[0].nbytes, budget_bytes=6 * decoded[0].nbytes)
  order = [int(inference.pingpong(p, n)) for p in range(3 * n)]
  with reader:
    reader.get(order[0])  # as prepare_references does before the frames are taken
    for k, t in enumerate(order):
      again = k + 1 < len(order) and order[k + 1] == t
      frame = reader.take(t, again)
      np.testing.assert_array_equal(frame, decoded[t], err_msg=f"request {k}")
      frame[:] = 255 - frame  # what paste-back does to its box
      assert reader.num_held <= 6


@pytest.mark.parametrize("name", ["faceless_gap_25fps.mp4", "square_30fps.mp4"])
def test_parallel_detection_equals_sequential(media, name):
  """Chunks in worker processes (uneven, one past the end) give the sequential rows."""
  path = media.clip(name).path
  sequential, hw = face_track.detect_points(str(path), workers=1)
  assert np.isnan(sequential[:, 0, 0, 0]).any() == (name.startswith("faceless"))
  for workers, estimate in ((2, len(sequential)), (3, len(sequential) + 7)):
    points, parallel_hw = video_mesh.detect_video(path, workers=workers, num_frames=estimate,
                                                  max_faces=face_track.MAX_FACES)
    assert parallel_hw == hw
    np.testing.assert_array_equal(points, sequential)  # NaN rows in the same places


def test_worker_count_and_errors_from_workers(media, work):
  assert video_mesh.worker_count(1, 8) == 1  # a still runs in the calling process
  per = video_mesh.MIN_FRAMES_PER_WORKER
  assert video_mesh.worker_count(2 * per, 2) == 2 and video_mesh.worker_count(2 * per - 1, 2) == 1
  assert video_mesh.worker_count(100 * per, 2) == 2  # never more than the cores
  with pytest.raises(MediaError, match="zero_frames.mkv: zero frames"):
    video_mesh.detect_video(media.zero_frame_clip().path, workers=2, num_frames=50)
