"""MFCC as `python_speech_features.mfcc(signal, 16000)` computes it with its defaults,
restated in NumPy (float64): SyncNet's audio input.

Defaults: 25 ms frames (400 samples) every 10 ms (160), the last frame zero-padded,
pre-emphasis 0.97 (the first sample kept), rectangular window, power spectrum
|rfft(frame, 512)|^2 / 512, 26 triangular mel filters from 0 Hz to 8 kHz on FFT bins
floor(513 * mel2hz(m) / 16000), log (zeros replaced by float64 eps), orthonormal DCT-II
keeping 13 cepstra, sinusoidal lifter 1 + 11 sin(pi n / 22), and cepstrum 0 replaced by
the log of the frame's total power (appendEnergy).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import scipy.fft

SAMPLE_RATE = 16000
FRAME_LENGTH = 400
FRAME_STEP = 160
NFFT = 512
NUM_FILTERS = 26
NUM_CEPSTRA = 13
PREEMPHASIS = 0.97
CEP_LIFTER = 22


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
  return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
  return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


@functools.cache
def mel_filterbank(sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """[26, 257] triangles on integer FFT bins (python_speech_features' get_filterbanks)."""
  mel = np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), NUM_FILTERS + 2)
  bins = np.floor((NFFT + 1) * _mel_to_hz(mel) / sample_rate)
  bank = np.zeros((NUM_FILTERS, NFFT // 2 + 1))
  idx = np.arange(NFFT // 2 + 1)
  for j in range(NUM_FILTERS):
    lo, mid, hi = bins[j], bins[j + 1], bins[j + 2]
    rising = (idx >= lo) & (idx < mid)
    falling = (idx >= mid) & (idx < hi)
    bank[j, rising] = (idx[rising] - lo) / (mid - lo)
    bank[j, falling] = (hi - idx[falling]) / (hi - mid)
  return bank


def num_frames(num_samples: int) -> int:
  """MFCC frames of a signal: 1 + ceil((n - 400) / 160), at least 1."""
  if num_samples <= FRAME_LENGTH:
    return 1
  return 1 + math.ceil((num_samples - FRAME_LENGTH) / FRAME_STEP)


def mfcc(signal: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """signal: [N] (any real dtype; SyncNet's scorer passes int16 samples) -> [frames, 13].

  Only 16 kHz is supported: the frame and FFT sizes above are those the defaults give
  at that rate.
  """
  if sample_rate != SAMPLE_RATE:
    raise ValueError(f"mfcc: only {SAMPLE_RATE} Hz is supported, got {sample_rate}")
  x = np.asarray(signal, np.float64).reshape(-1)
  x = np.append(x[:1], x[1:] - PREEMPHASIS * x[:-1])
  n = num_frames(len(x))
  padded = np.zeros((n - 1) * FRAME_STEP + FRAME_LENGTH)
  padded[:len(x)] = x
  starts = np.arange(n)[:, None] * FRAME_STEP
  frames = padded[starts + np.arange(FRAME_LENGTH)[None, :]]
  power = np.square(np.abs(np.fft.rfft(frames, NFFT))) / NFFT  # [n, 257]
  eps = np.finfo(float).eps
  energy = power.sum(axis=1)
  energy = np.where(energy == 0, eps, energy)
  feat = power @ mel_filterbank(sample_rate).T
  feat = np.where(feat == 0, eps, feat)
  cep = scipy.fft.dct(np.log(feat), type=2, axis=1, norm="ortho")[:, :NUM_CEPSTRA]
  cep = cep * (1 + (CEP_LIFTER / 2.0) * np.sin(np.pi * np.arange(NUM_CEPSTRA) / CEP_LIFTER))
  cep[:, 0] = np.log(energy)
  return cep
