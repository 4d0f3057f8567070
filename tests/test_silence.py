"""Silent spans in speech and the closed-mouth blend (`ip_lap_jax.inference.silence`)."""

from __future__ import annotations

import numpy as np
import pytest

from ip_lap_jax.constants import FPS
from ip_lap_jax.data import synthetic
from ip_lap_jax.inference import silence

RATE = silence.SAMPLE_RATE


def _speech_with_gap(before_s: float, gap_s: float, after_s: float, seed: int = 3) -> np.ndarray:
  speech = synthetic.synth_speech(before_s + after_s, seed)
  cut = int(before_s * RATE)
  return np.concatenate([speech[:cut], np.zeros(int(gap_s * RATE), np.float32), speech[cut:]])


def test_finds_the_gap_and_nothing_else():
  wav = _speech_with_gap(2.0, 1.5, 2.0)
  num_frames = round(wav.size / RATE * FPS)
  silent = silence.silent_frames(wav, num_frames)
  gap = np.arange(round(2.0 * FPS), round(3.5 * FPS))
  # The gap's interior is silent (the hangover trims at most a few frames at each edge)...
  assert silent[gap[4:-4]].all()
  # ...and nothing outside it: the synthetic speech's own short pauses stay speech.
  outside = np.ones(num_frames, bool)
  outside[gap] = False
  assert not silent[outside].any()


def test_silence_after_speech_ends_and_short_pauses():
  wav = np.concatenate([synthetic.synth_speech(1.5, 5), np.zeros(RATE, np.float32)])
  silent = silence.silent_frames(wav, round(wav.size / RATE * FPS))
  assert silent[-20:].all() and not silent[:30].any()
  # A pause shorter than min_silence_s is speech.
  short = _speech_with_gap(1.0, 0.2, 1.0)
  assert not silence.silent_frames(short, round(short.size / RATE * FPS)).any()
  # All-zero audio is all silent.
  assert silence.silent_frames(np.zeros(RATE, np.float32), 25).all()


def test_closing_weights_ramp_at_inner_edges_only():
  silent = np.zeros(20, bool)
  silent[5:15] = True
  silent[18:] = True
  w = silence.closing_weights(silent, ramp_frames=3)
  np.testing.assert_allclose(w[5:9], [0.25, 0.5, 0.75, 1.0])
  np.testing.assert_allclose(w[11:15], [1.0, 0.75, 0.5, 0.25])
  assert (w[:5] == 0).all() and (w[15:18] == 0).all()
  np.testing.assert_allclose(w[18:], [0.25, 0.5])  # rises, and stays up at the clip's end
  np.testing.assert_allclose(silence.closing_weights(np.ones(4, bool), 3), 1.0)


def test_close_mouth_blends_and_leaves_speech_untouched():
  rng = np.random.default_rng(0)
  content = rng.random((6, 57, 2)).astype(np.float32)
  closed = rng.random((57, 2)).astype(np.float32)
  weights = np.array([0, 0.5, 1, 1, 0.5, 0])
  out = silence.close_mouth(content, weights, closed)
  np.testing.assert_array_equal(out[[0, 5]], content[[0, 5]])
  np.testing.assert_allclose(out[2], closed, rtol=0, atol=1e-7)
  np.testing.assert_allclose(out[1], 0.5 * (content[1] + closed), rtol=0, atol=1e-7)


def test_options_are_checked():
  with pytest.raises(ValueError, match="silence mode"):
    silence.SilenceOptions(mode="quiet")
  with pytest.raises(ValueError, match="aggressiveness"):
    silence.SilenceOptions(aggressiveness=5)
