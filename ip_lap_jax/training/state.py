"""Train state, optimisers, BatchNorm modes across devices, device helpers.

The train state is a plain dict pytree (so orbax saves and restores it as is):
  step: int32 [], params, batch_stats, opt_state, rng: uint32 [2],
  and for the renderer also disc_params, disc_opt_state.
On the mesh (ip_lap_jax.parallel) every leaf is a replicated global array; per-device
step functions see the whole state.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from ip_lap_jax import parallel

AXIS = parallel.AXIS
State = dict[str, Any]


def learning_rate_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """'constant' (release), 'cosine' or 'warmup_cosine' over `total_steps`."""
  lr = cfg.learning_rate
  if cfg.schedule == "constant":
    return optax.constant_schedule(lr)
  if cfg.schedule == "cosine":
    return optax.cosine_decay_schedule(lr, max(total_steps, 1), alpha=cfg.end_lr_fraction)
  if cfg.schedule == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, lr, cfg.warmup_steps, max(total_steps, cfg.warmup_steps + 1),
        end_value=lr * cfg.end_lr_fraction)
  raise ValueError(f"unknown lr schedule {cfg.schedule!r}")


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """torch.optim.Adam(lr, betas, eps) with optional global-norm clipping first."""
  schedule = learning_rate_schedule(cfg, total_steps)
  adam = optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  if cfg.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), adam), schedule
  return adam, schedule


def _sync_batchnorm_interceptor(next_fun, args, kwargs, context):
  """Runs every training-mode BatchNorm (nn.BatchNorm, GroupedBatchNorm) with statistics
  averaged over AXIS.

  The models do not expose BatchNorm's `axis_name`; an unbound clone with it is applied
  to the same variables and its updated statistics written back.
  """
  from ip_lap_jax.models.renderer import GroupedBatchNorm  # pylint: disable=g-import-not-at-top

  module = context.module
  if (not isinstance(module, (nn.BatchNorm, GroupedBatchNorm)) or context.method_name != "__call__"
      or module.axis_name is not None or module.is_initializing()):
    return next_fun(*args, **kwargs)
  if isinstance(module, GroupedBatchNorm):  # the renderer's flow module: `train` keyword
    if not kwargs.get("train"):
      return next_fun(*args, **kwargs)
    clone = module.clone(parent=None, axis_name=AXIS)
  else:
    use_running_average = nn.merge_param(
        "use_running_average", module.use_running_average, kwargs.get("use_running_average"))
    if use_running_average:
      return next_fun(*args, **kwargs)
    kwargs = {k: v for k, v in kwargs.items() if k != "use_running_average"}
    clone = module.clone(parent=None, axis_name=AXIS, use_running_average=False)
  variables = {"params": module.variables.get("params", {}),
               "batch_stats": module.variables["batch_stats"]}
  y, updates = clone.apply(variables, *args, mutable=["batch_stats"], **kwargs)
  for name, value in updates["batch_stats"].items():
    module.put_variable("batch_stats", name, value)
  return y


@contextlib.contextmanager
def batchnorm_mode(mode: str) -> Iterator[None]:
  """'sync': cross-device BatchNorm inside the block; 'per_device': unchanged."""
  if mode == "sync":
    with nn.intercept_methods(_sync_batchnorm_interceptor):
      yield
  elif mode == "per_device":
    yield
  else:
    raise ValueError(f"unknown batchnorm mode {mode!r} (per_device | sync)")


def reduce_batch_stats(batch_stats: Any, mode: str) -> Any:
  """Makes the new running statistics identical on all devices.

  per_device: global device 0's (process 0's first device), as torch.nn.DataParallel
  keeps only the primary replica's buffers; sync: statistics already averaged over every
  global device (the pmean only guards against rounding drift).
  """
  if mode == "sync":
    return jax.lax.pmean(batch_stats, AXIS)
  first = jax.lax.axis_index(AXIS) == 0
  return jax.tree.map(lambda x: jax.lax.psum(jnp.where(first, x, jnp.zeros_like(x)), AXIS),
                      batch_stats)


def step_rng(state: State) -> jax.Array:
  """Per-step, per-device key: fold_in(fold_in(rng, step), global device index), so the
  dropout masks differ on every device of every process."""
  rng = jax.random.fold_in(state["rng"], state["step"])
  return jax.random.fold_in(rng, jax.lax.axis_index(AXIS))
