"""Audio loading and mel features against librosa and the release's recipe.

Generated speech (tests/media_fixtures.py: wav, mp3, m4a; starts with digital silence)
covers the formats; `real:` sounds from the sample folder check the same on real files.
"""

from __future__ import annotations

import math

import librosa
import numpy as np
import pytest
import scipy.signal

from ip_lap_jax.media import audio
from ip_lap_jax.errors import MediaError
from tests import media_fixtures


def reference_mel(wav: np.ndarray) -> np.ndarray:
  """The release's melspectrogram written out with librosa calls, [80, M]."""
  y = scipy.signal.lfilter([1, -0.97], [1], wav)
  spec = np.abs(librosa.stft(y=y, n_fft=800, hop_length=200, win_length=800, window="hann",
                             center=True, pad_mode="constant"))
  basis = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
  db = 20 * np.log10(np.maximum(1e-5, basis @ spec)) - 20
  return np.clip(8 * (db + 100) / 100 - 4, -4, 4)


@pytest.mark.parametrize("sound", ["stereo_44k.wav", "mono_48k.mp3", "real:audio2.wav", "real:abstract.mp3"],
                         indirect=True)
def test_melspectrogram_matches_librosa_recipe(sound):
  wav = audio.load_audio(sound.path)
  mel = audio.melspectrogram(wav)
  ref = reference_mel(wav)
  assert mel.dtype == np.float32
  assert mel.shape == ref.shape == (80, 1 + len(wav) // 200)
  assert np.max(np.abs(mel - ref)) <= 1e-4
  # 80 mel frames per second of audio.
  assert abs(mel.shape[1] - len(wav) / 16000 * 80) <= 1
  assert abs(len(wav) / 16000 - sound.seconds) < 0.06  # lossy codecs pad a little
  # Speech spans the range: not all clipped to one value.
  assert mel.min() == -4.0 and mel.max() > 0.0


@pytest.mark.parametrize("sound", ["stereo_44k.wav", "real:audio2.wav"], indirect=True)
def test_load_wav_equals_librosa_load(sound):
  """Stereo 44.1 kHz wav: same samples as the release's librosa.load(path, sr=16000)."""
  path = sound.path
  wav = audio.load_audio(path)
  ref, _ = librosa.load(path, sr=16000)
  assert wav.dtype == np.float32 and wav.ndim == 1
  assert wav.shape == ref.shape
  np.testing.assert_array_equal(wav, ref)
  samples, rate = audio.decode_audio(path)
  assert (samples.shape[0], rate) == (sound.channels, sound.rate) == (2, 44100)
  assert len(wav) == math.ceil(samples.shape[1] * 16000 / 44100)


@pytest.mark.parametrize("sound", ["mono_48k.mp3", "real:abstract.mp3"], indirect=True)
def test_load_mp3_is_16k_mono_of_right_length(sound):
  path = sound.path
  wav = audio.load_audio(path)
  samples, rate = audio.decode_audio(path)
  assert wav.ndim == 1 and wav.dtype == np.float32
  assert len(wav) == math.ceil(samples.shape[1] * 16000 / rate)
  ref, _ = librosa.load(path, sr=16000)
  assert abs(len(wav) - len(ref)) <= 16  # decoders may differ by the mp3 start padding
  n = min(len(wav), len(ref))
  assert np.max(np.abs(wav[:n] - ref[:n])) < 1e-3
  assert (samples.shape[0], rate) == (sound.channels, sound.rate)


def test_load_m4a_is_16k_mono_of_right_length(media):
  sound = media.sound("stereo_44k.m4a")
  wav = audio.load_audio(sound.path)
  samples, rate = audio.decode_audio(sound.path)
  assert (samples.shape[0], rate) == (sound.channels, sound.rate)
  assert wav.ndim == 1 and wav.dtype == np.float32
  assert len(wav) == math.ceil(samples.shape[1] * 16000 / rate)
  # AAC pads to whole 1024-sample frames; the MP4 track's declared length trims that off.
  assert samples.shape[1] == round(sound.seconds * rate)
  # The lead-in silence stays silent, the speech after it does not.
  lead = int(media_fixtures.SILENCE_S * 16000)
  assert np.max(np.abs(wav[:lead // 2])) < 1e-3 and np.std(wav[lead:]) > 1e-2


@pytest.mark.parametrize("clip", ["portrait_22fps.mp4", "real:face_1.mp4"], indirect=True)
def test_load_audio_track_of_mp4(clip):
  import av

  path = clip.path
  with av.open(str(path)) as container:
    stream = container.streams.audio[0]
    seconds = float(stream.duration * stream.time_base)
  wav = audio.load_audio(path)
  assert wav.ndim == 1
  assert abs(len(wav) / 16000 - seconds) < 0.05
  assert abs(seconds - clip.audio_seconds) < 0.05
  assert np.std(wav) > 1e-3  # real sound, not silence
  assert np.all(np.abs(wav) <= 1.0 + 1e-3)


def test_save_wav_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  # Clipped below +1.0, which saturates at 32767.
  wav = (0.5 * rng.standard_normal(8000)).clip(-1, 0.999).astype(np.float32)
  path = tmp_path / "tone é.wav"
  audio.save_wav(path, wav)
  back = audio.load_audio(path)
  assert back.shape == wav.shape
  assert np.max(np.abs(back - wav)) <= 0.5 / 32768 + 1e-7
  back_8k = audio.load_audio(path, sr=8000)
  assert len(back_8k) == 4000



def test_numpy_pieces_equal_scipy_and_librosa_bit_for_bit(media, tmp_path):
  """The restated filterbank, window, pre-emphasis and wav writer (kept free of scipy and
  librosa imports for worker start-up) give the libraries' exact bits."""
  import scipy.io.wavfile

  basis = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
  np.testing.assert_array_equal(audio._mel_basis(), basis.astype(np.float64))
  np.testing.assert_array_equal(audio._hann_window(),
                                scipy.signal.get_window("hann", 800, fftbins=True))
  wav = audio.load_audio(media.sound("stereo_44k.wav").path)
  noise = np.random.default_rng(0).standard_normal(10_001) * 1e3
  for x in (wav, noise, wav[:1]):
    np.testing.assert_array_equal(audio._preemphasis(x),
                                  scipy.signal.lfilter([1.0, -0.97], [1.0], x.astype(np.float64)))
  audio.save_wav(tmp_path / "ours.wav", wav[:16_001])
  pcm = np.clip(np.rint(wav[:16_001].astype(np.float64) * 32768.0), -32768, 32767)
  scipy.io.wavfile.write(tmp_path / "scipy.wav", 16000, pcm.astype(np.int16))
  assert (tmp_path / "ours.wav").read_bytes() == (tmp_path / "scipy.wav").read_bytes()


def test_media_errors_name_the_file(media, tmp_path):
  missing = tmp_path / "nothing here.wav"
  with pytest.raises(MediaError, match="nothing here.wav: no such file"):
    audio.load_audio(missing)
  with pytest.raises(MediaError, match="corrupt.mp3: "):
    audio.load_audio(media.corrupt(".mp3"))
  with pytest.raises(MediaError, match="square_30fps.mp4: no audio stream"):
    audio.load_audio(media.clip("square_30fps.mp4").path)


def test_training_window_and_inference_chunks_agree():
  mel = np.random.default_rng(0).standard_normal((80, 123)).astype(np.float32)
  assert audio.training_mel_window(mel, 0) is None
  assert audio.training_mel_window(mel, 1) is None
  valid = []
  for i in range(60):
    window = audio.training_mel_window(mel, i)
    start = int(80 * (i - 2) / 25)
    if i < 2 or start + 16 > mel.shape[1]:
      assert window is None
      continue
    valid.append(i)
    np.testing.assert_array_equal(window, mel[:, start:start + 16])
  chunks = audio.inference_mel_chunks(mel)
  assert chunks.shape == (len(valid), 80, 16)
  # Inference chunk k is the training window of frame k + 2 (same centring).
  for k, i in enumerate(valid):
    assert i == k + 2
    np.testing.assert_array_equal(chunks[k], audio.training_mel_window(mel, i))
  # Every full window is used: the next start would run past the end.
  assert int(len(chunks) * 80 / 25) + 16 > mel.shape[1]
  assert audio.inference_mel_chunks(mel[:, :15]).shape == (0, 80, 16)


def test_aac_padding_is_trimmed_so_the_frame_count_holds(tmp_path):
  """A 2.00 s track muxed as AAC decodes to 2.00 s (not 2.048), so 50 frames, not 51."""
  from ip_lap_jax.inference import schedule
  from ip_lap_jax.media import video

  wav = np.sin(np.linspace(0, 400 * np.pi, 32000)).astype(np.float32) * 0.3
  audio.save_wav(tmp_path / "speech.wav", wav)
  with video.VideoWriter(tmp_path / "clip.mp4", fps=25, audio_path=tmp_path / "speech.wav") as out:
    for _ in range(50):
      out.write(np.full((32, 32, 3), 128, np.uint8))
  samples, rate = audio.decode_audio(tmp_path / "clip.mp4")
  assert (samples.shape, rate) == ((1, 32000), 16000)
  assert schedule.output_frame_count(len(audio.load_audio(tmp_path / "clip.mp4"))) == 50
