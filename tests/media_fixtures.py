"""Test media made at test time from what installs with the project, plus the real clips.

A fresh clone has no sample folder, so the tests that check decoding, resampling,
writing, preprocessing and the inference pipeline run on media generated here: the
synthetic talking photo (`ip_lap_jax.data.synthetic`, scikit-image's astronaut, whose face
Face Mesh finds) and synthetic speech, written with the project's own writers
(`video.VideoWriter`, `audio.save_wav`) and PyAV for mp3 / m4a. Each medium is made the
first time a test asks for it and kept for the rest of the session (one copy per xdist
worker), so a worker only pays for what its test files use; everything is small (at
most 60 frames of 160 px, a few seconds of sound) and deterministic by seed.

Every medium comes with the properties it was made to have (`Clip`, `Sound`), and the
tests derive their expectations from those, so the same test body runs on a generated
clip and on a real one from the sample folder (`real_clip`: the figures of the folder's
README). Tests name real clips `real:<file>`; `resolve_clip` turns either kind of name
into a `Clip`, asking for the `shared_data` fixture (which skips or fails without the
folder) only for real ones.
"""

from __future__ import annotations

import dataclasses
import fractions
import math
import pathlib
import wave

import cv2
import numpy as np
import pytest

# The package modules this file builds on, in one place (they may move between packages).
from ip_lap_jax.media import audio
from ip_lap_jax.data import synthetic
from ip_lap_jax.media import video

REAL = "real:"  # prefix of a parameter naming a file of the sample folder
FACE_PX = 160  # side of the rendered face; clips frame it on a grey canvas
GREY = 128
SILENCE_S = 0.25  # every sound starts with this much digital silence (mel floor -4)


@dataclasses.dataclass(frozen=True)
class Clip:
  """A video file and the properties it was made (or is documented) to have.

  Attributes:
    audio_seconds: length of its audio track, None where it has none.
    faceless: source frames [start, stop) that show no face (None: a face in every frame).
  """
  path: pathlib.Path
  fps: float
  width: int
  height: int
  num_frames: int
  audio_seconds: float | None = None
  faceless: tuple[int, int] | None = None

  @property
  def has_audio(self) -> bool:
    return self.audio_seconds is not None

  @property
  def seconds(self) -> float:
    return self.num_frames / self.fps

  def frames_at(self, fps: float = 25.0) -> int:
    """Frames `video.iter_frames(path, fps)` yields: the clip's length in output ticks,
    rounded to nearest (see ip_lap_jax.media.video). Real clips' timestamps may shift it by 1."""
    return math.floor(self.num_frames * fps / self.fps + 0.5)


@dataclasses.dataclass(frozen=True)
class Sound:
  """An audio file and what it was made (or is documented) to be: `channels` x `seconds`
  at `rate` Hz. Generated ones start with SILENCE_S of digital silence; lossy codecs add
  a little padding to `seconds`."""
  path: pathlib.Path
  rate: int
  channels: int
  seconds: float


# name -> (fps, width, height, frames, sound name or None, faceless [start, stop) or None).
# Rates, sizes and containers of the real folder's clips, at a fraction of their size:
# 30 fps without audio (129.mp4), 22.13 fps with stereo 44.1 kHz AAC (face_1.mp4) here
# portrait, 25 fps landscape with mono audio; a stretch of black frames, and a clip
# with sound but no face at all.
_CLIPS = {
    "square_30fps.mp4": (30.0, FACE_PX, FACE_PX, 60, None, None),
    "portrait_22fps.mp4": (22.13, 144, 192, 40, "stereo_44k.wav", None),
    "landscape_25fps.mp4": (25.0, 224, 160, 30, "mono_16k_short.wav", None),
    "faceless_gap_25fps.mp4": (25.0, FACE_PX, FACE_PX, 20, None, (10, 14)),
    "faceless_25fps.mp4": (25.0, 96, 96, 6, "mono_16k_short.wav", (0, 6)),
}

# name -> (rate, channels, seconds, codec) ; codec None: 16-bit PCM wav.
_SOUNDS = {
    "mono_16k.wav": (16000, 1, 2.0, None),  # the speech inference tests drive with
    "mono_16k_short.wav": (16000, 1, 1.3, None),
    "stereo_44k.wav": (44100, 2, 2.5, None),
    "mono_48k.mp3": (48000, 1, 2.0, "libmp3lame"),
    "stereo_44k.m4a": (44100, 2, 1.5, "aac"),
}

# The sample folder's files the tests use, as its README.md describes them.
_REAL_CLIPS = {
    "129.mp4": dict(fps=30.0, width=256, height=256, num_frames=270),
    "face_1.mp4": dict(fps=135 / 6.1, width=700, height=700, num_frames=135, audio_seconds=6.107),
    "face_2.mp4": dict(fps=25.0, width=844, height=844, num_frames=125, audio_seconds=5.015),
}

_REAL_SOUNDS = {
    "audio2.wav": dict(rate=44100, channels=2, seconds=21.339),
    "abstract.mp3": dict(rate=48000, channels=1, seconds=32.88),
}


def real_clip(folder: pathlib.Path, name: str) -> Clip:
  """A clip of the sample folder with its documented properties."""
  return Clip(path=folder / name, **_REAL_CLIPS[name])


def resolve_clip(request: pytest.FixtureRequest, name: str) -> Clip:
  """`real:<file>` from the sample folder (skips or fails without it), else generated."""
  if name.startswith(REAL):
    return real_clip(request.getfixturevalue("shared_data"), name[len(REAL):])
  return request.getfixturevalue("media").clip(name)


def resolve_sound(request: pytest.FixtureRequest, name: str) -> Sound:
  """As `resolve_clip`, for sounds."""
  if name.startswith(REAL):
    name = name[len(REAL):]
    return Sound(path=request.getfixturevalue("shared_data") / name, **_REAL_SOUNDS[name])
  return request.getfixturevalue("media").sound(name)


class GeneratedMedia:
  """Makes each medium on first use under `root` and returns it from there afterwards."""

  def __init__(self, root: pathlib.Path):
    self.root = pathlib.Path(root)
    self._actor: synthetic.TalkingPhoto | None = None

  # ---------------------------------------------------------------------------- clips

  def clip(self, name: str) -> Clip:
    fps, width, height, num_frames, sound, faceless = _CLIPS[name]
    path = self.root / name
    if not path.exists():
      frames = self.face_frames(num_frames, (height, width), seed=list(_CLIPS).index(name))
      for i in range(*(faceless or (0, 0))):
        frames[i] = np.zeros_like(frames[i])  # black: a cut between shots
      with video.VideoWriter(path, fps=fps, audio_path=self.sound(sound).path if sound else None) as w:
        for frame in frames:
          w.write(frame)
    audio_seconds = self._track_seconds(path) if sound else None
    return Clip(path, fps, width, height, num_frames, audio_seconds, faceless)

  def face_frames(self, num_frames: int, size_hw: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """`num_frames` talking-face frames, BGR uint8 [H, W, 3]: the face scaled to fit
    `size_hw` and centred on a grey canvas."""
    if self._actor is None:
      self._actor = synthetic.TalkingPhoto.from_photo(synthetic.default_photo(FACE_PX))
    talking = synthetic.make_clip(self._actor, num_frames / synthetic.FPS, seed)
    assert len(talking.frames) == num_frames
    h, w = size_hw
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    frames = []
    for face in talking.frames:
      canvas = np.full((h, w, 3), GREY, np.uint8)
      canvas[top:top + side, left:left + side] = cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA)
      frames.append(canvas)
    return frames

  @staticmethod
  def _track_seconds(path: pathlib.Path) -> float:
    """The muxed track's length: AAC adds its own priming and padding to the sound's."""
    import av

    with av.open(str(path)) as container:
      stream = container.streams.audio[0]
      return float(stream.duration * stream.time_base)

  def zero_frame_clip(self) -> Clip:
    """A matroska file whose video stream holds no frame, with 0.5 s of audio (so a
    pipeline's audio step passes and the video step is the one that finds nothing)."""
    import av

    path = self.root / "zero_frames.mkv"
    if not path.exists():
      with av.open(str(path), mode="w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        sound = container.add_stream("aac", rate=16000, layout="mono")
        samples = (0.1 * np.sin(np.arange(8000) / 10)).astype(np.float32)[None]
        _encode(container, sound, samples)
        container.mux(stream.encode(None))
    return Clip(path, 25.0, 64, 64, 0, audio_seconds=0.5)

  def corrupt(self, suffix: str = ".mp4") -> pathlib.Path:
    """An mp4 (or `suffix`) file of random bytes behind a plausible `ftyp` box."""
    path = self.root / f"corrupt{suffix}"
    if not path.exists():
      noise = np.random.default_rng(2).integers(0, 256, 8192, dtype=np.uint8).tobytes()
      path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + noise)
    return path

  # --------------------------------------------------------------------------- sounds

  def sound(self, name: str) -> Sound:
    """Synthetic speech after SILENCE_S of zeros; channel 2 (if any) is another voice."""
    rate, channels, seconds, codec = _SOUNDS[name]
    path = self.root / name
    if not path.exists():
      lead = np.zeros(int(round(SILENCE_S * rate)), np.float32)
      voices = [np.concatenate([lead, (0.8 - 0.3 * c) * synthetic.synth_speech(seconds - SILENCE_S, 11 + c, rate)])
                for c in range(channels)]
      samples = np.stack(voices)  # [C, S]
      if codec is None:
        _write_pcm_wav(path, samples, rate)
      else:
        import av

        container_format = {"libmp3lame": "mp3", "aac": "ipod"}[codec]
        with av.open(str(path), mode="w", format=container_format) as container:
          stream = container.add_stream(codec, rate=rate, layout="mono" if channels == 1 else "stereo")
          _encode(container, stream, samples)
    return Sound(path, rate, channels, seconds)


def _write_pcm_wav(path: pathlib.Path, samples: np.ndarray, rate: int) -> None:
  """16-bit PCM wav of float `[C, S]` samples (audio.save_wav writes mono only)."""
  if samples.shape[0] == 1:
    audio.save_wav(path, samples[0], rate)
    return
  pcm = np.clip(np.rint(samples.T * 32768.0), -32768, 32767).astype("<i2")  # interleaved
  with wave.open(str(path), "wb") as out:
    out.setnchannels(samples.shape[0])
    out.setsampwidth(2)
    out.setframerate(rate)
    out.writeframes(pcm.tobytes())


def _encode(container, stream, samples: np.ndarray) -> None:
  """Encodes float `[C, S]` samples into an open PyAV audio stream and flushes it."""
  import av

  layout = "mono" if samples.shape[0] == 1 else "stereo"
  for start in range(0, samples.shape[1], 1024):
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start:start + 1024], np.float32),
                                       format="fltp", layout=layout)
    frame.sample_rate, frame.pts = stream.rate, start
    frame.time_base = fractions.Fraction(1, stream.rate)
    container.mux(stream.encode(frame))
  container.mux(stream.encode(None))
