"""The renderer (+ discriminator) as a training stage: samplers, state, steps, evaluation
with sample grids and optional FID.

The per-device steps are in ip_lap_jax.training.renderer_step. The loss phase (warp-only
until epoch > `loss.gan_start_epoch`, then the full GAN loss) picks one of two compiled
train steps.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np

from ip_lap_jax import parallel
from ip_lap_jax.data.renderer_data import RendererSampler
from ip_lap_jax.models import registry, store
from ip_lap_jax.training import metrics as metrics_lib
from ip_lap_jax.training import renderer_step
from ip_lap_jax.training import stage as stage_lib
from ip_lap_jax.training import state as state_lib

log = logging.getLogger(__name__)


def load_fid_inception(directory: str) -> dict[str, Any]:
  """Converted FID Inception variables from `config.fid_inception_from`, checked."""
  how = ("convert pytorch-fid's pt_inception-2015-12-05-6726825d.pth with "
         "`python -m ip_lap_jax.convert --model inception --src ... --out DIR`")
  path = pathlib.Path(directory)
  if not path.is_dir():
    raise FileNotFoundError(f"config.fid_inception_from={directory}: no such directory ({how})")
  model = store.read_provenance(path).get("model")
  if model not in (None, "inception"):
    raise ValueError(f"config.fid_inception_from={directory} holds a converted {model!r}, "
                     f"not the FID Inception ({how})")
  return stage_lib.load_converted(directory, "variables",
                                  registry.variables_template(registry.official_spec("inception")),
                                  "FID Inception")


def sample_grid(images: dict[str, jax.Array], rows: int) -> np.ndarray:
  """Rows: centre sketch | references | warped reference | generated | ground truth, from
  the mesh's first device's share of the eval batch."""
  im = {k: parallel.first_device_share(v) for k, v in images.items()}
  refs = [im["refs"][:, n] for n in range(im["refs"].shape[1])]
  return metrics_lib.sample_grid([im["sketch"], *refs, im["warped"], im["generated"], im["gt"]],
                                 rows)


class RendererStage(stage_lib.Stage):
  """Renderer and discriminator updated from one forward pass; eval: perceptual losses,
  PSNR, SSIM, sample grid and (with `fid_inception_from`) FID."""

  progress_metric = "g_loss"

  def __init__(self, cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    super().__init__(cfg, mesh)
    self._inception = None
    if cfg.fid_inception_from:  # first: a bad path fails before minutes of compiling
      if cfg.eval_batch_size < 2:
        raise ValueError("FID needs eval_batch_size >= 2 (a covariance per eval batch)")
      self._inception = parallel.replicate(load_fid_inception(cfg.fid_inception_from), mesh)
    total = cfg.num_train_steps
    self.tx, schedule = state_lib.make_optimizer(cfg.optimizer, total)
    self.disc_tx, _ = state_lib.make_optimizer(cfg.disc_optimizer, total)
    init_rng, self._state_rng = jax.random.split(jax.random.PRNGKey(cfg.seed))
    self._gen_vars, self._disc_vars, vgg_vars = renderer_step.init_variables(cfg, init_rng)
    if cfg.init_from:
      self._gen_vars = stage_lib.load_converted(cfg.init_from, "variables", self._gen_vars,
                                                "renderer")
    vgg_dir = cfg.vgg_from or cfg.init_from
    if vgg_dir:
      vgg_vars = stage_lib.load_converted(vgg_dir, "vgg19", vgg_vars, "VGG19")
    else:
      log.warning("no VGG19 weights (config.vgg_from): the perceptual loss uses a random VGG")
    self._vgg = parallel.replicate(vgg_vars, mesh)
    self._train, self._eval = renderer_step.make_steps(cfg, self.tx, self.disc_tx, schedule,
                                                       mesh)

  @classmethod
  def make_samplers(cls, cfg: ml_collections.ConfigDict
                    ) -> tuple[RendererSampler, RendererSampler]:
    d = cfg.data
    make = lambda lst, n: RendererSampler.from_layout(d.face_root, d.sketch_root, d.audio_root,
                                                      lst, ref_N=n, image_size=d.image_size,
                                                      min_len=d.min_len)
    return make(d.train_list, d.ref_N), make(d.test_list or d.train_list, cfg.eval_ref_N)

  def init_state(self) -> state_lib.State:
    return renderer_step.init_state(self._gen_vars, self._disc_vars, self.tx, self.disc_tx,
                                    self._state_rng)

  def train_step(self, state: state_lib.State, batch: dict[str, jax.Array], *, step: int,
                 epoch: int) -> tuple[state_lib.State, dict[str, jax.Array]]:
    del step
    gan_phase = epoch > self.cfg.loss.gan_start_epoch
    return self._train[gan_phase](state, batch, self._vgg)

  def eval_step(self, state: state_lib.State, batch: dict[str, jax.Array]) -> Any:
    return self._eval(state, batch, self._vgg, self._inception)

  def summarise(self, outputs: Any, *, want_grid: bool
                ) -> tuple[dict[str, float], np.ndarray | None]:
    metrics, images, features = outputs
    result = {k: float(v) for k, v in parallel.fetch(metrics).items()}
    if features:
      # One FID per eval batch (the global batch), averaged over the eval batches by the
      # loop, as the release's evaluate() averages compute_generation_quality's.
      features = parallel.fetch(features)
      result["fid"] = float(metrics_lib.fid(features["generated"], features["gt"]))
    grid = sample_grid(images, self.cfg.num_sample_images) if want_grid else None
    return result, grid
