"""Train steps and loop: 8 devices == 1 device, smoke training, exact resume, renderer step."""

from __future__ import annotations

import contextlib
import pathlib
import shutil
from typing import Iterator

import jax
import numpy as np
import optax
import pytest

from ip_lap_jax import parallel
from ip_lap_jax.configs import landmark_generator as lmk_config
from ip_lap_jax.configs import renderer as ren_config
from ip_lap_jax.training import loop as train_lib
from ip_lap_jax.training import landmark_step
from ip_lap_jax.training import stage as stage_lib
from ip_lap_jax.training import state as state_lib
from tests import train_fixtures

pytestmark = pytest.mark.usefixtures("fast_compiles")


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
  """Repeated runs of the same step (resume test) reuse compiled executables."""
  old = jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("xla_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  yield
  jax.config.update("jax_compilation_cache_dir", old)


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
  root = tmp_path_factory.mktemp("train_layout")
  return train_fixtures.train_test_layout(root)


@contextlib.contextmanager
def _xla_optimizations() -> Iterator[None]:
  """Programs compiled inside get XLA's full optimisation pipeline.

  For float64 programs whose run time, not compile time, dominates: without the
  optimisation passes XLA's CPU backend runs float64 convolutions and their gradients as
  naive loops: the float64 landmark step then runs ~30x slower, which costs far more
  than the passes' compile time.
  """
  old = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", False)
  try:
    yield
  finally:
    jax.config.update("jax_disable_most_optimizations", old)


def _tree_rel_err(a, b) -> float:
  """||a - b|| / ||a|| over a whole pytree."""
  diff = jax.tree.map(lambda x, y: np.asarray(x, np.float64) - np.asarray(y, np.float64), a, b)
  return float(optax.tree.norm(diff) / optax.tree.norm(
      jax.tree.map(lambda x: np.asarray(x, np.float64), a)))


def test_pmap_step_equals_single_device_step():
  """8 devices x 1 example == 1 device x 8 examples (sync BN, no dropout).

  Computed in float64 (parameters stay float32): in float32 the summation order of the
  BatchNorm statistics (8 partial means vs one) alone moves the early mel-encoder
  gradients by ~1e-3 relative (measured), which would hide a real discrepancy.
  SGD keeps the update linear in the gradient: Adam's first step is ~lr*sign(g), which
  turns rounding noise in gradients that are zero in exact arithmetic (conv biases
  before BatchNorm) into full-size differences. Every program here is compiled with the
  same (full) XLA optimisations, so the comparison is between like-compiled steps.
  """
  with jax.enable_x64(True), _xla_optimizations():
    cfg = lmk_config.get_config("smoke")
    cfg.model.dropout = 0.0
    cfg.model.nlayers = 1
    cfg.model.dtype = "float64"
    cfg.batchnorm = "sync"
    tx, schedule = optax.sgd(1.0), optax.constant_schedule(1.0)
    variables = landmark_step.init_variables(cfg, jax.random.PRNGKey(0))
    state = landmark_step.init_state(cfg, tx, variables, jax.random.PRNGKey(1))
    rng = np.random.default_rng(0)
    batch = {k: rng.standard_normal((8,) + v.shape[1:])
             for k, v in landmark_step.dummy_batch(cfg).items()}
    results = {}
    for n in (1, 8):
      mesh = parallel.global_mesh(jax.devices()[:n])
      p_train, _ = landmark_step.make_steps(cfg, tx, schedule, mesh)
      new_state, metrics = p_train(parallel.replicate(state, mesh),
                                   parallel.shard_batch(batch, mesh))
      results[n] = (parallel.fetch(new_state), parallel.fetch(metrics))
    (s1, m1), (s8, m8) = results[1], results[8]
    for k in ("loss", "l1", "velocity", "grad_norm"):
      np.testing.assert_allclose(m8[k], m1[k], rtol=1e-5)
    delta = lambda s: jax.tree.map(lambda a, b: np.asarray(a, np.float64) - b, s["params"],
                                   state["params"])
    update1, update8 = delta(s1), delta(s8)
    assert optax.tree.norm(update1) > 1e-3  # the step did something
    assert _tree_rel_err(update1, update8) < 1e-5
    assert _tree_rel_err(s1["batch_stats"], s8["batch_stats"]) < 1e-5
    # per_device BatchNorm differs from the global batch (what DataParallel computes).
    cfg.batchnorm = "per_device"
    mesh = parallel.global_mesh(jax.devices()[:8])
    p_train, _ = landmark_step.make_steps(cfg, tx, schedule, mesh)
    _, m_pd = p_train(parallel.replicate(state, mesh), parallel.shard_batch(batch, mesh))
    assert abs(float(parallel.fetch(m_pd)["loss"]) - float(m1["loss"])) > 1e-4


def _landmark_cfg(layout, steps: int):
  cfg = lmk_config.get_config("smoke")
  cfg.model.nlayers = 1
  cfg.data.landmark_root = layout["landmarks"]
  cfg.data.audio_root = layout["audio"]
  cfg.data.train_list, cfg.data.test_list = layout["train"], layout["test"]
  cfg.batch_size = cfg.eval_batch_size = 4
  cfg.num_train_steps = steps
  cfg.log_every_steps = 1
  cfg.eval_every_steps = 2
  cfg.checkpoint_every_steps = 2
  cfg.eval_num_batches = 1
  cfg.optimizer.learning_rate = 1e-3
  return cfg


def test_landmark_training_checkpoints_and_exact_resume(layout, tmp_path):
  devices = jax.devices()[:2]
  full = train_lib.train_and_evaluate(_landmark_cfg(layout, 4), tmp_path / "full", devices)
  losses = [m["loss"] for _, m in full["history"]]
  assert len(losses) == 4 and losses[-1] < losses[0]
  assert set(full["eval"]) >= {"eval/l1", "eval/velocity"}
  assert all(np.isfinite(v) for v in full["eval"].values())
  ckpts = sorted(int(p.name) for p in (tmp_path / "full" / "checkpoints").iterdir() if p.name.isdigit())
  assert ckpts == [2, 4]
  assert list((tmp_path / "full" / "tensorboard").iterdir())

  # "Stop" after step 2: a workdir holding only that checkpoint, then continue to 4.
  resumed_dir = tmp_path / "resumed" / "checkpoints"
  resumed_dir.mkdir(parents=True)
  shutil.copytree(tmp_path / "full" / "checkpoints" / "2", resumed_dir / "2")
  resumed = train_lib.train_and_evaluate(_landmark_cfg(layout, 4), tmp_path / "resumed", devices)
  assert [s for s, _ in resumed["history"]] == [3, 4]
  for (_, a), (_, b) in zip(full["history"][2:], resumed["history"]):
    assert a["loss"] == b["loss"]
  for name in ("params", "batch_stats", "opt_state", "step", "rng"):
    jax.tree.map(np.testing.assert_array_equal, full["state"][name], resumed["state"][name])


def test_renderer_training_both_phases(layout, tmp_path):
  cfg = ren_config.get_config("smoke")
  # The loop and its two loss phases are under test, not how the 3x3 convolutions compute
  # (speed only; Winograd's gradients: tests/test_renderer_gradients.py). CPU's 'auto'
  # (Winograd) makes each train step's program ~4x larger and its compile ~2x longer.
  cfg.model.conv_algorithm = "direct"
  cfg.data.face_root, cfg.data.sketch_root = layout["faces"], layout["sketches"]
  cfg.data.audio_root = layout["audio"]
  cfg.data.train_list, cfg.data.test_list = layout["train"], layout["test"]
  cfg.batch_size = cfg.eval_batch_size = 1
  cfg.num_train_steps = 2
  cfg.loss.steps_per_epoch = 1
  cfg.loss.gan_start_epoch = 0  # step 1: warp-only phase, step 2: full loss
  cfg.log_every_steps = 1
  cfg.eval_every_steps = cfg.checkpoint_every_steps = 2
  cfg.num_sample_images = 1
  out = train_lib.train_and_evaluate(cfg, tmp_path, jax.devices()[:1])
  (_, warp_phase), (_, full_phase) = out["history"]
  assert warp_phase["gan_loss"] == 0.0 and full_phase["gan_loss"] > 0.0
  assert warp_phase["g_loss"] == pytest.approx(2.5 * warp_phase["warp_loss"], rel=1e-6)
  assert full_phase["g_loss"] > 2.5 * full_phase["warp_loss"]
  assert warp_phase["disc_grad_norm"] > 0.0  # D trains in both phases, as the release
  assert set(out["eval"]) >= {"eval/psnr", "eval/ssim", "eval/warp_loss", "eval/gen_loss"}
  assert all(np.isfinite(v) for v in out["eval"].values())
  assert len(list((tmp_path / "samples").glob("*.png"))) == 1


def test_init_from_converted_official_weights(layout, tmp_path):
  """Fine-tuning starts from a release checkpoint converted by ip_lap_jax.convert."""
  import torch  # pylint: disable=import-outside-toplevel

  from ip_lap_jax import convert  # pylint: disable=import-outside-toplevel
  from ip_lap_jax.models import store
  from torch_mirror.common import (  # pylint: disable=import-outside-toplevel
      randomize_batchnorm_stats, save_official_checkpoint)
  from torch_mirror.landmark_generator import Landmark_generator  # pylint: disable=import-outside-toplevel

  torch.manual_seed(0)
  mirror = randomize_batchnorm_stats(Landmark_generator(), seed=1)
  save_official_checkpoint(mirror, tmp_path / "lmk.pth", data_parallel_prefix=True, training_extras=True)
  convert.convert_checkpoint(tmp_path / "lmk.pth", tmp_path / "converted")
  want = store.load_tree(tmp_path / "converted")

  cfg = _landmark_cfg(layout, 1)
  cfg.model.nlayers = 4  # the release's depth, as the checkpoint
  cfg.init_from = str(tmp_path / "converted")
  mesh = parallel.global_mesh(jax.devices()[:1])
  state = stage_lib.stage_class(cfg.stage)(cfg, mesh).init_state()
  for collection in ("params", "batch_stats"):
    flat_want = jax.tree_util.tree_leaves_with_path(want[collection])
    flat_got = dict(jax.tree_util.tree_leaves_with_path(state[collection]))
    assert len(flat_want) == len(flat_got) > 100
    for path, value in flat_want:
      np.testing.assert_array_equal(np.asarray(flat_got[path]), value)

  cfg.model.nlayers = 1  # a checkpoint that does not fit the model fails clearly
  with pytest.raises(Exception, match="transformer_encoder|layers_1|structure"):
    stage_lib.stage_class(cfg.stage)(cfg, mesh).init_state()


def test_sync_batchnorm_covers_the_renderers_grouped_batchnorm():
  """batchnorm='sync' on 8 devices == one device on the whole batch, for the flow module's
  GroupedBatchNorm too (outputs and running statistics)."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel

  from ip_lap_jax.models.renderer import GroupedBatchNorm  # pylint: disable=import-outside-toplevel

  class Block(nn.Module):
    @nn.compact
    def __call__(self, x, *, train):
      return GroupedBatchNorm(name="bn")(x, train=train)

  rng = np.random.default_rng(0)
  x = (2.0 + rng.standard_normal((2, 16, 4, 4, 3))).astype(np.float32)  # [G, B, H, W, C]
  block = Block()
  variables = block.init(jax.random.PRNGKey(0), x, train=False)

  def run(v, xs):
    with state_lib.batchnorm_mode("sync"):
      return block.apply(v, xs, train=True, mutable=["batch_stats"])

  want, want_stats = block.apply(variables, x, train=True, mutable=["batch_stats"])
  mesh = parallel.global_mesh(jax.devices()[:8])
  # The group axis first: the batch (axis 1) is what the mesh splits.
  spec = jax.sharding.PartitionSpec(None, parallel.AXIS)
  shards = jax.device_put(x, jax.sharding.NamedSharding(mesh, spec))

  def on_mesh(fn):
    return parallel.data_parallel(fn, mesh, in_specs=(parallel.REPLICATED, spec),
                                  out_specs=(spec, parallel.REPLICATED))

  got, got_stats = on_mesh(run)(parallel.replicate(variables, mesh), shards)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
  for name in ("mean", "var"):
    np.testing.assert_allclose(parallel.fetch(got_stats["batch_stats"]["bn"][name]),
                               want_stats["batch_stats"]["bn"][name], rtol=1e-5)
  # Without sync, each device normalises with its own shard's statistics: different.
  local, _ = on_mesh(lambda v, xs: block.apply(v, xs, train=True, mutable=["batch_stats"]))(
      parallel.replicate(variables, mesh), shards)
  assert not np.allclose(np.asarray(local), want, atol=1e-3)
