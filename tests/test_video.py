"""Video probing, 25 fps streaming, the H.264/AAC writer and error reporting."""

from __future__ import annotations

import hashlib
import itertools
import os
import tracemalloc

import cv2
import numpy as np
import pytest

from ip_lap_jax.media import video
from ip_lap_jax.errors import MediaError


def _digest(frame: np.ndarray) -> bytes:
  return hashlib.sha1(np.ascontiguousarray(frame).tobytes()).digest()


def test_probe_129(shared_data):
  info = video.probe(shared_data / "129.mp4")
  assert info == video.VideoInfo(fps=30.0, width=256, height=256, num_frames=270,
                                 duration=9.0, has_audio=False)
  assert video.probe(shared_data / "face_1.mp4").has_audio


def _ffmpeg_fps_filter_digests(path, fps: int = 25) -> list[bytes]:
  """Frames of ffmpeg's `fps` filter (what `ffmpeg -r 25` does), run through PyAV."""
  import av
  import av.filter

  digests = []
  with av.open(str(path)) as container:
    stream = container.streams.video[0]
    graph = av.filter.Graph()
    source = graph.add_buffer(template=stream)
    rate = graph.add("fps", str(fps))
    sink = graph.add("buffersink")
    source.link_to(rate)
    rate.link_to(sink)
    graph.configure()

    def drain():
      while True:
        try:
          digests.append(_digest(graph.pull().to_ndarray(format="bgr24")))
        except (av.error.BlockingIOError, av.error.EOFError):
          return

    for frame in container.decode(stream):
      graph.push(frame)
      drain()
    graph.push(None)
    drain()
  return digests


@pytest.mark.parametrize("name", ["129.mp4", "face_1.mp4"])
def test_fps_conversion_matches_ffmpeg_fps_filter(shared_data, name):
  path = shared_data / name
  ours = [_digest(f) for f in video.iter_frames(path)]
  reference = _ffmpeg_fps_filter_digests(path)
  # The filter ends at the last frame's timestamp; we let the last frame last its duration.
  assert 0 <= len(ours) - len(reference) <= 1
  assert ours[:len(reference)] == reference
  if name == "129.mp4":
    assert len(ours) == 225  # 9 s at 25 fps
    source = [_digest(f) for f in video.iter_frames(path, fps=30.0)]  # native rate: unchanged
    assert len(source) == 270 and source[0] == ours[0] and source[-1] == ours[-1]



@pytest.mark.parametrize("name", ["129.mp4", "face_1.mp4", "face_2.mp4"])
def test_rgb_and_single_threaded_frames_equal_default_frames(shared_data, name):
  """Preprocessing decodes to RGB on one decoder thread: the same frames (30, 22.13 and
  25 fps sources), pixel for pixel, channels swapped."""
  path = shared_data / name
  default = [_digest(f) for f in video.iter_frames(path)]
  rgb = []
  for frame in video.iter_frames(path, pixel_format="rgb24", threads=1):
    assert frame.flags.c_contiguous  # MediaPipe takes it as is
    rgb.append(_digest(frame[..., ::-1]))
  assert rgb == default
  with pytest.raises(ValueError, match="pixel_format"):
    video.iter_frames(path, pixel_format="yuv420p")

def test_22fps_clip_frame_count(shared_data):
  frames = 0
  for frame in video.iter_frames(shared_data / "face_1.mp4"):
    assert frame.shape == (700, 700, 3) and frame.dtype == np.uint8
    frames += 1
  assert abs(frames - round(135 / 22.13 * 25)) <= 1


def test_iterator_memory_stays_flat(shared_data):
  """Streaming holds about one frame; a list of all frames is ~225 frames (the contrast
  shows the measure sees frame buffers at all)."""
  path = shared_data / "129.mp4"
  frame_bytes = 256 * 256 * 3
  tracemalloc.start()
  try:
    count = 0
    for frame in video.iter_frames(path):
      count += int(frame[0, 0, 0] >= 0)
    _, streaming_peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    frames = video.read_frames(path)
    _, list_peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert count == len(frames) == 225
  assert streaming_peak < 4 * frame_bytes, streaming_peak
  assert list_peak > 200 * frame_bytes, list_peak


def test_image_yields_one_frame(tmp_path):
  image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
  path = tmp_path / "visage é 1.png"
  ok, data = cv2.imencode(".png", image)
  assert ok
  path.write_bytes(data.tobytes())
  frames = video.read_frames(path)
  assert len(frames) == 1
  np.testing.assert_array_equal(frames[0], image)
  info = video.probe(path)
  assert (info.width, info.height, info.num_frames) == (60, 40, 1)


def test_writer_round_trip_with_audio_and_metadata(shared_data, tmp_path):
  import av

  out_dir = tmp_path / "out dir é"
  out_dir.mkdir()
  path = out_dir / "résultat 1.mp4"
  frames = list(itertools.islice(video.iter_frames(shared_data / "129.mp4"), 125))  # 5 s
  tags = {"comment": "ip_lap_jax test", "ip_lap_jax_version": "0.1.0"}
  with video.VideoWriter(path, fps=25, audio_path=shared_data / "speech_1.wav",
                         metadata=tags) as writer:
    for frame in frames:
      writer.write(frame)
    assert not path.exists()  # written under a temporary name until closed
  assert os.listdir(out_dir) == [path.name]  # no temporary file left behind
  info = video.probe(path)
  assert (info.fps, info.width, info.height, info.num_frames) == (25.0, 256, 256, 125)
  assert info.has_audio
  with av.open(str(path)) as container:
    vstream, astream = container.streams.video[0], container.streams.audio[0]
    assert vstream.codec_context.name == "h264"
    assert vstream.codec_context.pix_fmt == "yuv420p"
    assert astream.codec_context.name == "aac"
    audio_seconds = float(astream.duration * astream.time_base)
  assert abs(audio_seconds - 5.0155) < 0.1  # speech_1.wav is 5.0155 s
  meta = video.read_metadata(path)
  assert {k: meta.get(k) for k in tags} == tags
  back = video.read_frames(path)
  assert len(back) == 125
  errors = [np.abs(a.astype(np.int16) - b).mean() for a, b in zip(back, frames)]
  assert max(errors) < 4.0  # crf 18: visually lossless, same frame order


def test_writer_pads_odd_sizes(tmp_path):
  path = tmp_path / "odd.mp4"
  frame = np.full((33, 35, 3), 90, np.uint8)
  with video.VideoWriter(path) as writer:
    for _ in range(3):
      writer.write(frame)
  info = video.probe(path)
  assert (info.width, info.height, info.num_frames, info.has_audio) == (36, 34, 3, False)
  with pytest.raises(ValueError, match="first frame was 33x35"):
    with video.VideoWriter(tmp_path / "mixed.mp4") as writer:
      writer.write(frame)
      writer.write(np.zeros((34, 36, 3), np.uint8))


def test_writer_leaves_nothing_on_failure(tmp_path):
  path = tmp_path / "broken.mp4"
  with pytest.raises(RuntimeError, match="render failed"):
    with video.VideoWriter(path) as writer:
      writer.write(np.zeros((64, 64, 3), np.uint8))
      raise RuntimeError("render failed")
  assert os.listdir(tmp_path) == []
  with pytest.raises(MediaError, match="empty.mp4: zero frames written"):
    with video.VideoWriter(tmp_path / "empty.mp4"):
      pass
  assert os.listdir(tmp_path) == []


def test_media_errors_name_the_file(shared_data, tmp_path):
  with pytest.raises(MediaError, match="absent clip.mp4: no such file"):
    video.iter_frames(tmp_path / "absent clip.mp4")
  with pytest.raises(MediaError, match="absent clip.mp4: no such file"):
    video.probe(tmp_path / "absent clip.mp4")
  corrupt = tmp_path / "corrupt.mp4"
  corrupt.write_bytes(np.random.default_rng(2).integers(0, 256, 8192, dtype=np.uint8).tobytes())
  with pytest.raises(MediaError, match="corrupt.mp4: cannot decode"):
    video.read_frames(corrupt)
  with pytest.raises(MediaError, match="abstract.mp3: no video stream"):
    video.iter_frames(shared_data / "abstract.mp3")
  bad_image = tmp_path / "bad.png"
  bad_image.write_bytes(b"not a png")
  with pytest.raises(MediaError, match="bad.png: cannot decode image"):
    video.read_frames(bad_image)
  with pytest.raises(MediaError, match="129.mp4: no audio stream"):
    video.VideoWriter(tmp_path / "x.mp4", audio_path=shared_data / "129.mp4")
