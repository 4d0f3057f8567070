"""Config pieces shared by both stages: optimiser, schedule, checkpoint and logging fields.

`parse_variants("smoke,lstm")` turns the string argument of `get_config(arg)` into a set
of variant names; each stage's config validates them against its own list.
"""

from __future__ import annotations

import ml_collections


def parse_variants(arg: str | None, allowed: tuple[str, ...]) -> set[str]:
  """Comma-separated variant names -> set; unknown names raise with the allowed list."""
  names = {a.strip() for a in (arg or "").split(",") if a.strip()}
  unknown = names - set(allowed)
  if unknown:
    raise ValueError(f"unknown config variant(s) {sorted(unknown)}; allowed: {list(allowed)}")
  return names


def optimizer_config(lr: float, b1: float = 0.9, b2: float = 0.999) -> ml_collections.ConfigDict:
  """torch.optim.Adam defaults (eps 1e-8, no weight decay), constant lr, no clipping."""
  return ml_collections.ConfigDict(dict(
      learning_rate=lr,
      b1=b1,
      b2=b2,
      eps=1e-8,
      # 0 disables clipping (the release does not clip).
      grad_clip_norm=0.0,
      # 'constant' (release), 'cosine' or 'warmup_cosine'.
      schedule="constant",
      warmup_steps=0,
      # Final lr of the cosine schedules as a fraction of `learning_rate`.
      end_lr_fraction=0.0,
  ))


def run_config(cfg: ml_collections.ConfigDict) -> None:
  """Fields common to both stages (seeding, BatchNorm mode, checkpoints, logging)."""
  cfg.seed = 0
  # 'per_device': each device normalises with its own batch statistics and the running
  # statistics of device 0 are kept, as torch.nn.DataParallel does in the release.
  # 'sync': batch statistics are averaged over all devices (SyncBatchNorm).
  cfg.batchnorm = "per_device"
  cfg.num_train_steps = 1_000_000
  cfg.log_every_steps = 100
  cfg.eval_every_steps = 5000
  cfg.eval_num_batches = 25
  cfg.checkpoint_every_steps = 5000
  cfg.keep_checkpoints = 3
  # The best checkpoint by this eval metric is kept beyond `keep_checkpoints`.
  cfg.best_metric = "eval/l1"
  cfg.best_mode = "min"
  cfg.async_checkpoints = True
  # Directory of a converted checkpoint (`python -m ip_lap_jax.convert`) to fine-tune from.
  cfg.init_from = ""
  cfg.halt_on_nonfinite = True
  # Debug record: each process appends the record keys its loaders draw to
  # <workdir>/served/{train,eval}_process<i>.txt (tests check the per-host data shares).
  cfg.record_served = False
