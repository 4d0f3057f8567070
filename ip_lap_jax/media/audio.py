"""Audio loading and the mel features of the release (the release's `audio.py`, Wav2Lip's hparams).

Decoding uses PyAV (it ships its own ffmpeg, so any container ffmpeg reads works: wav,
mp3, m4a, flac, the audio track of an mp4). Samples are decoded at their native rate as
float32, mixed to mono by averaging the channels and resampled with soxr at 'HQ'
quality, trimmed/padded to ceil(S * ratio): the release loads with
`librosa.load(path, sr=16000)`, which does exactly that (mean over channels, then
`librosa.resample(res_type='soxr_hq')`), so for PCM wav the result equals the
release's bit for bit. For compressed formats the decoder differs (ffmpeg here,
libsndfile/audioread there): on abstract.mp3 the difference is ~1e-6.

The mel spectrogram is Wav2Lip's recipe, computed in float64 like the release (its
`lfilter` promotes to float64) and returned as float32 `[80, M]`, M = 1 + S // 200
(80 mel frames per second of 16 kHz audio). Its three library pieces (scipy's
pre-emphasis `lfilter`, scipy's periodic Hann window, librosa's Slaney filterbank) are
restated here in NumPy with the libraries' own operations, so the results are bit-equal
(tested) while importing this module stays cheap: scipy.signal and librosa.filters cost
~1.2 s of CPU per process, which every preprocessing worker would pay.
"""

from __future__ import annotations

import functools
import os
import wave

import numpy as np

from ip_lap_jax import array_checks
from ip_lap_jax.constants import FPS  # the video rate the mel windows are aligned to
from ip_lap_jax.errors import MediaError, require_file

SAMPLE_RATE = 16000
N_FFT = 800
HOP = 200
WIN = 800
N_MELS = 80
FMIN = 55.0
FMAX = 7600.0
PREEMPHASIS = 0.97
MIN_LEVEL_DB = -100.0
REF_LEVEL_DB = 20.0
MAX_ABS_VALUE = 4.0
MEL_STEP = 16  # mel frames per video frame window (0.2 s)

# STFT frames processed per block, so memory stays bounded for long recordings.
_STFT_BLOCK = 4096


def decode_audio(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
  """Decodes the first audio stream of any media file at its native rate.

  Returns:
    (samples, rate): samples float32 `[C, S]` in [-1, 1] (planar, one row per channel).
  Raises:
    MediaError: missing file, no audio stream, undecodable data, or no samples.
  """
  import av  # PyAV is only needed for media I/O; keep package import cheap.

  path = require_file(path)
  chunks: list[np.ndarray] = []
  try:
    with av.open(path) as container:
      if not container.streams.audio:
        raise MediaError(path, "no audio stream")
      stream = container.streams.audio[0]
      # fltp = float32 planar; layout and rate stay those of the source.
      resampler = av.AudioResampler(format="fltp")
      rate = 0
      declared = _declared_length(container, stream)
      for frame in container.decode(stream):
        for out in resampler.resample(frame):
          rate = out.sample_rate
          chunks.append(out.to_ndarray())
      for out in resampler.resample(None):
        chunks.append(out.to_ndarray())
  except MediaError:
    raise
  except (av.error.FFmpegError, ValueError) as e:
    raise MediaError(path, f"cannot decode: {e}") from e
  if not chunks or sum(c.shape[-1] for c in chunks) == 0:
    raise MediaError(path, "audio stream has no samples")
  samples = np.concatenate(chunks, axis=-1).astype(np.float32, copy=False)
  if declared is not None and declared[1] == rate and 0 < declared[0] < samples.shape[-1]:
    samples = samples[:, :declared[0]]
  return samples, int(rate)


def _declared_length(container, stream) -> tuple[int, int] | None:
  """(samples, rate) an MP4/MOV audio track declares, or None where none is exact.

  AAC encodes whole 1024-sample frames, so its decoder returns the last frame's padding
  too: a 2.00 s track decodes to 2.048 s, and the output video would gain a frame. The
  MP4 family stores the true length (the edit list / track duration); other containers
  (mp3's estimate from the bitrate, say) are left untrimmed.
  """
  if "mp4" not in container.format.name.split(","):
    return None
  if not stream.duration or stream.time_base is None or not stream.sample_rate:
    return None
  return int(round(stream.duration * stream.time_base * stream.sample_rate)), stream.sample_rate


def load_audio(path: str | os.PathLike[str], sr: int = SAMPLE_RATE) -> np.ndarray:
  """Loads any audio (or a video's audio track) as mono float32 `[S]` at `sr` Hz.

  Mono = mean of the channels; resampling = soxr_hq (librosa's default), as the
  release's `librosa.load(path, sr=16000)`.
  """
  samples, rate = decode_audio(path)
  mono = samples.mean(axis=0, dtype=np.float32)
  if rate != sr:
    mono = _resample_soxr_hq(mono, rate, sr)
  return np.ascontiguousarray(mono, dtype=np.float32)


def _resample_soxr_hq(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
  """`librosa.resample(y, res_type='soxr_hq')` without librosa's numba start-up cost.

  Same steps: soxr at 'HQ' quality, then trimmed or zero-padded to ceil(S * ratio).
  """
  import soxr

  n_out = int(np.ceil(y.shape[-1] * float(target_sr) / orig_sr))
  out = soxr.resample(y, orig_sr, target_sr, quality="soxr_hq")
  if out.shape[-1] >= n_out:
    return out[:n_out]
  return np.pad(out, (0, n_out - out.shape[-1]))


def save_wav(path: str | os.PathLike[str], wav: np.ndarray, sr: int = SAMPLE_RATE) -> None:
  """Writes mono float audio `[S]` (nominally in [-1, 1]) as 16-bit PCM wav.

  Unlike the release's `save_wav`, the level is not renormalised: samples are scaled by
  32768 (the factor decoders divide by), rounded and clipped to int16, so loading the
  file back gives the same signal to within half a quantisation step.
  """
  wav = np.asarray(wav)
  array_checks.assert_rank(wav, 1)
  pcm = np.clip(np.rint(wav.astype(np.float64) * 32768.0), -32768, 32767).astype(np.int16)
  # The standard library writes the same 44-byte PCM header as scipy.io.wavfile
  # (byte-identical files, tested) without scipy's import time.
  with wave.open(os.fspath(path), "wb") as out:
    out.setnchannels(1)
    out.setsampwidth(2)
    out.setframerate(int(sr))
    out.writeframes(pcm.astype("<i2", copy=False).tobytes())


def _hz_to_mel(hz: float) -> float:
  """librosa's Slaney `hz_to_mel` for one frequency (linear below 1 kHz, log above)."""
  f_sp = 200.0 / 3
  if hz >= 1000.0:
    return 1000.0 / f_sp + np.log(hz / 1000.0) / (np.log(6.4) / 27.0)
  return (hz - 0.0) / f_sp


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
  """librosa's Slaney `mel_to_hz`, vectorised (the inverse of `_hz_to_mel`)."""
  f_sp = 200.0 / 3
  freqs = 0.0 + f_sp * mels
  min_log_mel = (1000.0 - 0.0) / f_sp
  log_t = mels >= min_log_mel
  freqs[log_t] = 1000.0 * np.exp(np.log(6.4) / 27.0 * (mels[log_t] - min_log_mel))
  return freqs


@functools.lru_cache(maxsize=1)
def _mel_basis() -> np.ndarray:
  """librosa's Slaney mel filterbank `[80, 401]`, float64 (the release's float32 values).

  `librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)` step by step
  (same operations in the same order, float32 weights), so the values are bit-equal.
  """
  fft_freqs = np.fft.rfftfreq(n=N_FFT, d=1.0 / SAMPLE_RATE)
  mel_f = _mel_to_hz(np.linspace(_hz_to_mel(FMIN), _hz_to_mel(FMAX), N_MELS + 2))
  fdiff = np.diff(mel_f)
  ramps = np.subtract.outer(mel_f, fft_freqs)
  weights = np.zeros((N_MELS, 1 + N_FFT // 2), np.float32)
  for i in range(N_MELS):
    lower = -ramps[i] / fdiff[i]
    upper = ramps[i + 2] / fdiff[i + 1]
    weights[i] = np.maximum(0, np.minimum(lower, upper))
  weights *= (2.0 / (mel_f[2:N_MELS + 2] - mel_f[:N_MELS]))[:, np.newaxis]  # Slaney norm
  return weights.astype(np.float64)


@functools.lru_cache(maxsize=1)
def _hann_window() -> np.ndarray:
  """Periodic Hann `[800]`, float64: scipy's `get_window('hann', 800, fftbins=True)`.

  scipy's general cosine window, same operations: a symmetric window one sample longer,
  its last sample dropped.
  """
  fac = np.linspace(-np.pi, np.pi, WIN + 1)
  window = np.zeros(WIN + 1)
  for k, a in enumerate((0.5, 0.5)):
    window += a * np.cos(k * fac)
  return window[:-1]


def _preemphasis(wav: np.ndarray) -> np.ndarray:
  """`scipy.signal.lfilter([1, -0.97], [1], wav)`: y[n] = x[n] - 0.97 x[n-1], float64.

  For this two-tap FIR filter lfilter computes each output as one product and one sum,
  so the NumPy expression gives the same bits.
  """
  x = wav.astype(np.float64)
  y = np.empty_like(x)
  y[:1] = x[:1]
  np.subtract(x[1:], PREEMPHASIS * x[:-1], out=y[1:])
  return y


def melspectrogram(wav: np.ndarray) -> np.ndarray:
  """Normalised log-mel spectrogram of 16 kHz mono audio.

  Args:
    wav: float `[S]` at 16 kHz.
  Returns:
    float32 `[80, M]`, M = 1 + S // 200, values in [-4, 4].
  """
  wav = np.asarray(wav)
  array_checks.assert_rank(wav, 1)
  y = _preemphasis(wav)
  # Centred frames with zero padding (librosa's center=True, pad_mode='constant').
  y = np.pad(y, N_FFT // 2, mode="constant")
  frames = np.lib.stride_tricks.sliding_window_view(y, N_FFT)[::HOP]  # [M, 800] view
  window, basis = _hann_window(), _mel_basis()
  mel = np.empty((N_MELS, frames.shape[0]), np.float64)
  for start in range(0, frames.shape[0], _STFT_BLOCK):
    block = frames[start:start + _STFT_BLOCK]
    magnitude = np.abs(np.fft.rfft(block * window, n=N_FFT, axis=-1))  # [m, 401]
    mel[:, start:start + block.shape[0]] = basis @ magnitude.T
  min_level = np.exp(MIN_LEVEL_DB / 20.0 * np.log(10.0))  # 1e-5
  db = 20.0 * np.log10(np.maximum(min_level, mel)) - REF_LEVEL_DB
  normalised = (2 * MAX_ABS_VALUE) * ((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS_VALUE
  return np.clip(normalised, -MAX_ABS_VALUE, MAX_ABS_VALUE).astype(np.float32)


def training_mel_window(mel: np.ndarray, frame_index: int) -> np.ndarray | None:
  """The 16-frame mel window of video frame `frame_index` (training sampler).

  Starts at mel frame `int(80 * (i - 2) / 25)`, so the window is centred on the frame.
  Args:
    mel: `[80, M]`.
  Returns:
    `[80, 16]` view, or None where the window would start before 0 or run past the end.
  """
  array_checks.assert_rank(mel, 2)
  shifted = frame_index - 2
  if shifted < 0:
    return None
  # Same float expression as the release, so rounding at exact multiples agrees.
  start = int(80.0 * (shifted / float(FPS)))
  if start + MEL_STEP > mel.shape[1]:
    return None
  return mel[:, start:start + MEL_STEP]


def inference_mel_chunks(mel: np.ndarray) -> np.ndarray:
  """Every full 16-frame window at 25 fps steps: chunk k = mel[:, int(k*80/25):][:, :16].

  Output frame j uses chunk `max(0, j - 2)` (the release's centring; see inference).
  Args:
    mel: `[80, M]`.
  Returns:
    `[K, 80, 16]` (K may be 0 for audio shorter than 0.2 s).
  """
  array_checks.assert_rank(mel, 2)
  multiplier = 80.0 / FPS
  starts = []
  k = 0
  while int(k * multiplier) + MEL_STEP <= mel.shape[1]:
    starts.append(int(k * multiplier))
    k += 1
  if not starts:
    return np.zeros((0, mel.shape[0], MEL_STEP), mel.dtype)
  return np.stack([mel[:, s:s + MEL_STEP] for s in starts])
