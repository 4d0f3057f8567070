"""Silence in the driving speech: where it is, and a closed mouth while it lasts.

The landmark generator was trained on talking clips and keeps the mouth moving through
pauses and after speech ends (IP_LAP issue #5). `--silence closed` (the default) finds
silent spans and, inside them, moves the lip and jaw landmarks to a closed mouth: the
most closed of the clip's reference landmark sets, which is in the clip's own pose and
box coordinates. Each edge of a span ramps over `ramp_frames` frames, so the mouth
closes and opens smoothly; frames outside every span are the model's own output.

Detector: WebRTC's voice-activity detector (`webrtcvad-wheels`, the maintained binary
build of Google's GMM-based VAD): offline, no weights to download, a few microseconds
per 30 ms frame, and robust to loudness, which a plain energy gate is not (a loud breath
or noise floor would pass as speech; quiet speech would not). Its raw per-frame
decisions flicker, so they are smoothed with hysteresis: a silent span must last at
least `min_silence_s`, and `hangover_s` of speech is kept on both sides of every voiced
frame (the lips close slightly after the sound stops and open before it starts).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ip_lap_jax.constants import FPS

SAMPLE_RATE = 16000
VAD_FRAME_MS = 30  # one of WebRTC's 10/20/30 ms frames


@dataclasses.dataclass(frozen=True)
class SilenceOptions:
  """How silence is found and handled (`infer.py --silence*` flags).

  Attributes:
    mode: 'closed' (close the mouth in silent spans) or 'model' (the release's
      behaviour: the model's landmarks everywhere).
    aggressiveness: WebRTC VAD mode 0 (keeps most as speech) to 3 (calls most non-speech).
    min_silence_s: shorter pauses count as speech (the mouth keeps talking through them).
    hangover_s: speech kept before and after every voiced VAD frame.
    ramp_frames: video frames over which the mouth closes and reopens at a span's edges.
  """

  mode: str = "closed"
  aggressiveness: int = 2
  min_silence_s: float = 0.3
  hangover_s: float = 0.06
  ramp_frames: int = 3

  def __post_init__(self):
    if self.mode not in ("closed", "model"):
      raise ValueError(f"silence mode must be 'closed' or 'model', got {self.mode!r}")
    if self.aggressiveness not in (0, 1, 2, 3):
      raise ValueError(f"VAD aggressiveness must be 0..3, got {self.aggressiveness}")
    if self.min_silence_s < 0 or self.hangover_s < 0 or self.ramp_frames < 0:
      raise ValueError("min_silence_s, hangover_s and ramp_frames must be >= 0")


def voiced_vad_frames(wav: np.ndarray, aggressiveness: int = 2) -> np.ndarray:
  """WebRTC VAD decisions for 16 kHz mono float audio `[S]` in [-1, 1] -> bool `[S // 480]`."""
  import webrtcvad  # pylint: disable=import-outside-toplevel

  vad = webrtcvad.Vad(aggressiveness)
  size = SAMPLE_RATE * VAD_FRAME_MS // 1000
  pcm = (np.clip(np.asarray(wav, np.float32), -1.0, 1.0) * 32767).astype("<i2")
  count = pcm.size // size
  return np.array([vad.is_speech(pcm[i * size:(i + 1) * size].tobytes(), SAMPLE_RATE)
                   for i in range(count)], bool)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
  """[start, end) of every run of True in a bool array."""
  padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
  edges = np.flatnonzero(np.diff(padded))
  return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))


def silent_frames(wav: np.ndarray, num_frames: int, options: SilenceOptions = SilenceOptions()
                  ) -> np.ndarray:
  """Which output video frames (at 25 fps) fall in silence: bool `[num_frames]`.

  A frame is silent when no voiced VAD frame (widened by the hangover) overlaps it and
  its silent run lasts at least `min_silence_s`. Frames past the audio's end are silent.
  """
  voiced = voiced_vad_frames(wav, options.aggressiveness)
  vad_s = VAD_FRAME_MS / 1000
  speech = np.zeros(num_frames, bool)
  for start, end in _runs(voiced):
    t0, t1 = start * vad_s - options.hangover_s, end * vad_s + options.hangover_s
    first, last = int(np.floor(t0 * FPS)), int(np.ceil(t1 * FPS))
    speech[max(first, 0):min(last, num_frames)] = True
  silent = ~speech
  min_frames = int(np.ceil(options.min_silence_s * FPS))
  for start, end in _runs(silent):
    if end - start < min_frames:
      silent[start:end] = False
  return silent


def closing_weights(silent: np.ndarray, ramp_frames: int) -> np.ndarray:
  """How far each frame's mouth moves toward closed, float `[T]` in [0, 1].

  1 inside silent spans, 0 in speech, with linear ramps of `ramp_frames` frames inside
  each span's edges (a span that touches the clip's start or end does not ramp there).
  """
  weights = np.zeros(silent.shape, np.float64)
  n = silent.size
  for start, end in _runs(silent):
    t = np.arange(start, end)
    ramp = max(ramp_frames, 0) + 1
    rise = (t - start + 1) / ramp if start > 0 else np.ones(t.size)
    fall = (end - t) / ramp if end < n else np.ones(t.size)
    weights[start:end] = np.minimum(1.0, np.minimum(rise, fall))
  return weights


def close_mouth(content: np.ndarray, weights: np.ndarray, closed: np.ndarray) -> np.ndarray:
  """Moves predicted lip and jaw landmarks toward a closed mouth.

  Args:
    content: `[T, 57, 2]` predicted content landmarks (jaw then lips, box-normalised).
    weights: `[T]` from `closing_weights`.
    closed: `[57, 2]` the most closed reference's content landmarks.
  Returns:
    `[T, 57, 2]`: (1 - w) * content + w * closed; frames with w = 0 are returned as they are.
  """
  w = np.asarray(weights, content.dtype)[:, None, None]
  out = (1 - w) * content + w * np.asarray(closed, content.dtype)[None]
  return np.where(w > 0, out, content)
