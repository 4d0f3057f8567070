"""Training loop of both stages: `train_and_evaluate(config, workdir)`.

Data: grain loaders over the official layout (ip_lap_jax.data), one pmapped train step
per stage (ip_lap_jax.training), orbax checkpoints with the data-iterator state (exact
resume), periodic evaluation on the test list (renderer: also FID when
`config.fid_inception_from` names converted Inception weights), TensorBoard events under
`<workdir>/tensorboard`, sample grids under `<workdir>/samples`, a tqdm progress bar.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time
from typing import Any

import cv2
import jax
import ml_collections
import numpy as np
import tqdm

from ip_lap_jax import export
from ip_lap_jax.data import pipeline
from ip_lap_jax.models import registry, store, structure
from ip_lap_jax.data.landmark_data import LandmarkSampler
from ip_lap_jax.data.renderer_data import RendererSampler
from ip_lap_jax.training import checkpoint as ckpt_lib
from ip_lap_jax.training import metrics as metrics_lib
from ip_lap_jax.training import state as state_lib

log = logging.getLogger(__name__)

EVAL_SEED_OFFSET = 1_000_003  # evaluation draws its own fixed examples


def make_samplers(cfg: ml_collections.ConfigDict) -> tuple[Any, Any]:
  """(train sampler, test sampler) for the config's stage."""
  d = cfg.data
  if cfg.stage == "landmark_generator":
    make = lambda lst: LandmarkSampler.from_layout(d.landmark_root, d.audio_root, lst, T=d.T,
                                                   Nl=d.Nl, min_len=d.min_len)
    return make(d.train_list), make(d.test_list or d.train_list)
  if cfg.stage == "renderer":
    make = lambda lst, n: RendererSampler.from_layout(d.face_root, d.sketch_root, d.audio_root,
                                                      lst, ref_N=n, image_size=d.image_size,
                                                      min_len=d.min_len)
    return make(d.train_list, d.ref_N), make(d.test_list or d.train_list, cfg.eval_ref_N)
  raise ValueError(f"unknown stage {cfg.stage!r}")


def _load_converted(directory: str, item: str, template: dict[str, Any], what: str
                    ) -> dict[str, Any]:
  """A saved tree (`models.store`) checked against the variables it replaces."""
  tree = store.load_tree(directory, item)
  if "params" not in tree:
    tree = {"params": tree}
  tree = {k: v for k, v in tree.items() if k in template}
  structure.check_structure(tree, template, f"{what} from {directory}/{item}")
  return tree


def _load_fid_inception(directory: str) -> dict[str, Any]:
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
  return _load_converted(directory, "variables",
                         registry.variables_template(registry.official_spec("inception")),
                         "FID Inception")


class _Stage:
  """What differs between the stages: state init, compiled steps, evaluation."""

  def __init__(self, cfg: ml_collections.ConfigDict, devices: list[Any]):
    self.cfg = cfg
    self.devices = devices
    total = cfg.num_train_steps
    self.tx, self.schedule = state_lib.make_optimizer(cfg.optimizer, total)
    rng = jax.random.PRNGKey(cfg.seed)
    init_rng, self.state_rng = jax.random.split(rng)
    self.extra = None  # renderer: VGG19 variables
    self.inception = None  # renderer with FID: replicated FID Inception variables
    if cfg.stage == "landmark_generator":
      from ip_lap_jax.training import landmark_step as steps  # pylint: disable=g-import-not-at-top
      variables = steps.init_variables(cfg, init_rng)
      if cfg.init_from:
        variables = _load_converted(cfg.init_from, "variables", variables, "landmark generator")
      self.state = steps.init_state(cfg, self.tx, variables, self.state_rng)
      self.train_steps, self.eval_step = steps.make_steps(cfg, self.tx, self.schedule, devices)
    else:
      from ip_lap_jax.training import renderer_step as steps  # pylint: disable=g-import-not-at-top
      if cfg.fid_inception_from:  # first: a bad path fails before minutes of compiling
        if cfg.eval_batch_size < 2:
          raise ValueError("FID needs eval_batch_size >= 2 (a covariance per eval batch)")
        self.inception = state_lib.replicate(_load_fid_inception(cfg.fid_inception_from),
                                             devices)
      self.disc_tx, _ = state_lib.make_optimizer(cfg.disc_optimizer, total)
      gen_vars, disc_vars, vgg_vars = steps.init_variables(cfg, init_rng)
      if cfg.init_from:
        gen_vars = _load_converted(cfg.init_from, "variables", gen_vars, "renderer")
      vgg_dir = cfg.vgg_from or cfg.init_from
      if vgg_dir:
        vgg_vars = _load_converted(vgg_dir, "vgg19", vgg_vars, "VGG19")
      else:
        log.warning("no VGG19 weights (config.vgg_from): the perceptual loss uses a random VGG")
      self.state = steps.init_state(gen_vars, disc_vars, self.tx, self.disc_tx, self.state_rng)
      self.train_steps, self.eval_step = steps.make_steps(cfg, self.tx, self.disc_tx,
                                                          self.schedule, devices)
      self.extra = vgg_vars

  def train(self, state, batch, epoch: int):
    if self.cfg.stage == "landmark_generator":
      return self.train_steps(state, batch)
    gan_phase = epoch > self.cfg.loss.gan_start_epoch
    return self.train_steps[gan_phase](state, batch, self.extra)

  def evaluate(self, state, batches) -> tuple[dict[str, float], np.ndarray | None]:
    sums: dict[str, float] = {}
    count = 0
    grid = None
    for _, batch in batches:
      features = None
      if self.cfg.stage == "landmark_generator":
        m = self.eval_step(state, batch)
      else:
        m, images, features = self.eval_step(state, batch, self.extra, self.inception)
        if grid is None:
          grid = _renderer_grid(images, self.cfg.num_sample_images)
      m = jax.device_get(state_lib.unreplicate(m))
      if features:
        # One FID per eval batch (the global batch), averaged over the eval batches below,
        # as the release's evaluate() averages compute_generation_quality's.
        features = state_lib.unreplicate(features)
        m["fid"] = metrics_lib.fid(features["generated"], features["gt"])
      for k, v in m.items():
        sums[k] = sums.get(k, 0.0) + float(v)
      count += 1
    return {f"eval/{k}": v / max(count, 1) for k, v in sums.items()}, grid


def _renderer_grid(images: dict[str, jax.Array], rows: int) -> np.ndarray:
  """Rows: centre sketch | references | warped reference | generated | ground truth."""
  im = {k: np.asarray(jax.device_get(v[0])) for k, v in images.items()}  # device 0's share
  refs = [im["refs"][:, n] for n in range(im["refs"].shape[1])]
  return metrics_lib.sample_grid([im["sketch"], *refs, im["warped"], im["generated"], im["gt"]],
                                 rows)


def steps_per_epoch(cfg: ml_collections.ConfigDict, num_clips: int) -> int:
  """The release's epoch: one pass of its DataLoader = num_clips // batch (drop_last)."""
  explicit = cfg.loss.steps_per_epoch if "loss" in cfg else 0
  return int(explicit) if explicit else max(1, num_clips // cfg.batch_size)


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                       devices: list[Any] | None = None) -> dict[str, Any]:
  """Trains until `cfg.num_train_steps`, resuming from `<workdir>/checkpoints` if present.

  `devices` defaults to all local devices (the global batch is split over every device of
  every host).

  Returns:
    {'state': final unreplicated train state, 'train': last logged train metrics,
     'eval': last eval metrics, 'history': [(step, train metrics)]}.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  devices = list(devices or jax.local_devices())
  n_dev = len(devices)
  if cfg.batch_size % (n_dev * jax.process_count()) or cfg.eval_batch_size % (n_dev * jax.process_count()):
    raise ValueError(f"batch sizes {cfg.batch_size}/{cfg.eval_batch_size} must divide over "
                     f"{n_dev * jax.process_count()} devices")
  primary = jax.process_index() == 0
  if primary:
    (workdir / "config.json").write_text(cfg.to_json_best_effort(indent=2))
    export.write_run_spec(workdir, registry.spec_from_config(cfg))

  train_sampler, test_sampler = make_samplers(cfg)
  epoch_steps = steps_per_epoch(cfg, len(train_sampler.clips))
  stage = _Stage(cfg, devices)
  manager = ckpt_lib.make_manager(workdir, cfg)
  host_state = stage.state
  data_state = None
  start = 0
  if manager.latest_step() is not None:
    host_state, data_state, meta = ckpt_lib.restore(manager, host_state)
    start = int(meta["step"])
    log.info("resumed from step %d (epoch %d)", start, meta["epoch"])
  state = state_lib.replicate(host_state, devices)

  loader = pipeline.make_loader(train_sampler, num_steps=cfg.num_train_steps,
                                global_batch=cfg.batch_size, seed=cfg.seed,
                                num_workers=cfg.data.num_workers,
                                worker_buffer_size=cfg.data.worker_buffer_size,
                                max_retries=cfg.data.max_retries)
  loader_iter = iter(loader)
  if data_state is not None:
    loader_iter.set_state(data_state)
  batches = pipeline.device_batches(loader_iter, devices, cfg.data.prefetch_to_device)

  writer = None
  if primary:
    import tensorboardX  # pylint: disable=g-import-not-at-top
    writer = tensorboardX.SummaryWriter(str(workdir / "tensorboard"))
  history, pending, last_train, last_eval = [], [], {}, {}
  bar = tqdm.tqdm(total=cfg.num_train_steps, initial=start, disable=not primary,
                  desc=cfg.stage, dynamic_ncols=True)
  t_last, step_last = time.perf_counter(), start
  step = start
  for step in range(start + 1, cfg.num_train_steps + 1):
    try:
      data_state, batch = next(batches)
    except StopIteration:
      raise RuntimeError(f"data ran out at step {step}") from None
    epoch = (step - 1) // epoch_steps
    state, metrics = stage.train(state, batch, epoch)
    pending.append(metrics)
    bar.update(1)
    if step % cfg.log_every_steps == 0 or step == cfg.num_train_steps:
      fetched = [state_lib.unreplicate(m) for m in pending]
      pending = []
      last_train = {k: float(np.mean([f[k] for f in fetched])) for k in fetched[0]}
      if cfg.halt_on_nonfinite and not all(np.isfinite(v) for v in last_train.values()):
        raise FloatingPointError(f"non-finite training metrics at step {step}: {last_train}")
      now = time.perf_counter()
      rate = (step - step_last) / max(now - t_last, 1e-9)
      t_last, step_last = now, step
      last_train.update(steps_per_s=rate, examples_per_s=rate * cfg.batch_size, epoch=epoch)
      history.append((step, last_train))
      bar.set_postfix(loss=f"{last_train.get('loss', last_train.get('g_loss', 0.0)):.4g}",
                      steps_s=f"{rate:.2f}", ex_s=f"{rate * cfg.batch_size:.1f}")
      if writer:
        for k, v in last_train.items():
          writer.add_scalar(f"train/{k}", v, step)
    eval_metrics = None
    if step % cfg.eval_every_steps == 0 or step == cfg.num_train_steps:
      eval_loader = pipeline.make_loader(
          test_sampler, num_steps=cfg.eval_num_batches, global_batch=cfg.eval_batch_size,
          seed=cfg.seed + EVAL_SEED_OFFSET, num_workers=cfg.data.num_workers,
          max_retries=cfg.data.max_retries)
      eval_metrics, grid = stage.evaluate(state, pipeline.device_batches(
          iter(eval_loader), devices, cfg.data.prefetch_to_device))
      last_eval = eval_metrics
      log.info("step %d eval %s", step, eval_metrics)
      if writer:
        for k, v in eval_metrics.items():
          writer.add_scalar(k, v, step)
        if grid is not None:
          writer.add_image("samples", grid[..., ::-1], step, dataformats="HWC")
      if primary and grid is not None:
        (workdir / "samples").mkdir(exist_ok=True)
        cv2.imwrite(str(workdir / "samples" / f"step_{step:09d}.png"), grid)
    if step % cfg.checkpoint_every_steps == 0 or step == cfg.num_train_steps:
      ckpt_lib.save(manager, step, state_lib.unreplicate(state), data_state,
                    {"step": step, "epoch": (step - 1) // epoch_steps, "stage": cfg.stage,
                     "eval": eval_metrics or {}},
                    eval_metrics)
  bar.close()
  manager.wait_until_finished()
  manager.close()
  if writer:
    writer.close()
  return {"state": state_lib.unreplicate(state), "train": last_train, "eval": last_eval,
          "history": history, "steps_per_epoch": epoch_steps}
