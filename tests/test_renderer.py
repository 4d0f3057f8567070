"""Renderer: parity with the PyTorch mirror of the release, shared-modulation exactness,
ablation variants, training-mode BatchNorm, bfloat16 error."""

from __future__ import annotations

import copy
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ip_lap_jax import conversion
from ip_lap_jax.models import registry
from ip_lap_jax.models.renderer import DenseFlowNetwork, Renderer
from torch_mirror.common import randomize_batchnorm_stats, save_official_checkpoint
from torch_mirror.renderer import RendererTorch

TOL = 1e-4
# The renderer as inference builds it on this backend (Winograd 'mixed' on the CPU).
PRODUCT = registry.build(registry.official_spec("renderer"))
# bfloat16 compute (8-bit mantissa) through ~40 conv layers, measured on smooth inputs with
# the fixture's exaggerated flow (tens of pixels): generated max abs error ~1.2e-2; the warped
# reference ~4e-3 on average but up to ~0.3 at the few pixels (~0.5%) whose samples cross the
# zero-padded border or a steep edge, where a sub-pixel flow error moves a whole step.
BF16_TOL_GENERATED = 3e-2
BF16_TOL_WARPED_MEAN = 1.5e-2
BF16_TOL_WARPED_MAX = 0.5


def _inputs(b: int, n: int, seed: int = 0) -> tuple[np.ndarray, ...]:
  rng = np.random.default_rng(seed)
  face = rng.random((b, 128, 128, 3), np.float32)
  sketches = rng.random((b, 5, 128, 128, 3), np.float32)
  ref_images = rng.random((b, n, 128, 128, 3), np.float32)
  ref_sketches = rng.random((b, n, 128, 128, 3), np.float32)
  mels = rng.uniform(-4, 4, (b, 80, 16, 1)).astype(np.float32)
  return face, sketches, ref_images, ref_sketches, mels


def _to_torch(x: np.ndarray) -> torch.Tensor:
  """NHWC-last numpy -> channels-first torch (any leading axes)."""
  return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, -3)))


def _to_numpy(x: torch.Tensor) -> np.ndarray:
  return np.moveaxis(x.detach().numpy(), -3, -1)


def _max_err(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _template(model: Renderer) -> dict:
  args = tuple(jnp.asarray(a) for a in _inputs(1, 1))
  return jax.eval_shape(lambda k: model.init(k, *args, train=False), jax.random.key(0))


@pytest.fixture(scope="module")
def mirror_and_variables(tmp_path_factory) -> tuple[RendererTorch, dict]:
  """The mirror with random weights and BN stats, saved officially, converted back."""
  torch.manual_seed(0)
  mirror = RendererTorch()
  randomize_batchnorm_stats(mirror, seed=1)
  with torch.no_grad():
    # Default init predicts sub-pixel flow; larger flow exercises the bilinear taps and
    # the zero padding of grid_sample (samples leave the image).
    mirror.flow_module.conv_4.weight.mul_(30.0)
    mirror.flow_module.conv_4.bias.normal_(0.0, 2.0)
  mirror.eval()
  path = pathlib.Path(tmp_path_factory.mktemp("renderer")) / "renderer_checkpoint.pth"
  save_official_checkpoint(mirror, path, data_parallel_prefix=True)
  state_dict = conversion.read_torch_checkpoint(path)
  items = conversion.split_state_dict(state_dict, "renderer")
  assert set(items) == {"variables", "vgg19"}
  variables = conversion.state_dict_to_variables(items["variables"], _template(Renderer()))
  return mirror, jax.tree_util.tree_map(jnp.asarray, variables)


def _run_jax(model: Renderer, variables: dict, inputs) -> tuple[np.ndarray, np.ndarray]:
  apply = jax.jit(lambda v, *a: model.apply(v, *a, train=False))
  return tuple(np.asarray(o) for o in apply(variables, *inputs))


def _run_torch(mirror: RendererTorch, inputs) -> tuple[np.ndarray, np.ndarray]:
  face, sketches, ref_images, ref_sketches, mels = inputs
  with torch.no_grad():
    generated, warped = mirror(_to_torch(face)[:, None], _to_torch(sketches), _to_torch(ref_images),
                               _to_torch(ref_sketches), _to_torch(mels)[:, None])
  return _to_numpy(generated), _to_numpy(warped)


@pytest.mark.parametrize("b,n", [(2, 1), (2, 3), (1, 25)])
def test_parity_with_release_mirror(mirror_and_variables, b, n):
  mirror, variables = mirror_and_variables
  inputs = _inputs(b, n, seed=10 * b + n)
  gen_j, warp_j = _run_jax(PRODUCT, variables, inputs)
  gen_t, warp_t = _run_torch(mirror, inputs)
  assert gen_j.shape == gen_t.shape == (b, 128, 128, 3)
  assert warp_j.shape == warp_t.shape == (b, 128, 128, 3)
  # The outputs must carry signal, or the comparison would be vacuous.
  assert gen_t.std() > 1e-3 and warp_t.std() > 1e-2
  assert _max_err(gen_j, gen_t) <= TOL
  # The warped reference samples the image at the fixture's exaggerated flow (tens of
  # pixels), so a flow rounding error moves it by the image's local slope: each float32
  # side is ~8e-5 from the exact result at b=2, n=1 (measured 2026-12-03: JAX 7.98e-5,
  # PyTorch 8.15e-5), and their difference, up to the sum, reached 1.03e-4 on one VM. So
  # the warp is held to the exact result, the float64 mirror: within TOL, and no further
  # from it than the release's own float32 rounding (with a margin). At b=1, n=25 the
  # float64 mirror takes minutes on 2 cores: there the float32 mirror stays the reference.
  if b * n > 8:
    assert _max_err(warp_j, warp_t) <= TOL
    return
  _, warp_64 = _run_torch(copy.deepcopy(mirror).double(),
                          tuple(x.astype(np.float64) for x in inputs))
  err_jax, err_torch = _max_err(warp_j, warp_64), _max_err(warp_t, warp_64)
  assert err_jax <= TOL
  assert err_jax <= max(1.5 * err_torch, 1e-5), (err_jax, err_torch)


def test_flow_is_large_enough_to_leave_the_image(mirror_and_variables):
  """Guards the parity test's coverage: some deformation samples fall outside [-1, 1]."""
  mirror, _ = mirror_and_variables
  face, sketches, ref_images, ref_sketches, _ = _inputs(1, 1)
  flow_module = mirror.flow_module
  with torch.no_grad():
    x = torch.cat([_to_torch(ref_images)[:, 0], _to_torch(ref_sketches)[:, 0]], dim=1)
    h1 = flow_module.conv1_relu(flow_module.conv1_bn(flow_module.conv1(x)))
    h2 = flow_module.conv2_relu(flow_module.conv2_bn(flow_module.conv2(h1)))
    driving = _to_torch(sketches).flatten(1, 2)
    d64 = torch.nn.functional.interpolate(driving, size=(64, 64), mode="nearest")
    feat = flow_module.spade_layer_2(flow_module.spade_layer_1(h2, d64), d64)
    feat = flow_module.spade_layer_4(flow_module.pixel_shuffle_1(feat), driving)
    flow = flow_module.conv_4(feat)
  assert float(flow.abs().max()) > 3.0


def test_shared_modulation_equals_per_reference(mirror_and_variables):
  """Computing the SPADE modulations once per frame equals the release's per-reference loop."""
  _, variables = mirror_and_variables
  _, sketches, ref_images, ref_sketches, _ = _inputs(2, 2, seed=5)
  driving = jnp.moveaxis(jnp.asarray(sketches), 1, 3).reshape(2, 128, 128, 15)
  flow_vars = {c: variables[c]["flow_module"] for c in ("params", "batch_stats")}
  outs = {}
  for shared in (True, False):
    module = DenseFlowNetwork(shared_modulation=shared)
    apply = jax.jit(lambda v, *a, m=module: m.apply(v, *a, train=False))
    outs[shared] = [np.asarray(o) for o in apply(flow_vars, ref_images, ref_sketches, driving)]
  shapes = [o.shape for o in outs[True]]
  assert shapes == [(2, 128, 128, 32), (2, 64, 64, 256), (2, 128, 128, 3)]
  for shared_out, loop_out in zip(outs[True], outs[False]):
    assert np.abs(shared_out).max() > 1e-2
    assert _max_err(shared_out, loop_out) <= 1e-5


def _param_keys(variables: dict) -> set[str]:
  flat = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
  return {"/".join(str(k.key) for k in path) for path, _ in flat}


def test_ablation_no_warping(mirror_and_variables):
  _, variables = mirror_and_variables
  model = Renderer(use_warping=False)
  template_keys = _param_keys(_template(model))
  full_keys = _param_keys(variables)
  assert template_keys == {k for k in full_keys if not k.startswith("flow_module/conv_4/")}
  params = {"params": dict(variables["params"]), "batch_stats": variables["batch_stats"]}
  params["params"]["flow_module"] = {
      k: v for k, v in variables["params"]["flow_module"].items() if k != "conv_4"}
  inputs = _inputs(1, 1, seed=3)
  generated, warped = _run_jax(model, params, inputs)
  assert generated.shape == (1, 128, 128, 3) and np.all(np.isfinite(generated))
  # One reference, no flow: the fusion w * ref / (w + 1e-5) returns the reference itself.
  assert _max_err(warped, inputs[2][:, 0]) <= 1e-3


def test_ablation_no_audio(mirror_and_variables):
  _, variables = mirror_and_variables
  model = Renderer(use_audio=False)
  template = _template(model)
  keys = _param_keys(template)
  dropped = {k for k in _param_keys(variables)
             if k.startswith(("translation/audio_encoder_", "translation/adain_"))}
  assert dropped and not keys & dropped
  assert keys == _param_keys(variables) - dropped
  assert all(not k.startswith("audio_encoder") for k in template["batch_stats"]["translation"])
  params = {c: dict(variables[c]) for c in ("params", "batch_stats")}
  for c in params:
    params[c]["translation"] = {k: v for k, v in variables[c]["translation"].items()
                                if not k.startswith(("audio_encoder_", "adain_"))}
  face, sketches, ref_images, ref_sketches, _ = _inputs(1, 2, seed=4)
  apply = jax.jit(lambda v, *a: model.apply(v, *a, None, train=False))
  generated, warped = apply(params, face, sketches, ref_images, ref_sketches)
  assert generated.shape == warped.shape == (1, 128, 128, 3)
  assert np.all(np.isfinite(np.asarray(generated)))


def test_training_mode_batchnorm_matches_release_loop(mirror_and_variables):
  """Train mode: each reference has its own BN batch statistics, and the running stats are
  updated once per reference, as the release's Python loop does."""
  mirror, variables = mirror_and_variables
  inputs = _inputs(2, 2, seed=7)
  model = Renderer()
  apply = jax.jit(lambda v, *a: model.apply(v, *a, train=True, mutable=["batch_stats"]))
  (gen_j, warp_j), updated = apply(variables, *inputs)
  mirror_train = RendererTorch()
  mirror_train.load_state_dict(mirror.state_dict())
  mirror_train.train()
  face, sketches, ref_images, ref_sketches, mels = inputs
  with torch.no_grad():
    gen_t, warp_t = mirror_train(_to_torch(face)[:, None], _to_torch(sketches),
                                 _to_torch(ref_images), _to_torch(ref_sketches),
                                 _to_torch(mels)[:, None])
  assert _max_err(gen_j, _to_numpy(gen_t)) <= TOL
  assert _max_err(warp_j, _to_numpy(warp_t)) <= TOL
  for module in ("flow_module", "translation"):
    for bn in ("conv1_bn", "conv2_bn"):
      torch_bn = getattr(getattr(mirror_train, module), bn)
      new = updated["batch_stats"][module][bn]
      old = variables["batch_stats"][module][bn]
      assert _max_err(new["mean"], old["mean"]) > 1e-4  # the update happened
      assert _max_err(new["mean"], torch_bn.running_mean.numpy()) <= TOL
      assert _max_err(new["var"], torch_bn.running_var.numpy()) <= TOL


def _smooth(x: np.ndarray) -> np.ndarray:
  """Low-frequency images (a 8x8 grid bilinearly upsampled), closer to faces than noise."""
  flat = jnp.asarray(x).reshape((-1,) + x.shape[-3:])
  coarse = flat[:, ::16, ::16]
  fine = jax.image.resize(coarse, (flat.shape[0], 128, 128, flat.shape[-1]), "bilinear")
  return np.asarray(fine).reshape(x.shape)


def test_bfloat16_error(mirror_and_variables):
  _, variables = mirror_and_variables
  face, sketches, ref_images, ref_sketches, mels = _inputs(1, 2, seed=9)
  inputs = (_smooth(face), sketches, _smooth(ref_images), ref_sketches, mels)
  gen32, warp32 = _run_jax(PRODUCT, variables, inputs)
  gen16, warp16 = _run_jax(registry.build(registry.official_spec("renderer"), dtype="bfloat16"),
                           variables, inputs)
  assert gen16.dtype == warp16.dtype == np.float32  # outputs are returned in float32
  err_gen = _max_err(gen16, gen32)
  err_warp_max = _max_err(warp16, warp32)
  err_warp_mean = float(np.mean(np.abs(warp16 - warp32)))
  print(f"bfloat16 vs float32: generated max {err_gen:.3g}; warped_ref max {err_warp_max:.3g}, "
        f"mean {err_warp_mean:.3g}")
  assert 0 < err_gen <= BF16_TOL_GENERATED
  assert 0 < err_warp_mean <= BF16_TOL_WARPED_MEAN
  assert err_warp_max <= BF16_TOL_WARPED_MAX
