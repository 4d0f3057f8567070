"""Landmark generator training config (the release's `train_landmarks_generator.py` settings by default).

Variants (comma-separated `get_config` argument):
  smoke  tiny batch and few steps for this CPU (about 2 minutes).
  lstm   the paper's LSTM ablation (bidirectional 4-layer LSTM instead of the transformer).

Run:
  python train.py --config=configs/landmark_generator.py \
      --workdir=/tmp/lmk --config.data.landmark_root=... --config.data.audio_root=... \
      --config.data.train_list=filelists/lrs2/train.txt --config.data.test_list=...
  Smoke: --config=configs/landmark_generator.py:smoke (about 2 min on a 2-core CPU).
  The release reached eval L1 5.87e-3 after ~610k steps at batch 128 on one RTX 3090.
"""

from __future__ import annotations

import ml_collections

from ip_lap_jax.configs import common

VARIANTS = ("smoke", "lstm")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variants = common.parse_variants(arg, VARIANTS)
  cfg = ml_collections.ConfigDict()
  cfg.stage = "landmark_generator"
  cfg.variants = ",".join(sorted(variants))

  cfg.model = ml_collections.ConfigDict(dict(
      T=5, d_model=512, nlayers=4, nhead=4, dim_feedforward=1024, dropout=0.1,
      generator="lstm" if "lstm" in variants else "transformer", dtype="float32"))

  cfg.data = ml_collections.ConfigDict(dict(
      landmark_root="", audio_root="",
      # `speaker/clip` per line; an empty path lists every clip under landmark_root.
      train_list="", test_list="",
      T=5, Nl=15, min_len=25,
      num_workers=8, worker_buffer_size=2, prefetch_to_device=2,
      # Attempts to draw a valid sample before giving up (bad files are replaced).
      max_retries=200,
  ))

  cfg.batch_size = 128
  cfg.eval_batch_size = 128
  cfg.optimizer = common.optimizer_config(1e-4)
  common.run_config(cfg)
  cfg.best_metric = "eval/l1"

  if "smoke" in variants:
    cfg.batch_size = 8
    cfg.eval_batch_size = 8
    cfg.num_train_steps = 60
    cfg.log_every_steps = 10
    cfg.eval_every_steps = 30
    cfg.eval_num_batches = 2
    cfg.checkpoint_every_steps = 30
    cfg.data.num_workers = 0
    cfg.data.Nl = 15
    cfg.optimizer.learning_rate = 3e-4
  return cfg
