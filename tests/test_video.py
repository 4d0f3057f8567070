"""Video probing, 25 fps streaming, the H.264/AAC writer and error reporting.

Generated clips (tests/media_fixtures.py) cover the rates, sizes and containers; the
real ones (`real:`, from the sample folder) check the same on real encoders' output.
"""

from __future__ import annotations

import fractions
import hashlib
import os
import tracemalloc

import cv2
import numpy as np
import pytest

from ip_lap_jax.media import video
from ip_lap_jax.errors import MediaError


def _digest(frame: np.ndarray) -> bytes:
  return hashlib.sha1(np.ascontiguousarray(frame).tobytes()).digest()


@pytest.mark.parametrize("clip", ["square_30fps.mp4", "portrait_22fps.mp4", "landscape_25fps.mp4",
                                  "real:129.mp4", "real:face_1.mp4"], indirect=True)
def test_probe(clip):
  info = video.probe(clip.path)
  assert (info.width, info.height, info.num_frames) == (clip.width, clip.height, clip.num_frames)
  assert info.fps == pytest.approx(clip.fps, rel=1e-4)
  assert info.duration == pytest.approx(clip.seconds, abs=1e-3)
  assert info.has_audio == clip.has_audio


def test_probe_and_read_zero_frame_clip(media):
  clip = media.zero_frame_clip()
  info = video.probe(clip.path)
  assert (info.num_frames, info.width, info.height, info.has_audio) == (0, clip.width, clip.height, True)
  frames = video.iter_frames(clip.path)  # opens fine: the stream exists
  with pytest.raises(MediaError, match="zero_frames.mkv: zero frames"):
    next(frames)


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


@pytest.mark.parametrize("clip", ["square_30fps.mp4", "portrait_22fps.mp4",
                                  "real:129.mp4", "real:face_1.mp4"], indirect=True)
def test_fps_conversion_matches_ffmpeg_fps_filter(clip):
  ours = [_digest(f) for f in video.iter_frames(clip.path)]
  reference = _ffmpeg_fps_filter_digests(clip.path)
  # The filter ends at the last frame's timestamp; we let the last frame last its duration.
  assert 0 <= len(ours) - len(reference) <= 1
  assert ours[:len(reference)] == reference
  assert abs(len(ours) - clip.frames_at(25)) <= 1
  assert len(set(ours)) > len(ours) // 2  # frames differ, so their order is checked
  source = [_digest(f) for f in video.iter_frames(clip.path, fps=clip.fps)]  # native rate: unchanged
  assert len(source) == clip.num_frames and source[0] == ours[0] and source[-1] == ours[-1]


@pytest.mark.parametrize("clip", ["square_30fps.mp4", "portrait_22fps.mp4", "landscape_25fps.mp4",
                                  "real:face_2.mp4"], indirect=True)
def test_rgb_and_single_threaded_frames_equal_default_frames(clip):
  """Preprocessing decodes to RGB on one decoder thread: the same frames (30, 22.13 and
  25 fps sources), pixel for pixel, channels swapped."""
  path = clip.path
  default = [_digest(f) for f in video.iter_frames(path)]
  rgb = []
  for frame in video.iter_frames(path, pixel_format="rgb24", threads=1):
    assert frame.flags.c_contiguous  # MediaPipe takes it as is
    rgb.append(_digest(frame[..., ::-1]))
  assert rgb == default
  with pytest.raises(ValueError, match="pixel_format"):
    video.iter_frames(path, pixel_format="yuv420p")

def _write_short_gop_clip(path, fps: int, frames: int, gop: int) -> None:
  """An H.264 clip with a keyframe every `gop` frames and B-frames (reordered
  timestamps), each frame a different picture."""
  import av

  rng = np.random.default_rng(fps)
  with av.open(str(path), "w") as out:
    stream = out.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    stream.codec_context.gop_size = gop
    stream.options = {"bf": "2", "keyint_min": str(gop), "sc_threshold": "0"}
    for i in range(frames):
      image = rng.integers(0, 256, (48, 64, 3), np.uint8)
      image[:8, : 2 * i % 64] = 255  # and a moving bar, so motion vectors matter
      for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
        out.mux(packet)
    for packet in stream.encode():
      out.mux(packet)


@pytest.mark.parametrize("fps, gop, container", [(30, 10, "mp4"), (25, 7, "mkv"), (19, 5, "mp4")])
def test_start_seeks_and_gives_the_same_frames_as_skipping(tmp_path, monkeypatch, fps, gop,
                                                           container):
  """`iter_frames(start=k)` == `list(iter_frames())[k:]`, pixel for pixel, for starts on,
  just before and after keyframes, the last frame and past the end; the decoder seeks
  (to a keyframe after the first) instead of decoding from the start."""
  path = tmp_path / f"gop.{container}"
  _write_short_gop_clip(path, fps, frames=3 * fps, gop=gop)
  full = [_digest(f) for f in video.iter_frames(path)]
  assert len(full) == 75  # 3 s at 25 fps
  seeks = []
  real_seek = video._seek_keyframe  # pylint: disable=protected-access

  def spy(*args):
    found = real_seek(*args)
    seeks.append(None if found is None else found[2])
    return found

  monkeypatch.setattr(video, "_seek_keyframe", spy)
  for start in [1, gop - 1, gop, gop + 1, 37, 60, 74, 75, 80]:
    part = [_digest(f) for f in video.iter_frames(path, start=start)]
    assert part == full[start:], start
  assert all(t is not None for t in seeks) and max(seeks) > 1.5, seeks  # seeked, far in
  assert [_digest(f) for f in video.iter_frames(path, start=0)] == full
  with pytest.raises(ValueError, match="start"):
    video.iter_frames(path, start=-1)


def test_start_without_timestamps_decodes_from_the_start(tmp_path):
  """A raw H.264 stream has no timestamps to seek by: the frames are still exact."""
  path = tmp_path / "raw.h264"
  _write_short_gop_clip(path, 25, frames=40, gop=8)
  full = [_digest(f) for f in video.iter_frames(path)]
  assert len(full) == 40
  container, stream = video._open_video(str(path))  # pylint: disable=protected-access
  with container:  # nothing to seek by: the caller decodes from the start
    assert video._seek_keyframe(container, stream, fractions.Fraction(25), 17) is None  # pylint: disable=protected-access
  for start in [3, 17, 39]:
    assert [_digest(f) for f in video.iter_frames(path, start=start)] == full[start:]


@pytest.mark.parametrize("clip", ["portrait_22fps.mp4", "landscape_25fps.mp4", "real:face_1.mp4"],
                         indirect=True)
def test_frame_count_and_shape_at_25fps(clip):
  frames = 0
  for frame in video.iter_frames(clip.path):
    assert frame.shape == (clip.height, clip.width, 3) and frame.dtype == np.uint8
    frames += 1
  assert abs(frames - clip.frames_at(25)) <= 1


def test_iterator_memory_stays_flat(media):
  """Streaming holds about one frame; a list of all frames holds them all (the contrast
  shows the measure sees frame buffers at all)."""
  clip = media.clip("square_30fps.mp4")
  path = clip.path
  frame_bytes = clip.width * clip.height * 3
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
  assert count == len(frames) == clip.frames_at(25)
  assert streaming_peak < 4 * frame_bytes, streaming_peak
  assert list_peak > (count - 4) * frame_bytes, list_peak


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


def test_writer_round_trip_with_audio_and_metadata(media, tmp_path):
  import av

  out_dir = tmp_path / "out dir é"
  out_dir.mkdir()
  path = out_dir / "résultat 1.mp4"
  source = media.clip("portrait_22fps.mp4")
  frames = video.read_frames(source.path)  # at 25 fps
  sound = media.sound("stereo_44k.wav")
  tags = {"comment": "ip_lap_jax test", "ip_lap_jax_version": "0.1.0"}
  with video.VideoWriter(path, fps=25, audio_path=sound.path, metadata=tags) as writer:
    for frame in frames:
      writer.write(frame)
    assert not path.exists()  # written under a temporary name until closed
  assert os.listdir(out_dir) == [path.name]  # no temporary file left behind
  info = video.probe(path)
  assert (info.fps, info.width, info.height, info.num_frames) == (25.0, source.width, source.height,
                                                                   len(frames))
  assert info.has_audio
  with av.open(str(path)) as container:
    vstream, astream = container.streams.video[0], container.streams.audio[0]
    assert vstream.codec_context.name == "h264"
    assert vstream.codec_context.pix_fmt == "yuv420p"
    assert astream.codec_context.name == "aac"
    assert (astream.rate, astream.channels) == (sound.rate, sound.channels)
    audio_seconds = float(astream.duration * astream.time_base)
  assert abs(audio_seconds - sound.seconds) < 0.1  # kept whole, not cut to the video
  meta = video.read_metadata(path)
  assert {k: meta.get(k) for k in tags} == tags
  back = video.read_frames(path)
  assert len(back) == len(frames)
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


def test_media_errors_name_the_file(media, tmp_path):
  with pytest.raises(MediaError, match="absent clip.mp4: no such file"):
    video.iter_frames(tmp_path / "absent clip.mp4")
  with pytest.raises(MediaError, match="absent clip.mp4: no such file"):
    video.probe(tmp_path / "absent clip.mp4")
  with pytest.raises(MediaError, match="corrupt.mp4: cannot decode"):
    video.read_frames(media.corrupt())
  with pytest.raises(MediaError, match="corrupt.mp4: cannot decode"):
    video.probe(media.corrupt())
  with pytest.raises(MediaError, match="mono_48k.mp3: no video stream"):
    video.iter_frames(media.sound("mono_48k.mp3").path)
  bad_image = tmp_path / "bad.png"
  bad_image.write_bytes(b"not a png")
  with pytest.raises(MediaError, match="bad.png: cannot decode image"):
    video.read_frames(bad_image)
  with pytest.raises(MediaError, match="square_30fps.mp4: no audio stream"):
    video.VideoWriter(tmp_path / "x.mp4", audio_path=media.clip("square_30fps.mp4").path)
