"""Landmark generator: model from config, state init, per-device train and eval steps.

Batch (per device, inside the data-parallel step): mels [b, T, 80, 16, 1], pose [b, T, 74, 2],
content [b, T, 57, 2], ref_pose [b, Nl, 74, 2], ref_content [b, Nl, 57, 2].
Loss = L1 + velocity (the release's `train_landmarks_generator.py`), computed on each device's share; gradients,
metrics (and synchronised BatchNorm statistics) are averaged over the devices, so with
equal shares the update equals a single-device step on the global batch.
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
from ip_lap_jax.models.landmark_generator import LandmarkGenerator
from ip_lap_jax.training import state as state_lib

AXIS = state_lib.AXIS
INPUTS = ("mels", "pose", "ref_pose", "ref_content")


def make_model(cfg: ml_collections.ConfigDict) -> LandmarkGenerator:
  return registry.build(registry.spec_from_config(cfg, "landmark_generator"))


def dummy_batch(cfg: ml_collections.ConfigDict, batch: int = 1) -> dict[str, np.ndarray]:
  T, Nl = cfg.data.T, cfg.data.Nl
  return {"mels": np.zeros((batch, T, 80, 16, 1), np.float32),
          "pose": np.zeros((batch, T, 74, 2), np.float32),
          "content": np.zeros((batch, T, 57, 2), np.float32),
          "ref_pose": np.zeros((batch, Nl, 74, 2), np.float32),
          "ref_content": np.zeros((batch, Nl, 57, 2), np.float32)}


def init_variables(cfg: ml_collections.ConfigDict, rng: jax.Array) -> dict[str, Any]:
  return registry.init_variables(registry.spec_from_config(cfg, "landmark_generator"), rng)


def init_state(cfg: ml_collections.ConfigDict, tx: optax.GradientTransformation,
               variables: dict[str, Any], rng: jax.Array) -> state_lib.State:
  params = variables["params"]
  return {"step": jnp.zeros((), jnp.int32), "params": params,
          "batch_stats": variables.get("batch_stats", {}), "opt_state": tx.init(params),
          "rng": rng}


def train_step(state: state_lib.State, batch: dict[str, jax.Array], *, model: LandmarkGenerator,
               tx: optax.GradientTransformation, schedule: optax.Schedule, bn_mode: str
               ) -> tuple[state_lib.State, dict[str, jax.Array]]:
  """One Adam step on this device's share; run with `parallel.data_parallel`."""
  dropout_rng = state_lib.step_rng(state)

  def loss_fn(params):
    with state_lib.batchnorm_mode(bn_mode):
      pred, updates = model.apply(
          {"params": params, "batch_stats": state["batch_stats"]},
          *(batch[k] for k in INPUTS), train=True, rngs={"dropout": dropout_rng},
          mutable=["batch_stats"])
    loss, parts = losses.landmark_loss(pred, batch["content"])
    return loss, (parts, updates["batch_stats"])

  (loss, (parts, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  grads = jax.lax.pmean(grads, AXIS)
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  metrics = {"loss": loss, "l1": parts["l1"], "velocity": parts["velocity"]}
  metrics = jax.lax.pmean(metrics, AXIS)
  metrics.update(grad_norm=optax.tree.norm(grads), param_norm=optax.tree.norm(params),
                 learning_rate=schedule(state["step"]))
  new_state = dict(state, step=state["step"] + 1, params=params, opt_state=opt_state,
                   batch_stats=state_lib.reduce_batch_stats(batch_stats, bn_mode))
  return new_state, metrics


def eval_step(state: state_lib.State, batch: dict[str, jax.Array], *, model: LandmarkGenerator
              ) -> dict[str, jax.Array]:
  """Eval-mode L1 and velocity loss averaged over devices."""
  pred = model.apply({"params": state["params"], "batch_stats": state["batch_stats"]},
                     *(batch[k] for k in INPUTS), train=False)
  loss, parts = losses.landmark_loss(pred, batch["content"])
  return jax.lax.pmean({"loss": loss, "l1": parts["l1"], "velocity": parts["velocity"]}, AXIS)


def make_steps(cfg: ml_collections.ConfigDict, tx: optax.GradientTransformation,
               schedule: optax.Schedule, mesh: jax.sharding.Mesh
               ) -> tuple[Callable[..., Any], Callable[..., Any]]:
  """(train step, eval step) over `mesh`; the train step donates the state.

  train(state, batch) -> (state, metrics); eval(state, batch) -> metrics. State and
  metrics are replicated, batches sharded over the mesh's axis.
  """
  model = make_model(cfg)
  rep, shard = parallel.REPLICATED, parallel.SHARDED
  train = parallel.data_parallel(
      functools.partial(train_step, model=model, tx=tx, schedule=schedule, bn_mode=cfg.batchnorm),
      mesh, in_specs=(rep, shard), out_specs=(rep, rep), donate_argnums=0)
  evaluate = parallel.data_parallel(functools.partial(eval_step, model=model), mesh,
                                    in_specs=(rep, shard), out_specs=rep)
  return train, evaluate
