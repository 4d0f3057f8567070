"""Renderer + discriminator: models from config, state init, per-device train/eval steps.

Batch (per device, inside the data-parallel step): face [b, 128, 128, 3] uint8 (target, centre frame),
sketches [b, 5, 128, 128, 3] uint8, ref_images / ref_sketches [b, N, 128, 128, 3] uint8,
mels [b, 80, 16, 1] float32. Images are divided by 255 on the device.

One step updates both networks from the same forward pass, as the release does:
G minimises 2.5*warp (warp-only phase, epoch <= gan_start_epoch) or 2.5*warp + 4*gen +
0.25*GAN + FM; D minimises 0.5*(LSGAN(D(fake), 0) + LSGAN(D(real), 1)) with the
generated image detached. Both gradients come from one backward pass of
J = G loss + D loss: dJ/dG = dG_loss/dG (the D loss sees a detached image), and
dJ/dD = dD_loss/dD + dG_loss/dD, which is what the release's discriminator step uses
because it never zeroes D's gradients after the generator's backward pass
(`loss.disc_grad_includes_gen_loss`; False stops that term).
The phase is a static argument (`gan_phase`): one compiled step per phase; the stage
picks it by epoch.

Evaluation with FID (config.fid_inception_from): the eval step also runs the FID
Inception on the ground-truth and generated images and gathers the features of the whole
global batch (all processes) onto every device; the host computes the FID of each eval batch from them
(`metrics.fid`, float64), as the release calls piq per eval batch.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ip_lap_jax import parallel
from ip_lap_jax.training import losses
from ip_lap_jax.models import registry
from ip_lap_jax.models.discriminator import MultiscaleDiscriminator
from ip_lap_jax.models.renderer import Renderer
from ip_lap_jax.training import metrics as metrics_lib
from ip_lap_jax.training import state as state_lib

AXIS = state_lib.AXIS
IMAGE_KEYS = ("face", "sketches", "ref_images", "ref_sketches")


def make_models(cfg: ml_collections.ConfigDict) -> tuple[Renderer, MultiscaleDiscriminator]:
  return (registry.build(registry.spec_from_config(cfg, "renderer")),
          registry.build(registry.spec_from_config(cfg, "discriminator")))


def dummy_batch(cfg: ml_collections.ConfigDict, batch: int = 1, refs: int | None = None
                ) -> dict[str, np.ndarray]:
  s = cfg.data.image_size
  n = cfg.data.ref_N if refs is None else refs
  return {"face": np.zeros((batch, s, s, 3), np.uint8),
          "sketches": np.zeros((batch, 5, s, s, 3), np.uint8),
          "ref_images": np.zeros((batch, n, s, s, 3), np.uint8),
          "ref_sketches": np.zeros((batch, n, s, s, 3), np.uint8),
          "mels": np.zeros((batch, 80, 16, 1), np.float32)}


def _inputs(batch: dict[str, jax.Array]) -> tuple[jax.Array, ...]:
  face, sketches, ref_images, ref_sketches = (batch[k].astype(jnp.float32) / 255.0
                                              for k in IMAGE_KEYS)
  return face, sketches, ref_images, ref_sketches, batch["mels"]


def init_variables(cfg: ml_collections.ConfigDict, rng: jax.Array
                   ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
  """(renderer variables, discriminator variables, VGG19 variables), randomly initialised."""
  r1, r2, r3 = jax.random.split(rng, 3)
  return tuple(registry.init_variables(registry.spec_from_config(cfg, name), r)
               for name, r in (("renderer", r1), ("discriminator", r2), ("vgg19", r3)))


def init_state(gen_vars: dict[str, Any], disc_vars: dict[str, Any],
               tx: optax.GradientTransformation, disc_tx: optax.GradientTransformation,
               rng: jax.Array) -> state_lib.State:
  return {"step": jnp.zeros((), jnp.int32), "params": gen_vars["params"],
          "batch_stats": gen_vars.get("batch_stats", {}), "opt_state": tx.init(gen_vars["params"]),
          "disc_params": disc_vars["params"], "disc_opt_state": disc_tx.init(disc_vars["params"]),
          "rng": rng}


def _perceptual(vgg_vars, cfg, warped, generated, target):
  """(warp loss, gen loss): perceptual losses of the warped (no style) and the generated
  (with style) face against the target, sharing the target's VGG features."""
  return tuple(losses.perceptual_losses(
      vgg_vars, [warped, generated], target, use_style=[False, True],
      style_weight=cfg.loss.style_weight, num_scales=cfg.loss.num_scales))


def train_step(state: state_lib.State, batch: dict[str, jax.Array], vgg_vars: dict[str, Any], *,
               cfg: ml_collections.ConfigDict, tx: optax.GradientTransformation,
               disc_tx: optax.GradientTransformation, schedule: optax.Schedule,
               gan_phase: bool) -> tuple[state_lib.State, dict[str, jax.Array]]:
  """One generator and one discriminator update; run with `parallel.data_parallel`."""
  renderer, disc = make_models(cfg)
  face, sketches, ref_images, ref_sketches, mels = _inputs(batch)
  quirk = cfg.loss.disc_grad_includes_gen_loss

  def objective(params, disc_params):
    with state_lib.batchnorm_mode(cfg.batchnorm):
      (generated, warped), updates = renderer.apply(
          {"params": params, "batch_stats": state["batch_stats"]}, face, sketches,
          ref_images, ref_sketches, mels if cfg.model.use_audio else None, train=True,
          mutable=["batch_stats"])
    warp_loss, gen_loss = _perceptual(vgg_vars, cfg, warped, generated, face)
    d_apply = lambda x, p=disc_params: disc.apply({"params": p}, x)
    real_out = d_apply(face)
    d_loss = losses.discriminator_loss(d_apply(jax.lax.stop_gradient(generated)), real_out)
    if gan_phase:
      g_disc_params = disc_params if quirk else jax.lax.stop_gradient(disc_params)
      fake_out = disc.apply({"params": g_disc_params}, generated)
      gan_loss = losses.lsgan_loss(fake_out, True)
      fm_loss = losses.feature_matching_loss(fake_out, real_out)
    else:
      # Logged only, as the release's 0 * perceptual_gen_loss.
      gen_loss = jax.lax.stop_gradient(gen_loss)
      gan_loss = fm_loss = jnp.zeros((), jnp.float32)
    g_loss = losses.renderer_phase_loss(warp_loss, gen_loss, gan_loss, fm_loss, gan_phase)
    aux = {"g_loss": g_loss, "d_loss": d_loss, "warp_loss": warp_loss, "gen_loss": gen_loss,
           "gan_loss": gan_loss, "fm_loss": fm_loss}
    return g_loss + d_loss, (aux, updates["batch_stats"])

  (_, (aux, batch_stats)), (grads, disc_grads) = jax.value_and_grad(
      objective, argnums=(0, 1), has_aux=True)(state["params"], state["disc_params"])
  grads, disc_grads = jax.lax.pmean((grads, disc_grads), AXIS)
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  d_updates, disc_opt_state = disc_tx.update(disc_grads, state["disc_opt_state"],
                                             state["disc_params"])
  disc_params = optax.apply_updates(state["disc_params"], d_updates)
  metrics = jax.lax.pmean(aux, AXIS)
  metrics.update(grad_norm=optax.tree.norm(grads), disc_grad_norm=optax.tree.norm(disc_grads),
                 param_norm=optax.tree.norm(params), learning_rate=schedule(state["step"]))
  new_state = dict(state, step=state["step"] + 1, params=params, opt_state=opt_state,
                   disc_params=disc_params, disc_opt_state=disc_opt_state,
                   batch_stats=state_lib.reduce_batch_stats(batch_stats, cfg.batchnorm))
  return new_state, metrics


def eval_step(state: state_lib.State, batch: dict[str, jax.Array], vgg_vars: dict[str, Any],
              inception_vars: dict[str, Any] | None = None, *, cfg: ml_collections.ConfigDict
              ) -> tuple[dict[str, jax.Array], dict[str, jax.Array], dict[str, jax.Array]]:
  """(metrics averaged over devices, this device's images for sample grids, FID features).

  FID features: with `inception_vars` (converted FID Inception), {'generated', 'gt'} of
  [global batch, 2048] each, the same on every device; otherwise {} and no Inception runs.
  """
  renderer, _ = make_models(cfg)
  face, sketches, ref_images, ref_sketches, mels = _inputs(batch)
  generated, warped = renderer.apply(
      {"params": state["params"], "batch_stats": state["batch_stats"]}, face, sketches,
      ref_images, ref_sketches, mels if cfg.model.use_audio else None, train=False)
  warp_loss, gen_loss = _perceptual(vgg_vars, cfg, warped, generated, face)
  metrics = {"warp_loss": warp_loss, "gen_loss": gen_loss,
             "psnr": jnp.mean(metrics_lib.psnr(generated, face)),
             "ssim": jnp.mean(metrics_lib.ssim(generated, face))}
  images = {"sketch": sketches[:, 2], "refs": ref_images, "warped": warped,
            "generated": generated, "gt": face}
  features = {}
  if inception_vars is not None:
    # One Inception pass over [gt; generated], as the release: images in [0, 1] and in
    # the data's BGR order, which the release also hands to piq; float32 whatever the
    # renderer's compute dtype (the release's FID network runs in float32).
    feats = registry.build(registry.official_spec("inception")).apply(inception_vars, jnp.concatenate([face, generated]).astype(
        jnp.float32))
    feats = jax.lax.all_gather(feats.reshape(2, face.shape[0], -1), AXIS, axis=1, tiled=True)
    features = {"gt": feats[0], "generated": feats[1]}
  return jax.lax.pmean(metrics, AXIS), images, features


def make_steps(cfg: ml_collections.ConfigDict, tx: optax.GradientTransformation,
               disc_tx: optax.GradientTransformation, schedule: optax.Schedule,
               mesh: jax.sharding.Mesh
               ) -> tuple[dict[bool, Callable[..., Any]], Callable[..., Any]]:
  """(train steps {False: warp-only, True: full loss}, eval step) over `mesh`.

  train[phase](state, batch, VGG19 variables) -> (state, metrics), donating the state;
  eval(state, batch, VGG19 variables, FID Inception variables or None) ->
  (metrics, images sharded like the batch, FID features). Variables are replicated.
  """
  rep, shard = parallel.REPLICATED, parallel.SHARDED
  train = {phase: parallel.data_parallel(
      functools.partial(train_step, cfg=cfg, tx=tx, disc_tx=disc_tx, schedule=schedule,
                        gan_phase=phase),
      mesh, in_specs=(rep, shard, rep), out_specs=(rep, rep), donate_argnums=0)
      for phase in (False, True)}
  evaluate = parallel.data_parallel(functools.partial(eval_step, cfg=cfg), mesh,
                                    in_specs=(rep, shard, rep, rep),
                                    out_specs=(rep, shard, rep))
  return train, evaluate
