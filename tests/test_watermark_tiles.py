"""The watermark's tile lattice on HD frames: locality, batching, equality with the
full-frame DWT, survival through H.264 at crf 18 and 28, and the false-positive rate.

All media are generated here (the synthetic talking photo placed on a textured HD
background), so this file needs no sample folder.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np
import pytest
import pywt

from ip_lap_jax.data import synthetic
from ip_lap_jax.media import video
from ip_lap_jax.media import watermark


@functools.cache
def _actor() -> synthetic.TalkingPhoto:
  return synthetic.TalkingPhoto.from_photo(synthetic.default_photo(256))


def _hd_frames(height: int, width: int, count: int, seed: int) -> np.ndarray:
  """`count` BGR frames [count, H, W, 3]: a textured background with a talking face."""
  rng = np.random.default_rng(seed)
  actor = _actor()
  clip = synthetic.make_clip(actor, count / synthetic.FPS, seed)
  noise = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
  background = cv2.resize(cv2.GaussianBlur(noise, (5, 5), 1.5), (width, height))
  frames = np.repeat(background[None], count, axis=0)
  size = min(height, width) // 2
  y, x = (height - size) // 2, (width - size) // 3
  for i in range(count):
    frames[i, y:y + size, x:x + size] = cv2.resize(clip.frames[i], (size, size))
  return frames


def _full_frame_reference(frame: np.ndarray) -> np.ndarray:
  """Watermark v1: every tile, through pywt's DWT of the whole chroma planes."""
  h4, w4 = frame.shape[0] // 4 * 4, frame.shape[1] // 4 * 4
  yuv = watermark._to_yuv(frame)
  for ch in watermark.CHANNELS:
    approx, details = pywt.dwt2(yuv[:h4, :w4, ch].astype(np.float64), "haar")
    blocks, (nr, nc) = watermark._blocks(approx)
    n = blocks.shape[0]
    bits = watermark.PAYLOAD_BITS[np.arange(n) % 32] ^ watermark.block_key(n)
    marked = watermark.embed_blocks(blocks, bits).reshape(nr, nc, 4, 4).transpose(0, 2, 1, 3)
    approx[:nr * 4, :nc * 4] = marked.reshape(nr * 4, nc * 4)
    yuv[:h4, :w4, ch] = pywt.idwt2((approx, details), "haar")
  bgr = cv2.cvtColor(yuv * (1 / 255), cv2.COLOR_YUV2BGR) * 255
  return np.clip(np.rint(bgr), 0, 255).astype(np.uint8)


def test_stride_bounds_the_marked_tiles():
  assert watermark.tile_stride(256, 256) == 1
  for h, w in ((720, 1280), (1080, 1920), (2160, 3840)):
    s = watermark.tile_stride(h, w)
    tiles = -(-(h // 8) // s) * -(-(w // 8) // s)
    assert watermark.TARGET_TILES <= tiles <= 4 * watermark.TARGET_TILES, (h, w, s, tiles)


def test_equals_the_full_frame_dwt_where_every_tile_is_marked():
  frame = _hd_frames(256, 320, 1, seed=0)[0]
  assert watermark.tile_stride(*frame.shape[:2]) == 1
  ours, reference = watermark.embed_frame(frame), _full_frame_reference(frame)
  diff = np.abs(ours.astype(int) - reference)
  # Same arithmetic in another order: at most a rounding tie apart.
  assert diff.max() <= 1 and np.mean(diff > 0) < 1e-4


def test_hd_marks_only_the_lattice_and_batches_equal_frames():
  frames = _hd_frames(720, 1280, 3, seed=1)
  marked = watermark.embed_frames(frames)
  for frame, batch_frame in zip(frames, marked):
    np.testing.assert_array_equal(watermark.embed_frame(frame), batch_frame)
  s = watermark.tile_stride(720, 1280)
  on_lattice = np.zeros((720, 1280), bool)
  tiles = on_lattice.reshape(90, 8, 160, 8)
  tiles[::s, :, ::s] = True
  changed = np.any(marked != frames, axis=-1)
  assert not changed[:, ~on_lattice].any()
  assert changed[:, on_lattice].mean() > 0.5
  mse = np.mean((marked.astype(np.float64) - frames) ** 2)
  assert 10 * np.log10(255 ** 2 / mse) > 45.0  # a quarter of the tiles, each ~40 dB
  assert all(watermark.detect_frame(f) == 1.0 for f in marked)


@pytest.mark.parametrize("height,width", [(256, 256), (720, 1280), (1080, 1920)])
@pytest.mark.parametrize("crf", [18, 28])
def test_survives_h264_in_every_frame(tmp_path, height, width, crf):
  frames = _hd_frames(height, width, 8, seed=height + crf)
  path = tmp_path / f"marked_{height}_{crf}.mp4"
  with video.VideoWriter(path, metadata=watermark.METADATA, crf=crf) as writer:
    for frame in watermark.embed_frames(frames):
      writer.write(frame)
  per_frame = [watermark.detect_frame(f) for f in video.iter_frames(path)]
  assert len(per_frame) == 8 and min(per_frame) >= watermark.FOUND_THRESHOLD, per_frame
  report = watermark.detect_video(path)
  assert report.found and report.decoded == watermark.PAYLOAD
  assert report.metadata_tag == watermark.METADATA_VALUE


def test_false_positive_rate_is_stated_and_unmarked_bits_are_coin_flips(tmp_path):
  expected = sum(math.comb(32, k) for k in range(29, 33)) / 2 ** 32
  assert watermark.FALSE_POSITIVE_RATE == pytest.approx(expected)
  assert 1e-6 < watermark.FALSE_POSITIVE_RATE < 2e-6
  # Unmarked frames of varied content decode to about half the payload bits, never near
  # the threshold: the key XOR whitens whatever bias the content has.
  accuracies = []
  for seed in range(12):
    for frame in _hd_frames(*((720, 1280) if seed % 2 else (256, 256)), 2, seed=100 + seed):
      accuracies.append(watermark.detect_frame(frame))
  accuracies = np.array(accuracies)
  assert accuracies.max() < watermark.FOUND_THRESHOLD
  # 24 frames x 32 bits: the mean of fair coin flips lies within 0.5 +- 0.1 (> 6 sigma).
  assert abs(accuracies.mean() - 0.5) < 0.1
