"""A small synthetic talking-face dataset, generated from nothing the project downloads.

The demo cannot assume weights or talking-face data, so it builds its own: speech-like
audio synthesised here (voiced syllables with varying pitch, vowel formants, loudness and
pauses) and short clips of a real face photo that ships with scikit-image (`astronaut`)
in which the jaw and lower lip open in proportion to the audio's loudness, with a little
head motion. The jaw is moved by a smooth displacement field anchored on Face Mesh's own
landmarks of the photo, and the gap between the lips is painted as a dark mouth interior,
so Face Mesh measures a lip openness that follows the loudness: a mapping the landmark
generator can learn in minutes on a CPU. Everything is deterministic by seed.
"""

from __future__ import annotations

import dataclasses
import pathlib

import cv2
import numpy as np

from ip_lap_jax.constants import FPS

SAMPLE_RATE = 16000

# Inner lip contours of Face Mesh (upper: corner to corner over the top; lower: back).
_UPPER_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
_LOWER_INNER = (308, 324, 318, 402, 317, 14, 87, 178, 88, 95, 78)

# (F1, F2, F3) in Hz of a few vowels; voiced syllables pick one each.
_VOWEL_FORMANTS = ((730, 1090, 2440), (530, 1840, 2480), (270, 2290, 3010),
                   (570, 840, 2410), (300, 870, 2240), (660, 1720, 2410))


def synth_speech(duration_s: float, seed: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """Speech-like audio: voiced syllables with pitch glides, formants, loudness and pauses.

  Returns:
    float32 [S] mono waveform in [-1, 1] at `sample_rate`.
  """
  rng = np.random.default_rng(seed)
  total = int(round(duration_s * sample_rate))
  wav = np.zeros(total, np.float64)
  t = 0.15 + rng.uniform(0.0, 0.2)
  while t < duration_s - 0.1:
    length = rng.uniform(0.12, 0.38)
    n = int(min(length, duration_s - t) * sample_rate)
    if n < 200:
      break
    start = int(t * sample_rate)
    wav[start:start + n] += _syllable(n, rng, sample_rate)
    gap = rng.uniform(0.03, 0.12) if rng.random() > 0.2 else rng.uniform(0.3, 0.7)
    t += length + gap
  wav += 0.002 * rng.standard_normal(total)
  peak = np.max(np.abs(wav))
  return (0.9 * wav / max(peak, 1e-6)).astype(np.float32)


def _syllable(n: int, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
  time = np.arange(n) / sample_rate
  f0 = rng.uniform(105, 190) * (1.0 + rng.uniform(-0.15, 0.15) * time / time[-1])
  phase = 2 * np.pi * np.cumsum(f0) / sample_rate
  formants = _VOWEL_FORMANTS[rng.integers(len(_VOWEL_FORMANTS))]
  signal = np.zeros(n)
  for k in range(1, 30):
    freq = k * f0
    gain = sum(1.0 / (1.0 + ((freq - f) / (0.12 * f)) ** 2) for f in formants) / k
    signal += np.where(freq < sample_rate / 2 - 200, gain, 0.0) * np.sin(k * phase)
  attack = min(n, int(0.025 * sample_rate))
  release = min(n, int(0.06 * sample_rate))
  envelope = np.ones(n)
  envelope[:attack] = np.linspace(0, 1, attack)
  envelope[n - release:] *= np.linspace(1, 0, release)
  loudness = rng.uniform(0.25, 1.0)
  return loudness * envelope * signal / (np.max(np.abs(signal)) + 1e-9)


def frame_loudness(wav: np.ndarray, num_frames: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """RMS loudness of a 40 ms window centred on each 25 fps video frame.

  Returns:
    float32 [num_frames].
  """
  half = int(0.02 * sample_rate)
  centres = (np.arange(num_frames) / FPS * sample_rate).astype(int)
  out = np.zeros(num_frames, np.float32)
  for i, c in enumerate(centres):
    seg = wav[max(0, c - half): c + half]
    out[i] = np.sqrt(np.mean(seg.astype(np.float64) ** 2)) if seg.size else 0.0
  return out


def loudness_to_openness(loudness: np.ndarray) -> np.ndarray:
  """Mouth opening in [0, 1] driven by loudness (the mapping the demo's model must learn)."""
  scaled = np.clip(loudness / 0.35, 0.0, 1.0)
  # One frame of smoothing: a jaw does not jump between frames.
  padded = np.pad(scaled, 1, mode="edge")
  return (0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]).astype(np.float32)


def default_photo(size: int = 256) -> np.ndarray:
  """scikit-image's astronaut photo, cropped around the face: BGR uint8 [size, size, 3]."""
  from skimage import data  # pylint: disable=import-outside-toplevel
  rgb = data.astronaut()
  # Face Mesh puts this face at about x 179..271, y 71..177 of the 512 x 512 photo.
  crop = rgb[20:220, 125:325]
  return cv2.resize(crop[..., ::-1], (size, size), interpolation=cv2.INTER_AREA).copy()


@dataclasses.dataclass
class TalkingPhoto:
  """Animates the lower face of one photo.

  Attributes:
    photo: BGR uint8 [H, W, 3].
    points: Face Mesh landmarks of the photo in pixels, [478, 2] (x, y).
    max_open_px: jaw drop at openness 1, in pixels.
  """
  photo: np.ndarray
  points: np.ndarray
  max_open_px: float

  @classmethod
  def from_photo(cls, photo: np.ndarray, max_open_fraction: float = 0.14) -> "TalkingPhoto":
    """Detects the face once with Face Mesh; raises ValueError if there is none."""
    import mediapipe as mp  # pylint: disable=import-outside-toplevel
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
                                         refine_landmarks=True) as mesh:
      result = mesh.process(cv2.cvtColor(photo, cv2.COLOR_BGR2RGB))
    if not result.multi_face_landmarks:
      raise ValueError("synthetic data: Face Mesh finds no face in the photo")
    h, w = photo.shape[:2]
    points = np.array([[p.x * w, p.y * h] for p in result.multi_face_landmarks[0].landmark], np.float32)
    face_height = points[:, 1].max() - points[:, 1].min()
    return cls(photo=photo, points=points, max_open_px=max_open_fraction * face_height)

  def render(self, openness: float, shift: tuple[float, float] = (0.0, 0.0), angle_deg: float = 0.0) -> np.ndarray:
    """One frame with the jaw opened by `openness` in [0, 1] and a small head motion.

    Returns:
      BGR uint8 [H, W, 3].
    """
    h, w = self.photo.shape[:2]
    p = self.points
    lip_line = p[14, 1]  # lower inner lip: teeth and upper lip stay, the jaw drops below it
    chin = p[152, 1]
    mouth_x = 0.5 * (p[61, 0] + p[291, 0])
    jaw_half_width = 0.5 * (p[361, 0] - p[132, 0])
    drop = float(openness) * self.max_open_px

    def horizontal(x: np.ndarray) -> np.ndarray:
      return np.exp(-0.5 * ((x - mouth_x) / (0.75 * jaw_half_width)) ** 2)

    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = np.clip((ys - lip_line + 1.0) / max(1.0, 0.06 * (chin - lip_line)), 0.0, 1.0)
    below_chin = np.clip((ys - chin) / max(1.0, 0.8 * (chin - lip_line)), 0.0, 1.0)
    dy = drop * ramp * (1.0 - below_chin) ** 2 * horizontal(xs)
    frame = cv2.remap(self.photo, xs, ys - dy, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)

    if drop > 0.5:
      # The gap that opens between the resting and the dropped lower lip is mouth interior.
      resting = p[list(_LOWER_INNER)]
      dropped = resting.copy()
      dropped[:, 1] += drop * horizontal(dropped[:, 0])
      gap = np.concatenate([resting, dropped[::-1]]).round().astype(np.int32)
      interior = np.zeros((h, w), np.uint8)
      cv2.fillPoly(interior, [gap], 255)
      alpha = cv2.GaussianBlur(interior, (5, 5), 1.0).astype(np.float32)[..., None] / 255.0
      dark = np.array([35, 30, 70], np.float32)
      frame = (frame * (1 - alpha) + dark * alpha).astype(np.uint8)

    centre = (float(mouth_x), float(0.5 * (p[13, 1] + p[10, 1])))
    affine = cv2.getRotationMatrix2D(centre, angle_deg, 1.0)
    affine[:, 2] += shift
    return cv2.warpAffine(frame, affine, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def head_motion(num_frames: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Slow, smooth head motion: pixel shifts [F, 2] and roll angles [F] in degrees."""
  rng = np.random.default_rng(seed)
  t = np.arange(num_frames) / FPS
  shifts = np.stack([a * np.sin(2 * np.pi * f * t + ph) for a, f, ph in
                     zip(rng.uniform(1.0, 3.0, 2), rng.uniform(0.1, 0.4, 2), rng.uniform(0, 2 * np.pi, 2))], -1)
  angles = rng.uniform(0.5, 2.0) * np.sin(2 * np.pi * rng.uniform(0.1, 0.3) * t + rng.uniform(0, 2 * np.pi))
  return shifts.astype(np.float32), angles.astype(np.float32)


@dataclasses.dataclass
class SyntheticClip:
  """One generated clip: frames, its audio and the ground-truth driving signal."""
  frames: list[np.ndarray]
  wav: np.ndarray
  loudness: np.ndarray
  openness: np.ndarray


def make_clip(actor: TalkingPhoto, duration_s: float, seed: int) -> SyntheticClip:
  """A clip whose jaw follows the loudness of its own synthetic speech."""
  wav = synth_speech(duration_s, seed)
  num_frames = int(round(duration_s * FPS))
  loudness = frame_loudness(wav, num_frames)
  openness = loudness_to_openness(loudness)
  shifts, angles = head_motion(num_frames, seed + 7919)
  frames = [actor.render(o, tuple(s), a) for o, s, a in zip(openness, shifts, angles)]
  return SyntheticClip(frames=frames, wav=wav, loudness=loudness, openness=openness)


def write_clip(clip: SyntheticClip, path: pathlib.Path) -> None:
  """Writes the clip as an H.264 mp4 at 25 fps with its audio muxed in."""
  from ip_lap_jax.media import audio
  from ip_lap_jax.media import video  # pylint: disable=import-outside-toplevel
  path.parent.mkdir(parents=True, exist_ok=True)
  wav_path = path.with_suffix(".wav")
  audio.save_wav(wav_path, clip.wav, SAMPLE_RATE)
  with video.VideoWriter(path, fps=FPS, audio_path=wav_path) as writer:
    for frame in clip.frames:
      writer.write(frame)
  wav_path.unlink()


def make_dataset(root: pathlib.Path, num_clips: int, duration_s: float, seed: int = 0,
                 speaker: str = "synthetic") -> list[pathlib.Path]:
  """Writes `<root>/<speaker>/clipNNN.mp4` clips of the default photo; returns their paths.

  Clips already on disk are kept (a second run reuses them).
  """
  actor = TalkingPhoto.from_photo(default_photo())
  paths = []
  for i in range(num_clips):
    path = pathlib.Path(root) / speaker / f"clip{i:03d}.mp4"
    if not path.exists():
      write_clip(make_clip(actor, duration_s, seed * 1000 + i), path)
    paths.append(path)
  return paths
