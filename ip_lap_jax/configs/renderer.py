"""Renderer (+ discriminator) training config (the release's `train_video_renderer.py` settings by default).

Variants (comma-separated `get_config` argument):
  smoke            64x64 images, batch 2, 10 steps (both loss phases) for this CPU;
                   a few minutes, mostly compiling.
  no_warp          the paper's ablation without the alignment (warping) module.
  no_audio         the ablation without the audio input (AdaIN) of the translation module.
  refs1/refs5/refs25  number of reference images used at inference and evaluation
                   (training always draws `data.ref_N` = 3, as the release).

Run:
  python train.py --config=configs/renderer.py --workdir=/tmp/ren \
      --config.data.face_root=... --config.data.sketch_root=... --config.data.audio_root=...
  Smoke: --config=configs/renderer.py:smoke.
  The release trained at batch 96 on 4 GPUs until FID ~ 20 on the LRS2 test list.

FID (eval/fid): off by default. Convert pytorch-fid's FID Inception weights once,
  python -m ip_lap_jax.convert --model inception \
      --src pt_inception-2015-12-05-6726825d.pth --out CKPT/inception
and add --config.fid_inception_from=CKPT/inception. Each eval batch then also runs the
Inception on its ground-truth and generated images (inside the jitted eval step) and the
host computes piq's FID between them (float64, Newton-Schulz square root); eval/fid is
the mean over the `eval_num_batches` batches, as the release's evaluation averages its
per-batch FIDs. A per-batch FID depends on the batch size: compare runs at the release's
eval batch of 96. Unset: no Inception is loaded or run.
"""

from __future__ import annotations

import ml_collections

from ip_lap_jax.configs import common

VARIANTS = ("smoke", "no_warp", "no_audio", "refs1", "refs5", "refs25")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variants = common.parse_variants(arg, VARIANTS)
  refs = [v for v in variants if v.startswith("refs")]
  if len(refs) > 1:
    raise ValueError(f"choose one of refs1/refs5/refs25, got {sorted(refs)}")
  cfg = ml_collections.ConfigDict()
  cfg.stage = "renderer"
  cfg.variants = ",".join(sorted(variants))

  # conv_algorithm: how the renderer's 3x3 convolutions compute ('auto', 'mixed',
  # 'winograd', 'direct'; ip_lap_jax/models/conv.py). Speed only. 'auto' is resolved where
  # the model is built: 'mixed' (Winograd, for every layer in a train step, since XLA's
  # CPU kernel gradients are slow) on the CPU backend in float32, 'direct' elsewhere
  # (figures: benchmarks/README.md).
  cfg.model = ml_collections.ConfigDict(dict(
      use_warping="no_warp" not in variants, use_audio="no_audio" not in variants,
      dtype="float32", conv_algorithm="auto"))
  cfg.discriminator = ml_collections.ConfigDict(dict(ndf=64, n_layers=3, num_d=2))
  # Converted VGG19 weights (a converted renderer checkpoint carries them, or torchvision's).
  cfg.vgg_from = ""
  # Converted FID Inception weights (`--model inception`): enables eval/fid (see above).
  cfg.fid_inception_from = ""

  cfg.data = ml_collections.ConfigDict(dict(
      face_root="", sketch_root="", audio_root="",
      train_list="", test_list="",
      window=5, ref_N=3, image_size=128, min_len=25,
      num_workers=20, worker_buffer_size=2, prefetch_to_device=2, max_retries=200,
  ))
  # References per frame at evaluation/inference (25 in the release's inference).
  cfg.eval_ref_N = int(refs[0][4:]) if refs else 3

  cfg.batch_size = 96
  cfg.eval_batch_size = 96
  cfg.optimizer = common.optimizer_config(1e-4)
  cfg.disc_optimizer = common.optimizer_config(1e-4, b1=0.5)
  cfg.loss = ml_collections.ConfigDict(dict(
      # Generator loss is 2.5*warp while epoch <= gan_start_epoch, then the full loss.
      gan_start_epoch=25,
      # Steps per epoch; 0 = number of training clips // batch_size (the release's
      # DataLoader length with drop_last).
      steps_per_epoch=0,
      num_scales=2, style_weight=250.0,
      # The release never zeroes the discriminator's gradients between the generator's
      # backward pass and its own, so its update also carries d(G loss)/d(D params).
      disc_grad_includes_gen_loss=True,
  ))
  common.run_config(cfg)
  cfg.eval_every_steps = 1500
  cfg.checkpoint_every_steps = 1500
  cfg.eval_num_batches = 10
  cfg.best_metric = "eval/gen_loss"
  cfg.num_sample_images = 8

  if "smoke" in variants:
    cfg.batch_size = 2
    cfg.eval_batch_size = 2
    cfg.data.image_size = 64
    cfg.num_train_steps = 10
    cfg.log_every_steps = 2
    cfg.eval_every_steps = 10
    cfg.eval_num_batches = 1
    cfg.checkpoint_every_steps = 10
    cfg.data.num_workers = 0
    cfg.loss.steps_per_epoch = 1
    cfg.loss.gan_start_epoch = 4
    cfg.optimizer.learning_rate = 3e-4
    cfg.num_sample_images = 4
  return cfg
