"""FID: the Inception feature extractor (vs a PyTorch mirror), its conversion, piq's FID
formula (vs a float64 numpy transcription and scipy), and eval/fid in renderer training."""

from __future__ import annotations

import json
import time

import cv2
import jax
import numpy as np
import pytest
import scipy.linalg
import torch

from ip_lap_jax import parallel
from ip_lap_jax.configs import renderer as ren_config
from ip_lap_jax import convert
from ip_lap_jax import conversion
from ip_lap_jax.models import registry, store
from ip_lap_jax.training import loop as train_lib
from ip_lap_jax.data import pipeline
from ip_lap_jax.models.inception import FEATURE_DIM, InceptionV3
from torch_mirror.common import randomize_batchnorm_stats
from torch_mirror.inception import FIDInceptionV3Torch
from ip_lap_jax.training import metrics
from ip_lap_jax.training import stage as stage_lib
from tests import train_fixtures
from tests.conversion_asserts import assert_conversion_error


def _mirror(seed: int = 0) -> FIDInceptionV3Torch:
  """Random mirror with He-normal convs and random BatchNorm statistics.

  PyTorch's default conv init shrinks activations layer after layer; He-normal keeps the
  2048 features O(1) through the 94 convs, so the 1e-4 bound is a relative test too.
  """
  torch.manual_seed(seed)
  net = randomize_batchnorm_stats(FIDInceptionV3Torch(), seed=seed + 1).eval()
  gen = torch.Generator().manual_seed(seed + 2)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.Conv2d):
        m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / m.weight[0].numel()) ** 0.5)
  return net


@pytest.fixture(scope="module")
def mirror() -> FIDInceptionV3Torch:
  return _mirror()


@pytest.fixture(scope="module")
def converted(mirror, tmp_path_factory) -> str:
  """The mirror saved as pytorch-fid's file (a bare state_dict), converted to a directory."""
  root = tmp_path_factory.mktemp("inception")
  src = root / "pt_inception-2015-12-05-6726825d.pth"
  torch.save(mirror.state_dict(), src)
  provenance = convert.convert_checkpoint(src, root / "converted")  # model detected
  assert provenance["model"] == "inception" and provenance["num_keys"] == len(mirror.state_dict())
  return str(root / "converted")


# ----------------------------------------------------------------------------- network


def test_features_match_torch_mirror(mirror, converted):
  variables = store.load_tree(converted)
  noise = np.random.default_rng(0).uniform(size=(64, 64, 3))
  ramp = np.stack([*np.meshgrid(np.linspace(0, 1, 64), np.linspace(1, 0, 64)), noise[..., 0]], -1)
  x = np.stack([noise, ramp]).astype(np.float32)  # [2, 64, 64, 3] in [0, 1]
  with torch.no_grad():
    want = mirror(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  got = np.asarray(jax.jit(InceptionV3().apply)(variables, x))
  assert got.shape == want.shape == (2, FEATURE_DIM)
  # Far from zero and different per image, so the comparison means something.
  assert np.abs(want).mean() > 0.1 and np.abs(want[0] - want[1]).max() > 0.1
  err = float(np.abs(got - want).max())
  print(f"inception features max abs error {err:.3g} (max |feature| {np.abs(want).max():.3g})")
  assert err <= 1e-4


def test_param_tree_holds_every_key_of_the_weights_file(mirror):
  template = registry.official_template("inception")
  params = template["params"]
  assert params["Conv2d_1a_3x3"]["conv"]["kernel"].shape == (3, 3, 3, 32)
  assert params["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"].shape == (1, 7, 128, 128)
  assert params["fc"]["kernel"].shape == (2048, 1008)
  assert template["batch_stats"]["Mixed_7c"]["branch_pool"]["bn"]["mean"].shape == (192,)
  keys = {k for k in mirror.state_dict() if not k.endswith("num_batches_tracked")}
  rebuilt = {conversion.flax_path_to_torch_key(c, tuple(p.key for p in path))
             for c in ("params", "batch_stats")
             for path, _ in jax.tree_util.tree_leaves_with_path(template[c])}
  assert rebuilt == keys


def test_converter_reports_every_bad_key(mirror):
  template = registry.official_template("inception")
  state = dict(mirror.state_dict())
  # The published file predates num_batches_tracked: converting without it is fine.
  plain = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
  variables = conversion.state_dict_to_variables(plain, template)
  np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], state["fc.weight"].numpy().T)
  np.testing.assert_array_equal(variables["batch_stats"]["Mixed_5b"]["branch1x1"]["bn"]["mean"],
                                state["Mixed_5b.branch1x1.bn.running_mean"].numpy())

  bad = dict(state)
  bad["AuxLogits.fc.weight"] = torch.zeros(1000, 768)  # torchvision's aux head: not in FID
  del bad["Mixed_6e.branch7x7dbl_3.bn.running_var"]
  bad["Mixed_7a.branch3x3_2.conv.weight"] = torch.zeros(320, 192, 1, 3)
  assert_conversion_error(bad, template, unknown="AuxLogits.fc.weight",
                          missing="Mixed_6e.branch7x7dbl_3.bn.running_var",
                          misshaped="Mixed_7a.branch3x3_2.conv.weight")


def test_export_writes_pytorch_fids_bare_format(converted, mirror, tmp_path):
  out = tmp_path / "exported.pth"
  conversion.export_state_dict(store.load_tree(converted), out, "inception")
  reloaded = torch.load(out, map_location="cpu", weights_only=True)
  assert "state_dict" not in reloaded
  for key, value in mirror.state_dict().items():
    if not key.endswith("num_batches_tracked"):
      assert torch.equal(reloaded[key], value), key


# ----------------------------------------------------------------------------- FID formula


def _piq_fid_numpy(x: np.ndarray, y: np.ndarray) -> float:
  """piq 0.8's FID().compute_metric(x, y) transcribed to float64 numpy, loop and all."""

  def stats(f):
    m = f.T - f.T.mean(axis=1, keepdims=True)
    return f.mean(axis=0), (m @ m.T) / (f.shape[0] - 1)

  def sqrtm(a):
    norm = np.linalg.norm(a)
    y_, z = a / norm, np.eye(len(a))
    for _ in range(100):
      t = 0.5 * (3.0 * np.eye(len(a)) - z @ y_)
      y_, z = y_ @ t, t @ z
      s = y_ * np.sqrt(norm)
      if np.linalg.norm(a - s @ s) / norm <= 1e-5:
        break
    return s

  with np.errstate(all="ignore"):  # the singular case runs on NaNs, as piq does
    (mx, sx), (my, sy) = stats(np.float64(x)), stats(np.float64(y))
    covmean = sqrtm(sx @ sy)
    if not np.isfinite(covmean).all():
      offset = np.eye(len(sx)) * 1e-6
      covmean = sqrtm((sx + offset) @ (sy + offset))
  d = mx - my
  return float(d @ d + np.trace(sx) + np.trace(sy) - 2 * np.trace(covmean))


def _exact_fid(x: np.ndarray, y: np.ndarray) -> float:
  """pytorch-fid's formula: exact matrix square root (scipy), real part."""
  mx, my = x.mean(0), y.mean(0)
  sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
  covmean = scipy.linalg.sqrtm(sx @ sy).real
  return float((mx - my) @ (mx - my) + np.trace(sx) + np.trace(sy) - 2 * np.trace(covmean))


def _features(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
  """Non-negative, correlated features (like post-ReLU pool features), float32."""
  rng = np.random.default_rng(seed)
  base = np.abs(np.random.default_rng(99).normal(size=(1, d)))
  mix = rng.normal(size=(d, d)) / np.sqrt(d)
  return np.abs(base + shift + 0.3 * rng.normal(size=(n, d)) @ mix).astype(np.float32)


@pytest.mark.parametrize("n,d", [(64, 256), (512, 32)])  # fewer / more samples than dims
def test_fid_matches_piq_and_exact_root(n, d):
  x, y = _features(n, d, 1, shift=0.05), _features(n, d, 2)
  got = metrics.fid(x, y)
  want = _piq_fid_numpy(x, y)
  exact = _exact_fid(np.float64(x), np.float64(y))
  print(f"fid n={n} d={d}: {got:.9g}; vs numpy piq {abs(got - want):.3g}, "
        f"vs exact root {abs(got - exact):.3g}")
  assert got > 1e-3
  assert abs(got - want) <= 1e-9 * max(1.0, abs(want))  # same float64 algorithm
  # Newton-Schulz stops at 1e-5 relative error of A = S S.
  trace_scale = float(np.trace(np.cov(np.float64(x), rowvar=False)))
  assert abs(got - exact) <= 1e-5 * trace_scale


def test_fid_of_identical_sets_is_about_zero():
  x = _features(64, 256, 3)
  trace_scale = float(np.trace(np.cov(np.float64(x), rowvar=False)))
  value = metrics.fid(x, x)
  print(f"fid of identical sets {value:.3g} (trace of the covariance {trace_scale:.3g})")
  assert abs(value) <= 1e-5 * trace_scale
  assert value == pytest.approx(_piq_fid_numpy(x, x), abs=1e-9 * trace_scale)


def test_fid_singular_product_takes_piqs_retry():
  # Constant features: a zero covariance product, whose Newton-Schulz root is NaN; piq then
  # adds 1e-6 to both diagonals: fid = |mu_x - mu_y|^2 - 2 * D * 1e-6.
  x = np.full((4, 8), 0.5, np.float32)
  y = np.full((3, 8), 0.25, np.float32)
  value = metrics.fid(x, y)
  assert value == pytest.approx(8 * 0.25 ** 2 - 2 * 8 * 1e-6, abs=1e-12)
  assert value == pytest.approx(_piq_fid_numpy(x, y), abs=1e-12)


def test_fid_rejects_what_piq_cannot_compute():
  with pytest.raises(ValueError, match="at least 2"):
    metrics.fid(np.ones((1, 4)), np.ones((3, 4)))
  with pytest.raises(ValueError, match=r"\[N, D\]"):
    metrics.fid(np.ones((3, 4)), np.ones((3, 5)))


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
  root = tmp_path_factory.mktemp("fid_layout")
  roots = train_fixtures.build_layout(root, {"s/a": 30, "t/c": 30})
  roots["train"] = train_fixtures.write_list(root / "train.txt", ["s/a"])
  roots["test"] = train_fixtures.write_list(root / "test.txt", ["t/c"])
  # Distinct test faces: two near-identical ground truths give a zero covariance, whose
  # Newton-Schulz root fails and takes piq's slow retry (minutes at 2048-d on this CPU).
  rng = np.random.default_rng(0)
  for face in sorted((root / "faces" / "t" / "c").glob("*.png")):
    cv2.imwrite(str(face), rng.integers(0, 256, (128, 128, 3), dtype=np.uint8))
  return roots


@pytest.fixture
def fast_compile():
  """Fewer XLA passes (as tests/test_train.py): the renderer steps compile much faster."""
  old = jax.config.values["jax_disable_most_optimizations"]
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", old)


def _renderer_cfg(layout, fid_dir: str):
  cfg = ren_config.get_config("smoke")
  cfg.data.face_root, cfg.data.sketch_root = layout["faces"], layout["sketches"]
  cfg.data.audio_root = layout["audio"]
  cfg.data.train_list, cfg.data.test_list = layout["train"], layout["test"]
  cfg.batch_size, cfg.eval_batch_size = 1, 2  # FID needs 2 images per eval batch
  cfg.num_sample_images = 1
  cfg.seed = 1  # seed 0's first eval batch draws the same frame twice (1 in 26)
  cfg.fid_inception_from = fid_dir
  return cfg


def test_renderer_evaluation_reports_fid(layout, converted, fast_compile, monkeypatch):
  """The training loop's evaluation (no train step: it would only add compile time)."""
  start = time.perf_counter()
  cfg = _renderer_cfg(layout, converted)
  mesh = parallel.global_mesh(jax.devices()[:1])
  stage = stage_lib.stage_class(cfg.stage)(cfg, mesh)
  _, test_sampler = stage.make_samplers(cfg)
  loader = pipeline.make_loader(test_sampler, num_steps=1, global_batch=2,
                                seed=cfg.seed + train_lib.EVAL_SEED_OFFSET)
  batch = next(iter(loader))
  # Two different ground truths: identical ones would make the FID degenerate and slow.
  assert not np.array_equal(batch["face"][0], batch["face"][1])
  calls = []
  real_fid = metrics.fid

  def recording_fid(x, y):
    calls.append((np.asarray(x), np.asarray(y), real_fid(x, y)))
    return calls[-1][2]

  monkeypatch.setattr(metrics, "fid", recording_fid)
  result, _ = train_lib.evaluate(stage, parallel.replicate(stage.init_state(), mesh),
                                 [(None, parallel.shard_batch(batch, mesh))], want_grid=False)
  print(f"renderer evaluation with FID: {time.perf_counter() - start:.1f} s, "
        f"eval/fid {result['eval/fid']:.4g}")
  assert np.isfinite(result["eval/fid"]) and result["eval/fid"] > 0.0
  assert {"eval/psnr", "eval/ssim", "eval/gen_loss"} <= set(result)
  # The host got [generated, gt] features of the whole batch, gt = Inception(face / 255).
  (generated, gt, value), = calls
  assert generated.shape == gt.shape == (2, FEATURE_DIM)
  want_gt = InceptionV3().apply(store.load_tree(converted), batch["face"] / 255.0)
  np.testing.assert_allclose(gt, want_gt, rtol=0, atol=1e-4)
  assert not np.allclose(generated, gt, atol=1e-3)
  assert result["eval/fid"] == pytest.approx(value, rel=1e-6)


def _make_stage(cfg) -> stage_lib.Stage:
  return stage_lib.stage_class(cfg.stage)(cfg, parallel.global_mesh(jax.devices()[:1]))


def test_fid_weights_errors_name_the_path(layout, tmp_path):
  missing = tmp_path / "no_such_dir"
  with pytest.raises(FileNotFoundError, match="no_such_dir"):
    _make_stage(_renderer_cfg(layout, str(missing)))
  other = tmp_path / "renderer_ckpt"
  other.mkdir()
  (other / "provenance.json").write_text(json.dumps({"model": "renderer"}))
  with pytest.raises(ValueError, match="renderer_ckpt.*'renderer'"):
    _make_stage(_renderer_cfg(layout, str(other)))
