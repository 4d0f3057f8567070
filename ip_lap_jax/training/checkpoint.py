"""orbax checkpoints of a run: train state, data-iterator states and run metadata.

Each saved step holds three items: `state` (a host copy of the replicated train state,
with optimizer states, step and RNG: plain arrays without device placement, so a run
trained on N devices is exported or resumed on any number), `data` ({'iterators': the grain iterator state of
every process, in process order}) and `meta` (epoch, step, eval metrics). Each process's
loader state is gathered to all processes before the save (`parallel.allgather_bytes`)
and written once, by process 0, as one JSON item; on restore every process takes its own
entry, so resuming needs the same number of processes. orbax writes to a temporary
directory and renames it when complete, so a step directory is never half-written.
With several processes all of them take part in every save and restore (orbax
synchronises them; the workdir must be one filesystem shared by all hosts) and
`latest_step` is checked to be the same on all. Saves are asynchronous. The last `keep`
steps are kept, and the best one by the configured eval metric.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from ip_lap_jax import parallel


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


def latest_step(manager: ocp.CheckpointManager) -> int | None:
  """The newest complete step, the same on every process (else RuntimeError)."""
  step = manager.latest_step()
  step = parallel.agree(-1 if step is None else step, f"the latest checkpoint in {manager.directory}")
  return None if step < 0 else step


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_state: bytes | None,
         meta: dict[str, Any], metrics: dict[str, float] | None = None) -> None:
  """Saves asynchronously; every process calls it with the same host `state` and its own
  loader state."""
  iterators = parallel.allgather_bytes(data_state or b"")
  data = {"iterators": [s.decode() if s else None for s in iterators]}
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data),
      meta=ocp.args.JsonSave(meta)), metrics=metrics, force=True)


def restore(manager: ocp.CheckpointManager, template: Any, step: int | None = None
            ) -> tuple[Any, bytes | None, dict[str, Any]]:
  """(host state like `template`, this process's iterator state, meta) of `step`
  (default: the latest)."""
  step = latest_step(manager) if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {manager.directory}")
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
  out = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore(),
      meta=ocp.args.JsonRestore()))
  iterators = out["data"].get("iterators", [out["data"].get("iterator")])  # older runs: one
  if len(iterators) != jax.process_count():
    raise ValueError(f"checkpoint step {step} in {manager.directory} holds the data state of "
                     f"{len(iterators)} processes; resume it with that many, not "
                     f"{jax.process_count()}")
  mine = iterators[jax.process_index()]
  return out["state"], mine.encode() if mine is not None else None, out["meta"]
