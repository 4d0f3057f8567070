"""Video I/O with PyAV: probing, streaming 25 fps frames, and an H.264 + AAC writer.

Frames are BGR uint8 `[H, W, 3]` (OpenCV order, as the release). The release converts
other rates to 25 fps with `ffmpeg -r 25` before reading; `iter_frames` does the same
conversion on the fly with the rule of ffmpeg's `fps` filter (round=near): each source
frame's presentation time t is rounded to the nearest output tick, slot = round(t * fps)
(halves away from zero); output starts at the first frame's slot, and output tick k
shows the latest source frame whose slot is <= k (frames sharing a slot: the last one
wins; gaps: the previous frame repeats). Output continues up to the tick
round((t_last + one source frame duration) * fps), so the last frame lasts its
duration. The frames equal those of PyAV's `fps=25` filter (tested), except that the
filter stops at the last frame's own timestamp, one frame earlier at most. A 30 fps,
9 s clip gives
225 frames; a 25 fps clip passes through unchanged. Only the previous decoded frame is
held, so memory does not grow with the clip's length. Rotation metadata (phone videos)
is not applied.

A still image (png, jpg, bmp, webp, tiff) is read with `cv2.imdecode` from bytes (so
non-ASCII paths work) and yields one frame.
"""

from __future__ import annotations

import dataclasses
import fractions
import math
import os
import uuid
from typing import Iterator, Mapping

import cv2
import numpy as np

from ip_lap_jax import array_checks
from ip_lap_jax.errors import MediaError, require_file

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
# Sample rates ffmpeg's native AAC encoder accepts; others are resampled to 48 kHz.
_AAC_RATES = frozenset({7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000,
                        64000, 88200, 96000})


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """What `probe` reports. A still image: fps 0, num_frames 1, duration 0."""
  fps: float
  width: int
  height: int
  num_frames: int
  duration: float  # seconds
  has_audio: bool


def is_image(path: str | os.PathLike[str]) -> bool:
  return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


def _read_image(path: str) -> np.ndarray:
  data = np.fromfile(path, np.uint8)
  image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
  if image is None:
    raise MediaError(path, "cannot decode image")
  return image


def _av_error_types() -> tuple[type[BaseException], ...]:
  import av

  return (av.error.FFmpegError, ValueError)


def _open_video(path: str):
  """Opens `path` with PyAV and returns (container, video stream); MediaError otherwise."""
  import av

  try:
    container = av.open(path)
  except _av_error_types() as e:
    raise MediaError(path, f"cannot decode: {e}") from e
  if not container.streams.video:
    container.close()
    raise MediaError(path, "no video stream")
  return container, container.streams.video[0]


def _stream_fps(stream) -> fractions.Fraction | None:
  rate = stream.average_rate or stream.guessed_rate or stream.base_rate
  return fractions.Fraction(rate) if rate else None


def probe(path: str | os.PathLike[str]) -> VideoInfo:
  """Reads a video's (or an image's) rate, size, frame count, duration and audio presence.

  The frame count comes from the container; where it does not store one, packets are
  counted (demuxing only, no decoding).
  """
  path = require_file(path)
  if is_image(path):
    image = _read_image(path)
    return VideoInfo(0.0, image.shape[1], image.shape[0], 1, 0.0, False)
  container, stream = _open_video(path)
  try:
    fps = _stream_fps(stream)
    num_frames = int(stream.frames)
    if num_frames <= 0:
      num_frames = sum(1 for p in container.demux(stream) if p.size)
    if stream.duration is not None and stream.time_base is not None:
      duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
      duration = container.duration / 1e6
    else:
      duration = num_frames / float(fps) if fps else 0.0
    return VideoInfo(
        fps=float(fps) if fps else 0.0,
        width=int(stream.codec_context.width),
        height=int(stream.codec_context.height),
        num_frames=num_frames,
        duration=duration,
        has_audio=bool(container.streams.audio),
    )
  except _av_error_types() as e:
    raise MediaError(path, f"cannot decode: {e}") from e
  finally:
    container.close()


_PIXEL_FORMATS = ("bgr24", "rgb24")


def iter_frames(path: str | os.PathLike[str], fps: float = 25.0, *,
                pixel_format: str = "bgr24", threads: int = 0,
                start: int = 0) -> Iterator[np.ndarray]:
  """Streams uint8 `[H, W, 3]` frames resampled to `fps` (see the module docstring).

  The file is checked when called (MediaError for a missing, undecodable or video-less
  file); frames are decoded lazily while iterating. Each yielded array is a fresh copy
  the caller may modify.
  Args:
    pixel_format: "bgr24" (OpenCV order, default) or "rgb24" (what MediaPipe takes;
      swscale converts straight to it, the same pixels with the channels swapped, which
      saves a full-frame `cvtColor` per frame).
    threads: decoder threads; 0 lets ffmpeg choose (frame threading, one thread per
      core + 1). Callers that already keep every core busy (preprocessing workers)
      pass 1: extra decoder threads then only add CPU time (~20% of decoding).
    start: the first output frame to yield: the frames of `list(iter_frames(...))[start:]`.
      The decoder seeks to the last keyframe at or before it where the file has
      timestamps, and the frames before it are not converted; where the seek cannot be
      trusted (no timestamps, a keyframe past the target) it decodes from the start.
  Raises:
    MediaError: as above, or "zero frames" when nothing decodes.
  """
  path = require_file(path)
  if fps <= 0:
    raise ValueError(f"fps must be positive, got {fps}")
  if pixel_format not in _PIXEL_FORMATS:
    raise ValueError(f"pixel_format must be one of {_PIXEL_FORMATS}, got {pixel_format!r}")
  if threads < 0:
    raise ValueError(f"threads must be >= 0, got {threads}")
  if start < 0:
    raise ValueError(f"start must be >= 0, got {start}")
  if is_image(path):
    image = _read_image(path)
    if pixel_format == "rgb24":
      image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return iter([image][start:])
  container, _ = _open_video(path)  # fail now, not at the first next()
  container.close()
  return _resampled_frames(path, fractions.Fraction(fps).limit_denominator(100_000),
                           pixel_format, threads, start)


def _slot(t: fractions.Fraction, fps: fractions.Fraction) -> int:
  """Output tick nearest to time t; halves away from zero (ffmpeg's AV_ROUND_NEAR_INF)."""
  x = t * fps
  half = fractions.Fraction(1, 2)
  return math.floor(x + half) if x >= 0 else -math.floor(-x + half)


def _frame_time(frame) -> fractions.Fraction | None:
  """Presentation time of a decoded frame in seconds; None without timestamps."""
  if frame.pts is None or frame.time_base is None:
    return None
  return fractions.Fraction(frame.pts) * frame.time_base


def _seek_keyframe(container, stream, fps: fractions.Fraction, start: int):
  """Positions the decoder on the last keyframe whose output tick is <= output tick
  `start`, the only frame that tick and the later ones need from before it.

  Returns (first_slot, keyframe, its time, the decode iterator after it), or None where
  the file does not allow it (no timestamps, or the demuxer landed past the target);
  the container is then in an unknown position and must be reopened.
  """
  first = next(container.decode(stream), None)
  first_time = None if first is None else _frame_time(first)
  if first_time is None:
    return None
  first_slot = _slot(first_time, fps)
  target = first_slot + start
  # Any keyframe at or before the target tick's time has a tick <= target.
  try:
    container.seek(math.floor(fractions.Fraction(target) / fps / stream.time_base),
                   backward=True, stream=stream)
  except _av_error_types():  # not seekable (a pipe, a broken index)
    return None
  decoded = container.decode(stream)
  for frame in decoded:
    t = _frame_time(frame)
    if t is None:
      return None
    if frame.key_frame:  # frames decoded before it may lack their references
      if t < first_time or _slot(t, fps) > target:
        return None
      return first_slot, frame, t, decoded
  return None


def _resampled_frames(path: str, fps: fractions.Fraction, pixel_format: str = "bgr24",
                      threads: int = 0, start: int = 0) -> Iterator[np.ndarray]:
  from av.video.reformatter import VideoReformatter

  container, stream = _open_video(path)
  stream.thread_type = "AUTO"
  stream.codec_context.thread_count = threads
  source_fps = _stream_fps(stream)
  # One reformatter for the clip: `frame.to_ndarray(format=...)` builds a new swscale
  # context per frame; reusing it gives the same pixels for a fraction of the cost.
  reformatter = VideoReformatter()
  emitted = 0  # output ticks so far; output k is at tick first_slot + k
  prev_frame, prev_time, prev_array = None, None, None
  first_slot = None
  index = 0
  try:
    decoded = None
    if start > 0:
      seek = _seek_keyframe(container, stream, fps, start)
      if seek is None:
        container.close()
        container, stream = _open_video(path)
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
      else:
        first_slot, prev_frame, prev_time, decoded = seek
        emitted = _slot(prev_time, fps) - first_slot
    if decoded is None:
      decoded = container.decode(stream)
    with container:
      for frame in decoded:
        t = _frame_time(frame)
        if t is None:  # no timestamps: assume a constant rate
          t = fractions.Fraction(index) / (source_fps or fps)
        index += 1
        if first_slot is None:
          first_slot = _slot(t, fps)
        if prev_frame is not None:
          if t <= prev_time:
            continue  # out-of-order or duplicate timestamp: keep the earlier frame
          slot = _slot(t, fps)  # once per frame: Fraction arithmetic is not free
          emitted = max(emitted, min(slot - first_slot, start))  # ticks before `start`
          while first_slot + emitted < slot:  # ticks before this frame's: previous
            if prev_array is None:  # convert only frames that are emitted
              prev_array = reformatter.reformat(prev_frame, format=pixel_format).to_ndarray()
            yield prev_array.copy()
            emitted += 1
        prev_frame, prev_time, prev_array = frame, t, None
      if prev_frame is None:
        raise MediaError(path, "zero frames")
      frame_duration = 1 / source_fps if source_fps else 1 / fps
      end_slot = _slot(prev_time + frame_duration, fps)
      emitted = max(emitted, min(end_slot - first_slot, start))
      # The last frame covers the rest of the clip; at least one frame is always given.
      while first_slot + emitted < end_slot or (emitted == 0 and start == 0):
        if prev_array is None:
          prev_array = reformatter.reformat(prev_frame, format=pixel_format).to_ndarray()
        yield prev_array.copy()
        emitted += 1
  except MediaError:
    raise
  except _av_error_types() as e:
    raise MediaError(path, f"cannot decode: {e}") from e
  finally:
    container.close()


def read_frames(path: str | os.PathLike[str], fps: float = 25.0) -> list[np.ndarray]:
  """All frames of `iter_frames(path, fps)` in a list (holds the whole clip in memory)."""
  return list(iter_frames(path, fps))


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
  """Container-level metadata tags of a media file (e.g. {'comment': ...})."""
  import av

  path = require_file(path)
  try:
    with av.open(path) as container:
      return dict(container.metadata)
  except _av_error_types() as e:
    raise MediaError(path, f"cannot decode: {e}") from e


def as_bgr_frame(frame_bgr: np.ndarray, where: str) -> np.ndarray:
  """Checks a frame is BGR uint8 `[H, W, 3]` (ValueError naming `where` if not)."""
  frame_bgr = np.asarray(frame_bgr)
  array_checks.assert_rank(frame_bgr, 3)
  array_checks.assert_type(frame_bgr, np.uint8)
  if frame_bgr.shape[2] != 3:
    raise ValueError(f"{where}: frames must be BGR [H, W, 3], got shape {frame_bgr.shape}")
  return frame_bgr


class VideoWriter:
  """Writes BGR uint8 frames as an H.264 (libx264, yuv420p) mp4, audio muxed on close.

  Usage:
    with VideoWriter("out.mp4", fps=25, audio_path="speech.wav",
                     metadata={"comment": "..."}) as writer:
      for frame in frames:
        writer.write(frame)

  The file is written to a hidden temporary file beside `path` and renamed on a
  successful close; on an exception inside the `with` block (or `abort()`) the
  temporary file is deleted and `path` is untouched. All frames must have the first
  frame's size; yuv420p needs even sizes, so an odd width or height is padded by
  repeating the last column/row (the output is then 1 pixel larger). The audio (any
  format `ip_lap_jax.media.audio.decode_audio` reads) is encoded as AAC at its own rate
  (48 kHz if AAC does not support it), mono or stereo, and kept whole (not cut to the
  video's length, as the release's ffmpeg mux). `metadata` goes into the container's
  tags (arbitrary keys are kept: movflags use_metadata_tags). `crf` sets the quality
  (libx264's constant rate factor: 18 is visually lossless, each +6 about halves the size),
  `preset` the encoder's effort for that quality (slower presets give smaller files, not
  better pictures), `threads` libx264's worker threads (0: its own choice).
  """

  def __init__(self, path: str | os.PathLike[str], fps: float = 25,
               audio_path: str | os.PathLike[str] | None = None,
               metadata: Mapping[str, str] | None = None, crf: int = 18,
               preset: str = "medium", threads: int = 0):
    self.path = os.fspath(path)
    self.fps = fractions.Fraction(fps).limit_denominator(100_000)
    self.crf = int(crf)
    self.preset = preset
    self.threads = int(threads)
    self.metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
    self.num_frames = 0
    self._audio: tuple[np.ndarray, int] | None = None
    if audio_path is not None:
      from ip_lap_jax.media import audio as audio_lib

      # Decoded now so that a bad audio file fails before any frame is rendered.
      self._audio = audio_lib.decode_audio(audio_path)
    directory = os.path.dirname(os.path.abspath(self.path))
    if not os.path.isdir(directory):
      raise MediaError(self.path, "output directory does not exist")
    tmp_name = f".{os.path.basename(self.path)}.{uuid.uuid4().hex[:8]}.tmp"
    self._tmp_path = os.path.join(directory, tmp_name)
    self._container = None
    self._video_stream = None
    self._audio_stream = None
    self._size: tuple[int, int] | None = None  # (height, width) of the input frames
    self._closed = False

  def __enter__(self) -> "VideoWriter":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abort()

  def _start(self, height: int, width: int) -> None:
    import av

    self._container = av.open(self._tmp_path, mode="w", format="mp4",
                              options={"movflags": "use_metadata_tags"})
    self._container.metadata.update(self.metadata)
    stream = self._container.add_stream("libx264", rate=self.fps)
    stream.width, stream.height = width + width % 2, height + height % 2
    stream.pix_fmt = "yuv420p"
    stream.codec_context.time_base = 1 / self.fps
    stream.options = {"crf": str(self.crf), "preset": self.preset}
    stream.codec_context.thread_count = self.threads  # 0: libx264 picks (cores x 1.5)
    self._video_stream = stream
    if self._audio is not None:
      # Every stream must exist before the first packet is muxed (the header).
      samples, rate = self._audio
      channels = samples.shape[0]
      self._audio_stream = self._container.add_stream(
          "aac", rate=rate if rate in _AAC_RATES else 48000,
          layout="mono" if channels == 1 else "stereo")

  def write(self, frame_bgr: np.ndarray) -> None:
    """Appends one BGR uint8 `[H, W, 3]` frame."""
    import av

    if self._closed:
      raise RuntimeError(f"{self.path}: writer already closed")
    frame_bgr = as_bgr_frame(frame_bgr, self.path)
    height, width, _ = frame_bgr.shape
    if self._size is None:
      self._size = (height, width)
      self._start(height, width)
    elif self._size != (height, width):
      raise ValueError(f"{self.path}: frame {self.num_frames} is {height}x{width}, "
                       f"the first frame was {self._size[0]}x{self._size[1]}")
    if height % 2 or width % 2:
      frame_bgr = np.pad(frame_bgr, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_bgr), format="bgr24")
    frame.pts = self.num_frames
    frame.time_base = 1 / self.fps
    for packet in self._video_stream.encode(frame):
      self._container.mux(packet)
    self.num_frames += 1

  def _write_audio(self) -> None:
    import av

    samples, rate = self._audio
    stream = self._audio_stream
    if samples.shape[0] > 2:
      samples = samples.mean(axis=0, keepdims=True, dtype=np.float32)
    if stream.rate != rate:
      from ip_lap_jax.media.audio import _resample_soxr_hq

      samples = np.stack([_resample_soxr_hq(c, rate, stream.rate) for c in samples])
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    layout = "mono" if samples.shape[0] == 1 else "stereo"
    chunk = stream.codec_context.frame_size or 1024
    for start in range(0, samples.shape[1], chunk):
      frame = av.AudioFrame.from_ndarray(
          np.ascontiguousarray(samples[:, start:start + chunk]), format="fltp", layout=layout)
      frame.sample_rate = stream.rate
      frame.pts = start
      frame.time_base = fractions.Fraction(1, stream.rate)
      for packet in stream.encode(frame):
        self._container.mux(packet)
    for packet in stream.encode(None):
      self._container.mux(packet)

  def close(self) -> None:
    """Flushes the encoders, muxes the audio and moves the file into place."""
    if self._closed:
      return
    if self._container is None:
      self._closed = True
      raise MediaError(self.path, "zero frames written")
    try:
      for packet in self._video_stream.encode(None):
        self._container.mux(packet)
      if self._audio_stream is not None:
        self._write_audio()
      self._container.close()
      self._container = None
      os.replace(self._tmp_path, self.path)
    except BaseException:
      self.abort()
      raise
    self._closed = True

  def abort(self) -> None:
    """Discards everything written; `path` is left as it was."""
    self._closed = True
    if self._container is not None:
      try:
        self._container.close()
      except Exception:  # the file is being discarded; a muxer error changes nothing
        pass
      self._container = None
    if os.path.exists(self._tmp_path):
      os.remove(self._tmp_path)
