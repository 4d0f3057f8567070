"""Model forward speed: the JAX renderer and landmark generator vs their PyTorch mirrors.

Same process, same random weights (the mirror's, saved officially and converted), same
inputs. JAX: `jax.jit`, timed after a warm-up call (the compile time is printed apart).
PyTorch: the release-structured mirror (per-reference Python loop in the renderer), eval
mode, `torch.no_grad()`, `torch.set_num_threads(<usable cores>)`. The two frameworks are
timed alternately, `--repeats` times each (fewer when a configuration's budget
`--budget-s` runs out, at least once). The machine is shared, so the best (minimum) time
of each is reported per output frame, and the ratio of medians beside it.

Arithmetic per frame (GFLOP, multiply-add = 2):
- JAX: XLA's own count, `jax.jit(f).lower(...).compile().cost_analysis()['flops']`, with
  direct convolutions for the default renderer (modulations shared across references) and
  for `shared_modulation=False` (the release's per-reference arithmetic), and as executed
  (`conv_algorithm='auto'`: Winograd 3x3 convolutions on CPU, fewer multiplications);
- PyTorch: counted by hand with forward hooks on every Conv2d / Linear of the mirror.

Run (about 15 minutes on the 2-core CPU):
  .venv/bin/python benchmarks/bench_models.py --refs 25 --batches 1 8 --lm-batch 8
Prints a table and, with `--json PATH`, writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the PyTorch mirrors (tests/torch_mirror)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402

from ip_lap_jax import conversion  # noqa: E402
from ip_lap_jax.models import registry
from ip_lap_jax.models.landmark_generator import LandmarkGenerator  # noqa: E402
from ip_lap_jax.models.renderer import Renderer  # noqa: E402
from torch_mirror.common import randomize_batchnorm_stats, save_official_checkpoint  # noqa: E402
from torch_mirror.landmark_generator import Landmark_generator  # noqa: E402
from torch_mirror.renderer import RendererTorch  # noqa: E402


def _channels_first(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, -3)))


def _channels_last(x: torch.Tensor) -> np.ndarray:
  return np.moveaxis(x.numpy(), -3, -1)


def _converted(mirror: torch.nn.Module, model: str) -> dict:
  """Mirror weights -> official checkpoint on disk -> Flax variables."""
  with tempfile.TemporaryDirectory() as tmp:
    path = pathlib.Path(tmp) / f"{model}.pth"
    save_official_checkpoint(mirror, path)
    state_dict = conversion.read_torch_checkpoint(path)
  main = conversion.split_state_dict(state_dict, model)["variables"]
  variables = conversion.state_dict_to_variables(main, registry.official_template(model))
  return jax.tree_util.tree_map(jnp.asarray, variables)


def _jax_flops(fn: Callable, *args) -> float:
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX returns one dict per computation
    cost = cost[0]
  return float(cost["flops"])


def _torch_flops(module: torch.nn.Module, run: Callable[[], Any]) -> tuple[float, Any]:
  """(sum of 2 * MACs over the Conv2d / Linear calls made by `run()`, its output)."""
  total = [0.0]

  def hook(layer, inputs, output):
    if isinstance(layer, torch.nn.Conv2d):
      kh, kw = layer.kernel_size
      total[0] += 2.0 * output.numel() * (layer.in_channels // layer.groups) * kh * kw
    else:
      total[0] += 2.0 * output.numel() * layer.in_features

  handles = [m.register_forward_hook(hook) for m in module.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
  try:
    with torch.no_grad():
      output = run()
  finally:
    for h in handles:
      h.remove()
  return total[0], output


def _time_alternately(run_jax: Callable[[], Any], run_torch: Callable[[], Any], repeats: int,
                      budget_s: float) -> tuple[list[float], list[float]]:
  jax_times, torch_times = [], []
  start = time.perf_counter()
  for _ in range(repeats):
    for fn, times in ((run_jax, jax_times), (run_torch, torch_times)):
      t0 = time.perf_counter()
      fn()
      times.append(time.perf_counter() - t0)
    if time.perf_counter() - start > budget_s:
      break
  return jax_times, torch_times


def _first_call(apply: Callable, *args) -> tuple[Any, float]:
  """(output, seconds) of the first call of a jitted function: compile + run."""
  t0 = time.perf_counter()
  out = jax.block_until_ready(apply(*args))
  return out, time.perf_counter() - t0


def _speed_fields(run_jax: Callable[[], Any], run_torch: Callable[[], Any], batch: int,
                  repeats: int, budget_s: float) -> dict:
  """Per-frame times of both frameworks (best of the repeats) and their ratios."""
  jax_times, torch_times = _time_alternately(run_jax, run_torch, repeats, budget_s)
  jax_ms = 1e3 * min(jax_times) / batch
  torch_ms = 1e3 * min(torch_times) / batch
  return {
      "jax_ms_per_frame": jax_ms, "torch_ms_per_frame": torch_ms, "speedup": torch_ms / jax_ms,
      "speedup_median": statistics.median(torch_times) / statistics.median(jax_times),
      "jax_times_s": jax_times, "torch_times_s": torch_times,
  }


def bench_renderer(refs: int, batch: int, repeats: int, budget_s: float,
                   mirror: RendererTorch, variables: dict) -> dict:
  rng = np.random.default_rng(0)
  face = rng.random((batch, 128, 128, 3), np.float32)
  sketches = rng.random((batch, 5, 128, 128, 3), np.float32)
  ref_images = rng.random((batch, refs, 128, 128, 3), np.float32)
  ref_sketches = rng.random((batch, refs, 128, 128, 3), np.float32)
  mels = rng.uniform(-4, 4, (batch, 80, 16, 1)).astype(np.float32)
  jax_inputs = tuple(jnp.asarray(a) for a in (face, sketches, ref_images, ref_sketches, mels))
  torch_inputs = (_channels_first(face)[:, None], _channels_first(sketches),
                  _channels_first(ref_images), _channels_first(ref_sketches),
                  _channels_first(mels)[:, None])

  model = registry.build(registry.official_spec("renderer"))  # as inference builds it
  apply = jax.jit(lambda v, *a: model.apply(v, *a, train=False))
  jax_out, compile_s = _first_call(apply, variables, *jax_inputs)

  def run_torch():
    with torch.no_grad():
      return mirror(*torch_inputs)

  # The warm-up call also counts the arithmetic (hooks cost little next to the convs).
  torch_flops, torch_out = _torch_flops(mirror, run_torch)
  err = max(float(np.max(np.abs(np.asarray(j) - _channels_last(t))))
            for j, t in zip(jax_out, torch_out))
  speed = _speed_fields(lambda: jax.block_until_ready(apply(variables, *jax_inputs)), run_torch,
                        batch, repeats, budget_s)

  def flops_of(shared: bool, algorithm: str = "direct") -> float:
    m = Renderer(shared_modulation=shared, conv_algorithm=algorithm)
    return _jax_flops(lambda v, *a: m.apply(v, *a, train=False), variables, *jax_inputs)

  return {
      "model": "renderer", "refs": refs, "batch": batch, **speed, "jax_compile_s": compile_s,
      "max_abs_diff": err,
      "gflop_per_frame_jax_shared": flops_of(True) / batch / 1e9,
      "gflop_per_frame_jax_per_reference": flops_of(False) / batch / 1e9,
      "gflop_per_frame_jax_executed": flops_of(True, "auto") / batch / 1e9,
      "gflop_per_frame_torch_hooks": torch_flops / batch / 1e9,
  }


def bench_landmark_generator(batch: int, repeats: int, budget_s: float) -> dict:
  torch.manual_seed(0)
  mirror = randomize_batchnorm_stats(Landmark_generator(), seed=1).eval()
  variables = _converted(mirror, "landmark_generator")
  rng = np.random.default_rng(0)
  t, nl = 5, 15
  mels = rng.uniform(-4, 4, (batch, t, 1, 80, 16)).astype(np.float32)
  pose = rng.random((batch, t, 2, 74), np.float32)
  ref_pose = rng.random((batch, nl, 2, 74), np.float32)
  ref_content = rng.random((batch, nl, 2, 57), np.float32)
  torch_inputs = tuple(map(torch.from_numpy, (mels, pose, ref_pose, ref_content)))
  jax_inputs = (jnp.asarray(mels.transpose(0, 1, 3, 4, 2)), jnp.asarray(pose.transpose(0, 1, 3, 2)),
                jnp.asarray(ref_pose.transpose(0, 1, 3, 2)),
                jnp.asarray(ref_content.transpose(0, 1, 3, 2)))
  model = LandmarkGenerator()
  fn = lambda v, *a: model.apply(v, *a, train=False)  # noqa: E731
  apply = jax.jit(fn)
  jax_out, compile_s = _first_call(apply, variables, *jax_inputs)

  def run_torch():
    with torch.no_grad():
      return mirror(*torch_inputs)

  torch_out = run_torch().numpy().transpose(0, 2, 1).reshape(batch, t, 57, 2)
  err = float(np.max(np.abs(np.asarray(jax_out) - torch_out)))
  # One landmark-generator window yields the content of T frames, but inference uses one
  # window per output frame: "per frame" here means per window.
  speed = _speed_fields(lambda: jax.block_until_ready(apply(variables, *jax_inputs)), run_torch,
                        batch, repeats, budget_s)
  return {
      "model": "landmark_generator", "batch": batch, "T": t, "Nl": nl, **speed,
      "jax_compile_s": compile_s, "max_abs_diff": err,
      "gflop_per_frame_jax": _jax_flops(fn, variables, *jax_inputs) / batch / 1e9,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--refs", type=int, default=25, help="N reference images")
  parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="renderer batches")
  parser.add_argument("--lm-batch", type=int, default=8, help="landmark generator batch (0: skip)")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--budget-s", type=float, default=240.0,
                      help="per configuration: stop repeating after this many seconds")
  parser.add_argument("--json", type=pathlib.Path, default=None)
  args = parser.parse_args()
  torch.set_num_threads(len(os.sched_getaffinity(0)))  # the cores this process may use
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
        f"with {torch.get_num_threads()} threads, {os.cpu_count()} CPUs", flush=True)

  results = []
  if args.lm_batch:
    results.append(bench_landmark_generator(args.lm_batch, args.repeats, args.budget_s))
    print(json.dumps(results[-1]), flush=True)
  torch.manual_seed(0)
  mirror = randomize_batchnorm_stats(RendererTorch(), seed=1).eval()
  variables = _converted(mirror, "renderer")
  for batch in args.batches:
    results.append(bench_renderer(args.refs, batch, args.repeats, args.budget_s, mirror, variables))
    print(json.dumps(results[-1]), flush=True)

  print("\nmodel               N   B  jax ms/frame  torch ms/frame  speedup (median)  max|diff|  GFLOP/frame")
  for r in results:
    if r["model"] == "renderer":
      flops = (f"jax {r['gflop_per_frame_jax_shared']:.0f} (per-ref "
               f"{r['gflop_per_frame_jax_per_reference']:.0f}, executed "
               f"{r['gflop_per_frame_jax_executed']:.0f}), torch {r['gflop_per_frame_torch_hooks']:.0f}")
      n = r["refs"]
    else:
      flops, n = f"jax {r['gflop_per_frame_jax']:.2f}", "-"
    print(f"{r['model']:<18} {n!s:>3} {r['batch']:>3} {r['jax_ms_per_frame']:>12.1f} "
          f"{r['torch_ms_per_frame']:>15.1f} {r['speedup']:>7.2f}x ({r['speedup_median']:.2f}x) "
          f"{r['max_abs_diff']:>9.2e}  {flops}")
  if args.json:
    args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
  main()
