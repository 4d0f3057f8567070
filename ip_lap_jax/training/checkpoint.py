"""orbax checkpoints of a run: train state, data-iterator state and run metadata.

Each saved step holds three items: `state` (the unreplicated train state pytree, with
optimizer states, step and RNG), `data` (the grain iterator state) and `meta` (epoch,
step, eval metrics). orbax writes to a temporary directory and renames it when
complete, so a step directory is never half-written; saves are asynchronous.
The last `keep` steps are kept, and the best one by the configured eval metric.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers


def make_manager(workdir: str | pathlib.Path, cfg: ml_collections.ConfigDict
                 ) -> ocp.CheckpointManager:
  """CheckpointManager under `<workdir>/checkpoints` (keep last k + best by metric)."""
  metric, mode = cfg.best_metric, cfg.best_mode
  if mode not in ("min", "max"):
    raise ValueError(f"best_mode must be 'min' or 'max', got {mode!r}")
  policy = checkpoint_managers.AnyPreservationPolicy([
      checkpoint_managers.LatestN(n=cfg.keep_checkpoints),
      # BestN keeps the top of an ascending sort; reverse for "lower is better".
      checkpoint_managers.BestN(get_metric_fn=lambda m: m[metric], reverse=mode == "min",
                                n=1, keep_checkpoints_without_metrics=False),
  ])
  options = ocp.CheckpointManagerOptions(
      preservation_policy=policy, enable_async_checkpointing=cfg.async_checkpoints,
      create=True)
  return ocp.CheckpointManager(pathlib.Path(workdir).absolute() / "checkpoints",
                               options=options, item_names=("state", "data", "meta"))


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_state: bytes | None,
         meta: dict[str, Any], metrics: dict[str, float] | None = None) -> None:
  """Saves host copies (`state` already unreplicated) asynchronously."""
  data = {"iterator": data_state.decode() if data_state is not None else None}
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data),
      meta=ocp.args.JsonSave(meta)), metrics=metrics, force=True)


def restore(manager: ocp.CheckpointManager, template: Any, step: int | None = None
            ) -> tuple[Any, bytes | None, dict[str, Any]]:
  """(state like `template`, iterator state, meta) of `step` (default: the latest)."""
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {manager.directory}")
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
  out = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore(),
      meta=ocp.args.JsonRestore()))
  iterator = out["data"].get("iterator")
  return out["state"], iterator.encode() if iterator is not None else None, out["meta"]
