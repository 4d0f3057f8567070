"""Watermark: the package's per-block rule, survival through H.264, detector and CLI.

Embedding and detection run on a generated talking clip and, where the sample folder is
present, on real footage (`real:129.mp4`).
"""

from __future__ import annotations

import itertools
import shutil

import numpy as np
import pytest
from imwatermark.dwtDctSvd import EmbedDwtDctSvd

from ip_lap_jax.media import video
from ip_lap_jax.media import watermark
from ip_lap_jax.errors import MediaError
from tests import media_fixtures


@pytest.fixture(scope="module", params=["square_30fps.mp4", "real:129.mp4"])
def marked(request, tmp_path_factory):
  """(frames, marked frames, marked file, source clip): the source's first 25 frames at
  25 fps, watermarked and written with VideoWriter (crf 18)."""
  clip = media_fixtures.resolve_clip(request, request.param)
  frames = list(itertools.islice(video.iter_frames(clip.path), 25))
  marked_frames = [watermark.embed_frame(f) for f in frames]
  path = tmp_path_factory.mktemp("wm") / "marked video.mp4"
  with video.VideoWriter(path, metadata=watermark.METADATA, crf=18) as writer:
    for frame in marked_frames:
      writer.write(frame)
  return frames, marked_frames, path, clip


def test_block_rule_equals_imwatermark():
  rng = np.random.default_rng(0)
  blocks = rng.uniform(0, 600, (50, 4, 4))
  bits = rng.integers(0, 2, 50)
  lib = EmbedDwtDctSvd(watermarks=bits.tolist(), wmLen=50, scales=[0, 36, 36], block=4)
  expected = np.stack([lib.diffuse_dct_svd(b.copy(), int(t), 36) for b, t in zip(blocks, bits)])
  ours = watermark.embed_blocks(blocks, bits)
  np.testing.assert_allclose(ours, expected, atol=1e-8)
  lib_votes = np.array([lib.infer_dct_svd(b, 36) for b in ours])
  np.testing.assert_array_equal(watermark.block_votes(ours), lib_votes)
  np.testing.assert_array_equal(lib_votes, bits)
  # An all-zero block still carries its bit.
  zero = watermark.embed_blocks(np.zeros((2, 4, 4)), np.array([0, 1]))
  np.testing.assert_array_equal(watermark.block_votes(zero), [0, 1])


def test_key_is_balanced_and_fixed():
  key = watermark.block_key(4096)
  assert set(np.unique(key)) == {0, 1}
  assert abs(key.mean() - 0.5) < 0.05
  np.testing.assert_array_equal(watermark.block_key(100), key[:100])  # prefix-stable


def test_embedding_is_invisible_and_decodes_exactly(marked):
  frames, marked_frames, _, _ = marked
  for original, frame in zip(frames[:5], marked_frames[:5]):
    assert frame.shape == original.shape and frame.dtype == np.uint8
    mse = np.mean((frame.astype(np.float64) - original) ** 2)
    assert 10 * np.log10(255 ** 2 / mse) > 38.0
    assert watermark.detect_frame(frame) == 1.0
    assert watermark.detect_frame(original) < watermark.FOUND_THRESHOLD


def test_survives_h264_and_is_absent_from_the_input(marked):
  frames, _, path, clip = marked
  report = watermark.detect_video(path)
  assert report.found
  assert report.bit_accuracy >= watermark.FOUND_THRESHOLD
  assert report.frames_checked == len(frames)
  assert report.decoded == watermark.PAYLOAD
  assert report.metadata_tag == watermark.METADATA_VALUE
  per_frame = [watermark.detect_frame(f) for f in itertools.islice(video.iter_frames(path), 10)]
  assert min(per_frame) >= watermark.FOUND_THRESHOLD
  original = watermark.detect_video(clip.path, max_frames=len(frames))
  assert not original.found
  assert original.bit_accuracy < watermark.FOUND_THRESHOLD
  assert original.metadata_tag is None


def test_cli_exit_codes(media, marked, capsys, tmp_path):
  _, _, path, _ = marked
  assert watermark.main(["detect", str(path), "--max-frames", "10"]) == 0
  out = capsys.readouterr().out
  assert "watermark FOUND" in out and "bit accuracy 1.000" in out
  unmarked = media.clip("landscape_25fps.mp4").path
  assert watermark.main(["detect", str(unmarked), "--max-frames", "10"]) == 1
  assert "watermark NOT FOUND" in capsys.readouterr().out
  assert watermark.main(["detect", str(tmp_path / "missing.mp4")]) == 2
  assert "missing.mp4: no such file" in capsys.readouterr().err


def test_cli_embed_then_detect(media, tmp_path, capsys):
  source = media.clip("portrait_22fps.mp4")  # 22.13 fps, with audio
  clip = tmp_path / "short clip.mp4"
  shutil.copy(source.path, clip)
  assert watermark.main(["detect", str(clip)]) == 1
  out = tmp_path / "marqué.mp4"
  assert watermark.main(["embed", str(clip), str(out)]) == 0
  assert f"{source.frames_at(25)} watermarked frames written" in capsys.readouterr().out
  assert video.probe(out).has_audio
  assert watermark.main(["detect", str(out)]) == 0
  assert "watermark FOUND" in capsys.readouterr().out


def test_small_frames_rejected():
  with pytest.raises(ValueError, match="too small"):
    watermark.embed_frame(np.zeros((64, 64, 3), np.uint8))
  with pytest.raises(MediaError):
    watermark.detect_video("/nonexistent/clip.mp4")
