"""The generic training loop: `train_and_evaluate(config, workdir)` for any stage.

What a stage trains and how it evaluates sits behind `training.stage.Stage`
(`stage_class(cfg.stage)`); this loop only feeds it data and keeps the books: grain
loaders of each process's share of every global batch (ip_lap_jax.data), data-parallel
steps over one mesh of all devices of all processes (ip_lap_jax.parallel), orbax
checkpoints with every process's data-iterator state (exact resume), periodic evaluation
on the test list, and from process 0 only: TensorBoard events under
`<workdir>/tensorboard`, sample grids under `<workdir>/samples`, config.json, model.json
and a tqdm progress bar.
"""

from __future__ import annotations

import logging
import pathlib
import time
from typing import Any, Iterable

import cv2
import jax
import ml_collections
import numpy as np
import tqdm

from ip_lap_jax import export, parallel
from ip_lap_jax.data import pipeline
from ip_lap_jax.training import checkpoint as ckpt_lib
from ip_lap_jax.training import stage as stage_lib

log = logging.getLogger(__name__)

EVAL_SEED_OFFSET = 1_000_003  # evaluation draws its own fixed examples


def steps_per_epoch(cfg: ml_collections.ConfigDict, num_clips: int) -> int:
  """The release's epoch: one pass of its DataLoader = num_clips // batch (drop_last)."""
  explicit = cfg.loss.steps_per_epoch if "loss" in cfg else 0
  return int(explicit) if explicit else max(1, num_clips // cfg.batch_size)


def evaluate(stage: stage_lib.Stage, state: Any, batches: Iterable[tuple[Any, dict[str, Any]]],
             want_grid: bool) -> tuple[dict[str, float], np.ndarray | None]:
  """({'eval/<name>': mean over the batches}, the first batch's sample grid or None).

  Every process passes its share of the same global batches; the metrics of each global
  batch are averaged over all devices inside the eval step, so all processes return the
  same numbers.
  """
  sums: dict[str, float] = {}
  count, grid = 0, None
  for _, batch in batches:
    metrics, batch_grid = stage.summarise(stage.eval_step(state, batch),
                                          want_grid=want_grid and grid is None)
    grid = batch_grid if grid is None else grid
    for k, v in metrics.items():
      sums[k] = sums.get(k, 0.0) + v
    count += 1
  return {f"eval/{k}": v / max(count, 1) for k, v in sums.items()}, grid


def _served_log(cfg: ml_collections.ConfigDict, workdir: pathlib.Path, split: str
                ) -> pathlib.Path | None:
  if not cfg.get("record_served"):
    return None
  (workdir / "served").mkdir(exist_ok=True)
  return workdir / "served" / f"{split}_process{jax.process_index()}.txt"


class _Summaries:
  """TensorBoard events and sample grids, written by process 0 only."""

  def __init__(self, workdir: pathlib.Path, enabled: bool):
    self._workdir = workdir
    self._writer = None
    if enabled:
      import tensorboardX  # pylint: disable=g-import-not-at-top
      self._writer = tensorboardX.SummaryWriter(str(workdir / "tensorboard"))

  def scalars(self, metrics: dict[str, float], step: int, prefix: str = "") -> None:
    if self._writer:
      for k, v in metrics.items():
        self._writer.add_scalar(f"{prefix}{k}", v, step)

  def grid(self, grid: np.ndarray | None, step: int) -> None:
    if self._writer and grid is not None:
      self._writer.add_image("samples", grid[..., ::-1], step, dataformats="HWC")
      (self._workdir / "samples").mkdir(exist_ok=True)
      cv2.imwrite(str(self._workdir / "samples" / f"step_{step:09d}.png"), grid)

  def close(self) -> None:
    if self._writer:
      self._writer.close()


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                       devices: list[Any] | None = None) -> dict[str, Any]:
  """Trains until `cfg.num_train_steps`, resuming from `<workdir>/checkpoints` if present.

  `devices` defaults to every device of every process (`jax.devices()`): the global batch
  is split over all of them, each process loading its devices' rows. With several
  processes every one calls this with the same config and (shared) workdir.

  Returns:
    {'state': final train state on the host, 'train': last logged train metrics,
     'eval': last eval metrics, 'history': [(step, train metrics)], 'steps_per_epoch'}.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = parallel.global_mesh(devices)
  if cfg.batch_size % mesh.size or cfg.eval_batch_size % mesh.size:
    raise ValueError(f"batch sizes {cfg.batch_size}/{cfg.eval_batch_size} must divide over "
                     f"{mesh.size} devices")
  primary = parallel.is_primary()
  stage = stage_lib.stage_class(cfg.stage)(cfg, mesh)
  if primary:
    (workdir / "config.json").write_text(cfg.to_json_best_effort(indent=2))
    export.write_run_spec(workdir, stage.model_spec())

  train_sampler, test_sampler = stage.make_samplers(cfg)
  epoch_steps = steps_per_epoch(cfg, len(train_sampler.clips))
  manager = ckpt_lib.make_manager(workdir, cfg)
  host_state = stage.init_state()
  data_state = None
  start = 0
  if ckpt_lib.latest_step(manager) is not None:
    host_state, data_state, meta = ckpt_lib.restore(manager, host_state)
    start = int(meta["step"])
    log.info("resumed from step %d (epoch %d)", start, meta["epoch"])
  state = parallel.replicate(host_state, mesh)
  del host_state

  loader = pipeline.make_loader(train_sampler, num_steps=cfg.num_train_steps,
                                global_batch=cfg.batch_size, seed=cfg.seed,
                                num_workers=cfg.data.num_workers,
                                worker_buffer_size=cfg.data.worker_buffer_size,
                                max_retries=cfg.data.max_retries,
                                served_log=_served_log(cfg, workdir, "train"))
  loader_iter = iter(loader)
  if data_state is not None:
    loader_iter.set_state(data_state)
  batches = pipeline.device_batches(loader_iter, mesh, cfg.data.prefetch_to_device)

  summaries = _Summaries(workdir, primary)
  history, pending, last_train, last_eval = [], [], {}, {}
  bar = tqdm.tqdm(total=cfg.num_train_steps, initial=start, disable=not primary,
                  desc=cfg.stage, dynamic_ncols=True)
  t_last, step_last = time.perf_counter(), start
  for step in range(start + 1, cfg.num_train_steps + 1):
    try:
      data_state, batch = next(batches)
    except StopIteration:
      raise RuntimeError(f"data ran out at step {step}") from None
    epoch = (step - 1) // epoch_steps
    state, metrics = stage.train_step(state, batch, step=step, epoch=epoch)
    pending.append(metrics)
    bar.update(1)
    if step % cfg.log_every_steps == 0 or step == cfg.num_train_steps:
      fetched = [parallel.fetch(m) for m in pending]
      pending = []
      last_train = {k: float(np.mean([f[k] for f in fetched])) for k in fetched[0]}
      if cfg.halt_on_nonfinite and not all(np.isfinite(v) for v in last_train.values()):
        raise FloatingPointError(f"non-finite training metrics at step {step}: {last_train}")
      now = time.perf_counter()
      rate = (step - step_last) / max(now - t_last, 1e-9)
      t_last, step_last = now, step
      last_train.update(steps_per_s=rate, examples_per_s=rate * cfg.batch_size, epoch=epoch)
      history.append((step, last_train))
      bar.set_postfix(loss=f"{last_train.get(stage.progress_metric, 0.0):.4g}",
                      steps_s=f"{rate:.2f}", ex_s=f"{rate * cfg.batch_size:.1f}")
      summaries.scalars(last_train, step, "train/")
    eval_metrics = None
    if step % cfg.eval_every_steps == 0 or step == cfg.num_train_steps:
      eval_loader = pipeline.make_loader(
          test_sampler, num_steps=cfg.eval_num_batches, global_batch=cfg.eval_batch_size,
          seed=cfg.seed + EVAL_SEED_OFFSET, num_workers=cfg.data.num_workers,
          max_retries=cfg.data.max_retries, served_log=_served_log(cfg, workdir, "eval"))
      eval_metrics, grid = evaluate(stage, state, pipeline.device_batches(
          iter(eval_loader), mesh, cfg.data.prefetch_to_device), want_grid=primary)
      last_eval = eval_metrics
      log.info("step %d eval %s", step, eval_metrics)
      summaries.scalars(eval_metrics, step)
      summaries.grid(grid, step)
    if step % cfg.checkpoint_every_steps == 0 or step == cfg.num_train_steps:
      ckpt_lib.save(manager, step, parallel.fetch(state), data_state,
                    {"step": step, "epoch": (step - 1) // epoch_steps, "stage": cfg.stage,
                     "eval": eval_metrics or {}}, eval_metrics)
  bar.close()
  manager.wait_until_finished()
  manager.close()
  summaries.close()
  return {"state": parallel.fetch(state), "train": last_train, "eval": last_eval,
          "history": history, "steps_per_epoch": epoch_steps}
