"""LSE-C / LSE-D: SyncNet (vs the PyTorch mirror of syncnet_python's `S`, through the
converter), the MFCC (vs python_speech_features), the scoring (vs a NumPy restatement of
`calc_pdist` and `evaluate`'s loop) and the whole path (vs the mirror called window batch
by window batch, as `SyncNetInstance.evaluate`)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import python_speech_features
import torch
from torch_mirror import syncnet as mirror_lib

from ip_lap_jax import convert
from ip_lap_jax import conversion
from ip_lap_jax.models import registry, store
from ip_lap_jax.evaluation import lip_sync
from ip_lap_jax.evaluation import mfcc as mfcc_lib
from ip_lap_jax.models import syncnet as syncnet_lib
from ip_lap_jax.models.syncnet import SyncNet
from torch_mirror.common import randomize_batchnorm_stats
from tests.conversion_asserts import assert_conversion_error


def _mirror(seed: int = 0) -> mirror_lib.S:
  """Random S with He-normal convolutions and random BatchNorm statistics: the default
  init shrinks activations layer by layer, He-normal keeps embeddings O(1)."""
  torch.manual_seed(seed)
  net = randomize_batchnorm_stats(mirror_lib.S(), seed=seed + 1).eval()
  gen = torch.Generator().manual_seed(seed + 2)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)):
        fan_in = m.weight[0].numel()
        # Lip inputs are 0..255, not unit scale: the first layer is scaled down.
        scale = (2.0 / fan_in) ** 0.5 / (128.0 if m.in_channels == 3 else 1.0)
        m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * scale)
    # A shared embedding offset: with unrelated random towers, the zero rows padding the
    # audio would otherwise be nearer every lip embedding than any audio embedding is,
    # every offset would score alike and LSE-C would be 0.
    shared = 3.0 * torch.randn(1024, generator=gen)
    net.netfcaud[3].bias.copy_(shared)
    net.netfclip[3].bias.copy_(shared)
  return net


@pytest.fixture(scope="module")
def mirror() -> mirror_lib.S:
  return _mirror()


@pytest.fixture(scope="module")
def variables(mirror, tmp_path_factory) -> dict:
  """The mirror saved as syncnet_v2.model (a bare state_dict), converted, reloaded."""
  root = tmp_path_factory.mktemp("syncnet")
  torch.save(mirror.state_dict(), root / "syncnet_v2.model")
  provenance = convert.convert_checkpoint(root / "syncnet_v2.model", root / "converted")
  assert provenance["model"] == "syncnet"  # detected from the keys
  return store.load_tree(root / "converted")


def _clip(num_frames: int, seconds: float, size: int = 96, seed: int = 0
          ) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  ramp = np.linspace(0, 255, size)[None, :, None, None] + np.zeros((num_frames, size, size, 3))
  frames = np.clip(ramp + rng.normal(0, 40, (num_frames, size, size, 3)), 0, 255)
  audio = (rng.normal(size=int(seconds * 16000)) * 3000).astype(np.int16)
  return frames.astype(np.uint8), audio


# ----------------------------------------------------------------------------- network


def test_embeddings_match_torch_mirror(mirror, variables):
  rng = np.random.default_rng(0)
  clips = rng.uniform(0, 255, (2, 5, 224, 224, 3)).astype(np.float32)
  mfcc = rng.normal(0, 5, (3, 13, 20, 1)).astype(np.float32)
  with torch.no_grad():
    want_lip = mirror.forward_lip(torch.from_numpy(clips.transpose(0, 4, 1, 2, 3).copy())).numpy()
    want_aud = mirror.forward_aud(torch.from_numpy(mfcc.transpose(0, 3, 1, 2).copy())).numpy()
  model = registry.build(registry.official_spec("syncnet"))  # as the scorer builds it
  got_lip = jax.jit(lambda v, x: model.apply(v, x, method=SyncNet.forward_lip))(variables, clips)
  got_aud = jax.jit(lambda v, x: model.apply(v, x, method=SyncNet.forward_aud))(variables, mfcc)
  for got, want in ((got_lip, want_lip), (got_aud, want_aud)):
    assert got.shape == want.shape and want.shape[1] == 1024
    assert np.abs(want).mean() > 0.1 and np.abs(want[0] - want[1]).max() > 0.1
    err = float(np.abs(np.asarray(got) - want).max())
    print(f"syncnet max abs error {err:.3g} (max |embedding| {np.abs(want).max():.3g})")
    assert err <= 1e-4


def test_a_run_of_frames_embeds_each_of_its_windows(mirror, variables):
  """[B, D] frames -> every window of 5 consecutive frames, as the mirror embeds each
  window alone (on CPU the stem runs as `_depth_winograd`; 6 windows per run: one whole
  Winograd block of 4 and a partial one)."""
  rng = np.random.default_rng(1)
  frames = rng.uniform(0, 255, (2, 10, 224, 224, 3)).astype(np.float32)
  windows = np.stack([frames[b, t:t + 5] for b in range(2) for t in range(6)])
  with torch.no_grad():
    want = mirror.forward_lip(torch.from_numpy(windows.transpose(0, 4, 1, 2, 3).copy())).numpy()
  model = registry.build(registry.official_spec("syncnet"))  # as the scorer builds it
  got = jax.jit(lambda v, x: model.apply(v, x, method=SyncNet.forward_lip))(variables, frames)
  assert got.shape == want.shape == (12, 1024)
  err = float(np.abs(np.asarray(got) - want).max())
  print(f"syncnet run of frames: max abs error {err:.3g}")
  assert err <= 1e-4


def _exact_conv(x, k, strides):
  """An unpadded convolution by XLA at HIGHEST precision: the truth the CPU paths match."""
  return jax.lax.conv_general_dilated(x, k, strides, "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      precision=jax.lax.Precision.HIGHEST)


@pytest.mark.parametrize("depth, outputs", [(11, 4), (8, 4), (9, 2), (6, 3)])
def test_depth_winograd_equals_summed_convolutions(depth, outputs):
  """Depth outputs t = sum_j conv2d(frame t + j, kernel[j]), float64 truth; whole and
  partial blocks. Rounding stays within a few times float32's (measured 5e-7 relative)."""
  rng = np.random.default_rng(depth)
  x = rng.uniform(0, 255, (2, depth, 23, 19, 3)).astype(np.float32)
  k = rng.normal(0, 0.05, (5, 7, 7, 3, 6)).astype(np.float32)

  conv = lambda u, v: _exact_conv(u, v, (2, 2))
  want = np.stack([sum(np.asarray(conv(x[:, t + j], k[j]), np.float64) for j in range(5))
                   for t in range(depth - 4)], axis=1)
  got = syncnet_lib._depth_winograd(jnp.asarray(x), jnp.asarray(k), conv, outputs=outputs)
  assert got.shape == want.shape
  np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=5e-6 * np.abs(want).max())


@pytest.mark.parametrize("shape, kernel, strides, chunk", [
    ((3, 37, 29, 15), (7, 7), (2, 2), 2),  # the lip stem's layout; last chunk short
    ((2, 21, 20, 5), (5, 3), (3, 2), 4),  # rows not a whole number of row groups
    ((1, 9, 11, 2), (4, 2), (2, 1), 1),  # even kernel rows: no zero row
    ((2, 8, 8, 3), (1, 3), (2, 2), 4),
])
def test_row_phase_conv_equals_lax_conv(shape, kernel, strides, chunk):
  rng = np.random.default_rng(sum(shape))
  x = rng.uniform(0, 255, shape).astype(np.float32)
  k = rng.normal(0, 0.05, (*kernel, shape[-1], 6)).astype(np.float32)
  want = _exact_conv(x, k, strides)
  got = syncnet_lib._strided_conv_by_row_phases(x, k, strides, chunk=chunk)
  assert got.shape == want.shape
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0,
                             atol=1e-6 * float(np.abs(want).max()))


@pytest.mark.parametrize("shape, window, strides, padding", [
    ((2, 1, 19, 17, 3), (3, 3), (2, 2), 0), ((2, 1, 14, 13, 3), (3, 3), (2, 2), 1),
    ((2, 13, 20, 4), (3, 3), (1, 2), 0)])
def test_max_pool_equals_flax_max_pool(shape, window, strides, padding):
  x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  flat = x.reshape(-1, *shape[-3:])
  want = nn.max_pool(flat, window, strides, ((padding, padding),) * 2)
  got = syncnet_lib._max_pool(x, window, strides, padding)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want).reshape(*shape[:-3], *want.shape[1:]))


def test_converter_layout_and_bad_keys(mirror, tmp_path):
  template = registry.official_template("syncnet")
  assert template["params"]["netcnnlip_0"]["kernel"].shape == (5, 7, 7, 3, 96)
  assert template["params"]["netcnnaud_18"]["kernel"].shape == (5, 4, 256, 512)
  assert template["batch_stats"]["netfclip_1"]["var"].shape == (512,)
  state = mirror.state_dict()
  keys = {k for k in state if not k.endswith("num_batches_tracked")}
  rebuilt = {conversion.flax_path_to_torch_key(c, tuple(p.key for p in path))
             for c in ("params", "batch_stats")
             for path, _ in jax.tree_util.tree_leaves_with_path(template[c])}
  assert rebuilt == keys
  bad = dict(state)
  bad["netcnnaud.22.weight"] = torch.zeros(3)
  del bad["netcnnlip.15.running_mean"]
  bad["netcnnlip.4.weight"] = torch.zeros(256, 96, 5, 5, 1)
  assert_conversion_error(bad, template, unknown="netcnnaud.22.weight",
                          missing="netcnnlip.15.running_mean", misshaped="netcnnlip.4.weight")


def test_export_writes_a_bare_state_dict(variables, mirror, tmp_path):
  out = tmp_path / "syncnet_v2.model"
  conversion.export_state_dict(variables, out, "syncnet")
  reloaded = torch.load(out, map_location="cpu", weights_only=True)
  for key, value in mirror.state_dict().items():
    if not key.endswith("num_batches_tracked"):
      assert torch.equal(reloaded[key], value), key


# ----------------------------------------------------------------------------- MFCC


@pytest.mark.parametrize("num_samples", [300, 400, 401, 16000, 23457])
def test_mfcc_matches_python_speech_features(num_samples):
  audio = (np.random.default_rng(num_samples).normal(size=num_samples) * 3000).astype(np.int16)
  audio[:50] = 0  # silent frames: the eps replacement of log(0)
  want = python_speech_features.mfcc(audio, 16000)
  got = mfcc_lib.mfcc(audio)
  assert got.shape == want.shape == (mfcc_lib.num_frames(num_samples), 13)
  assert np.abs(got - want).max() <= 1e-4


# ----------------------------------------------------------------------------- scoring


def _original_scores(lip: np.ndarray, aud: np.ndarray, vshift: int = 15
                     ) -> lip_sync.LipSyncScores:
  """`calc_pdist` + `evaluate`'s reduction, loop by loop, in NumPy float64."""
  win = 2 * vshift + 1
  padded = np.concatenate([np.zeros((vshift, aud.shape[1])), aud, np.zeros((vshift, aud.shape[1]))])
  dists = [np.sqrt(np.sum((np.repeat(lip[[i]], win, 0) - padded[i:i + win] + 1e-6) ** 2, 1))
           for i in range(len(lip))]
  mdist = np.mean(np.stack(dists, 1), 1)
  minidx = int(np.argmin(mdist))
  median = np.sort(mdist)[(win - 1) // 2]
  return lip_sync.LipSyncScores(median - mdist[minidx], mdist[minidx], vshift - minidx)


@pytest.mark.parametrize("count", [1, 7, 70])
def test_scores_match_the_original_loop(count):
  rng = np.random.default_rng(count)
  lip = rng.normal(size=(count, 1024)).astype(np.float32)
  aud = (0.5 * np.roll(lip, 3, axis=0) + rng.normal(size=(count, 1024))).astype(np.float32)
  want = _original_scores(lip.astype(np.float64), aud.astype(np.float64))
  got = lip_sync.scores_from_distances(lip_sync.offset_distances(lip, aud))
  assert got.offset == want.offset
  np.testing.assert_allclose([got.lse_c, got.lse_d], [want.lse_c, want.lse_d], rtol=0, atol=1e-4)


def test_window_count_follows_the_lastframe_rule():
  assert lip_sync.num_windows(100, 100 * 640) == 95  # windows 0 .. min_length - 6
  assert lip_sync.num_windows(100, 50 * 640 + 639) == 45  # audio shorter: floor(samples/640)
  with pytest.raises(ValueError, match="too short"):
    lip_sync.LipSyncScorer({"params": {}}, batch_size=4)(*_clip(5, 1.0))


def test_audio_is_scored_as_pcm16():
  audio = np.array([0.0, 0.5, -1.0, 1.0, 1e-5], np.float32)
  np.testing.assert_array_equal(lip_sync.to_pcm16(audio), [0, 16384, -32768, 32767, 0])
  pcm = np.array([1, -2], np.int16)
  np.testing.assert_array_equal(lip_sync.to_pcm16(pcm), pcm)


def test_whole_path_matches_the_original_loop(mirror, variables):
  frames, audio = _clip(num_frames=30, seconds=1.1)  # min(30, 27) - 5 = 22 windows
  scorer = lip_sync.LipSyncScorer(variables, batch_size=8)  # three batches, one padded
  got = scorer(frames, audio)
  frames224 = np.stack([__import__("cv2").resize(f, (224, 224)) for f in frames])
  want = mirror_lib.reference_lse(mirror, frames224, python_speech_features.mfcc(audio, 16000),
                                  len(audio), batch_size=20)
  print(f"LSE-C {got.lse_c:.5f} vs {want[0]:.5f}, LSE-D {got.lse_d:.5f} vs {want[1]:.5f}")
  assert got.offset == want[2] and got.lse_c > 0.01
  np.testing.assert_allclose([got.lse_c, got.lse_d], want[:2], rtol=0, atol=1e-4)
  # Float audio in [-1, 1] is scored as the int16 file it would be written to.
  assert scorer(frames, audio / 32768.0) == got
  # Split over two (fake CPU) devices, each embedding its own run of frames.
  split = lip_sync.LipSyncScorer(variables, batch_size=8, devices=jax.devices()[:2])(frames, audio)
  assert split.offset == got.offset
  np.testing.assert_allclose([split.lse_c, split.lse_d], [got.lse_c, got.lse_d], rtol=0, atol=1e-5)
