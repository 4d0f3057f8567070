"""Training-step speed: JAX train steps vs the PyTorch mirror run as the release trains.

One full optimisation step per stage at the same batch, same device (this CPU):
- landmark generator: forward (train mode, dropout), L1 + velocity loss, backward, Adam;
- renderer (full-loss phase, epoch > 25): renderer forward with N = 3 references, two
  VGG19 perceptual losses (warp; gen with style), discriminator on fake (detached), real
  and fake, LSGAN + feature matching, backward, Adam on the renderer, then the
  discriminator's backward and Adam step, as train_video_renderer.py.
JAX: `ip_lap_jax.training.*_step.make_steps` (on a one-device mesh, XLA optimisations on),
timed after a compile call. PyTorch: the mirror modules, `torch.set_num_threads(<usable cores>)`.

Each framework is timed as a training loop runs, in blocks of `--repeats` consecutive
steps after one untimed warm-up step; blocks alternate between the frameworks for
`--rounds` rounds, so slow drifts of the machine hit both. (Strict step-by-step
alternation penalised whichever framework ran second: here a JAX renderer step right after
a PyTorch step took 10.6-11.2 s against 8.9-9.7 s in a run of JAX steps.) The median
over all timed steps is reported with the ratio JAX examples/s / PyTorch examples/s.

Run: .venv/bin/python benchmarks/bench_train.py --lm-batch 16 --ren-batch 2 --repeats 3 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the PyTorch mirrors (tests/torch_mirror)

import jax  # noqa: E402

from ip_lap_jax import parallel  # noqa: E402
from ip_lap_jax.configs import landmark_generator as lmk_config  # noqa: E402
from ip_lap_jax.configs import renderer as ren_config  # noqa: E402
from ip_lap_jax.training import landmark_step, renderer_step  # noqa: E402
from ip_lap_jax.training import state as state_lib  # noqa: E402


def _timed(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def jax_landmark(batch_size: int):
  cfg = lmk_config.get_config()
  tx, schedule = state_lib.make_optimizer(cfg.optimizer, 10)
  mesh = parallel.global_mesh(jax.local_devices()[:1])
  state = parallel.replicate(landmark_step.init_state(
      cfg, tx, landmark_step.init_variables(cfg, jax.random.PRNGKey(0)), jax.random.PRNGKey(1)), mesh)
  rng = np.random.default_rng(0)
  batch = parallel.shard_batch({k: rng.uniform(0, 1, (batch_size,) + v.shape[1:]).astype(np.float32)
                                for k, v in landmark_step.dummy_batch(cfg).items()}, mesh)
  p_train, _ = landmark_step.make_steps(cfg, tx, schedule, mesh)
  box = {"state": state}

  def step():
    box["state"], m = p_train(box["state"], batch)
    jax.block_until_ready(m)
  return step


def torch_landmark(batch_size: int):
  import torch  # pylint: disable=g-import-not-at-top
  from torch_mirror.landmark_generator import Landmark_generator
  from torch_mirror.losses import landmark_loss_torch
  model = Landmark_generator().train()
  opt = torch.optim.Adam(model.parameters(), lr=1e-4)
  g = torch.Generator().manual_seed(0)
  T, Nl = 5, 15
  mels = torch.rand(batch_size, T, 1, 80, 16, generator=g)
  pose = torch.rand(batch_size, T, 2, 74, generator=g)
  content = torch.rand(batch_size, T, 2, 57, generator=g)
  ref_pose = torch.rand(batch_size, Nl, 2, 74, generator=g)
  ref_content = torch.rand(batch_size, Nl, 2, 57, generator=g)

  def step():
    opt.zero_grad()
    pred = model(mels, pose, ref_pose, ref_content)
    loss, _, _ = landmark_loss_torch(pred, content.reshape(-1, 2, 57), T)
    loss.backward()
    opt.step()
  return step


def jax_renderer(batch_size: int):
  cfg = ren_config.get_config()
  tx, schedule = state_lib.make_optimizer(cfg.optimizer, 10)
  disc_tx, _ = state_lib.make_optimizer(cfg.disc_optimizer, 10)
  mesh = parallel.global_mesh(jax.local_devices()[:1])
  gen_vars, disc_vars, vgg_vars = renderer_step.init_variables(cfg, jax.random.PRNGKey(0))
  vgg_vars = parallel.replicate(vgg_vars, mesh)
  state = parallel.replicate(renderer_step.init_state(
      gen_vars, disc_vars, tx, disc_tx, jax.random.PRNGKey(1)), mesh)
  rng = np.random.default_rng(0)
  batch = {}
  for k, v in renderer_step.dummy_batch(cfg, batch_size).items():
    shape = v.shape
    batch[k] = (rng.integers(0, 256, shape).astype(np.uint8) if v.dtype == np.uint8
                else rng.standard_normal(shape).astype(np.float32))
  batch = parallel.shard_batch(batch, mesh)
  train_steps, _ = renderer_step.make_steps(cfg, tx, disc_tx, schedule, mesh)
  box = {"state": state}

  def step():
    box["state"], m = train_steps[True](box["state"], batch, vgg_vars)
    jax.block_until_ready(m)
  return step


def torch_renderer(batch_size: int):
  import torch  # pylint: disable=g-import-not-at-top
  from torch_mirror.discriminator import MultiscaleDiscriminatorTorch
  from torch_mirror.losses import (PerceptualLossTorch, feature_matching_loss_torch,
                                              generator_loss_torch, lsgan_loss_torch)
  from torch_mirror.renderer import RendererTorch
  model, disc = RendererTorch().train(), MultiscaleDiscriminatorTorch().train()
  perceptual = PerceptualLossTorch()
  for p in perceptual.parameters():
    p.requires_grad_(False)
  opt = torch.optim.Adam(model.parameters(), lr=1e-4)
  disc_opt = torch.optim.Adam(disc.parameters(), lr=1e-4, betas=(0.5, 0.999))
  g = torch.Generator().manual_seed(0)
  face = torch.rand(batch_size, 1, 3, 128, 128, generator=g)
  sketches = torch.rand(batch_size, 5, 3, 128, 128, generator=g)
  refs = torch.rand(batch_size, 3, 3, 128, 128, generator=g)
  ref_sketches = torch.rand(batch_size, 3, 3, 128, 128, generator=g)
  mels = torch.randn(batch_size, 1, 1, 80, 16, generator=g)

  def step():
    opt.zero_grad()
    disc_opt.zero_grad()
    generated, warped = model(face, sketches, refs, ref_sketches, mels)
    gt = face[:, 0]
    warp_loss = perceptual(warped, gt)
    gen_loss = perceptual(generated, gt, True, 250.0)
    fake_det = disc(generated.detach())
    real = disc(gt)
    loss_d = 0.5 * (lsgan_loss_torch(fake_det, False) + lsgan_loss_torch(real, True))
    fake = disc(generated)
    loss = generator_loss_torch(warp_loss, gen_loss, lsgan_loss_torch(fake, True),
                                feature_matching_loss_torch(fake, real), epoch=26)
    loss.backward()
    opt.step()
    loss_d.backward()
    disc_opt.step()
  return step


def bench(name: str, batch: int, make_jax, make_torch, repeats: int, rounds: int) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(len(os.sched_getaffinity(0)))  # the cores this process may use
  j, t = make_jax(batch), make_torch(batch)
  compile_s = _timed(j)
  jt, tt = [], []
  for _ in range(rounds):
    for step, times in ((j, jt), (t, tt)):
      step()  # warm-up after the other framework's block
      times.extend(_timed(step) for _ in range(repeats))
  jm, tm = statistics.median(jt), statistics.median(tt)
  row = {"stage": name, "batch": batch, "jax_examples_s": batch / jm,
         "torch_examples_s": batch / tm, "ratio": tm / jm, "jax_first_call_s": compile_s,
         "jax_step_s": jt, "torch_step_s": tt}
  print(f"{name:20s} batch {batch:3d}: JAX {batch / jm:8.2f} ex/s, PyTorch {batch / tm:8.2f} "
        f"ex/s, ratio {tm / jm:5.2f}x (first JAX call {compile_s:.0f}s)", flush=True)
  return row


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--lm-batch", type=int, default=16)
  ap.add_argument("--ren-batch", type=int, default=2)
  ap.add_argument("--repeats", type=int, default=3, help="timed steps per block")
  ap.add_argument("--rounds", type=int, default=2, help="blocks per framework")
  ap.add_argument("--stages", nargs="+", default=["landmark_generator", "renderer"])
  ap.add_argument("--json", type=str, default="")
  args = ap.parse_args()
  rows = []
  if "landmark_generator" in args.stages:
    rows.append(bench("landmark_generator", args.lm_batch, jax_landmark, torch_landmark,
                      args.repeats, args.rounds))
  if "renderer" in args.stages:
    rows.append(bench("renderer", args.ren_batch, jax_renderer, torch_renderer, args.repeats,
                      args.rounds))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
  main()
