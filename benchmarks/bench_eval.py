"""LSE-C / LSE-D scoring speed: our batched path vs the original's loop, same clips.

Clips: `ip_lap_jax.data.synthetic` talking photos (frames 256 px BGR, 16 kHz speech).
Weights: a random SyncNet (PyTorch mirror `tests/torch_mirror/syncnet.py`, random
BatchNorm statistics, one bias shared by both heads' last layers), saved as
`syncnet_v2.model` and converted: both sides compute with the same numbers.
- ours: `LipSyncScorer(variables)(frames, wav)`: resize, MFCC, every window embedded in
  jitted batches (`--batch`), vectorised distances; timed after a warm-up clip of the
  same length (compile time printed apart).
- reference: what `SyncNetInstance.evaluate` runs after reading its files: cv2 resize,
  `python_speech_features.mfcc`, the mirror called window batch by window batch (20),
  `calc_pdist`'s per-window loop; `torch.set_num_threads(<usable cores>)`, no_grad.
The two are timed alternately, `--repeats` times; best of each is reported, and the
largest difference of the (LSE-C, LSE-D) numbers over the clips.

`--stages` adds milliseconds per piece (resize, MFCC, embeddings, distances; the lip stem
as a run of frames and as stacked windows, the towers; the reference's stem and lip
tower) for one batch of `--batch` windows.

Run: .venv/bin/python benchmarks/bench_eval.py --clips 2 --seconds 4
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import cv2  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import python_speech_features  # noqa: E402
import torch  # noqa: E402
from torch_mirror import syncnet as mirror_lib  # noqa: E402

from ip_lap_jax import conversion  # noqa: E402
from ip_lap_jax.data import synthetic  # noqa: E402
from ip_lap_jax.models import registry, syncnet  # noqa: E402
from ip_lap_jax.evaluation import lip_sync  # noqa: E402
from ip_lap_jax.evaluation import mfcc as mfcc_lib  # noqa: E402
from torch_mirror.common import randomize_batchnorm_stats  # noqa: E402


def _reference(model: mirror_lib.S, frames: np.ndarray, wav: np.ndarray) -> tuple[float, ...]:
  frames224 = np.stack([cv2.resize(f, (224, 224)) for f in frames])
  pcm = lip_sync.to_pcm16(wav)
  return mirror_lib.reference_lse(model, frames224, python_speech_features.mfcc(pcm, 16000),
                                  len(pcm), batch_size=20)


def best_ms(fn: Callable[[], Any], repeats: int = 3) -> float:
  """Best wall time of `fn()` (outputs made ready), after one warm-up call."""
  jax.block_until_ready(fn())
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - start)
  return round(best * 1000, 1)


def _stage_times(scorer: lip_sync.LipSyncScorer, model: mirror_lib.S, frames: np.ndarray,
                 wav: np.ndarray, windows: int) -> dict[str, float]:
  """Milliseconds per piece of the scorer, and the lip stem and tower of both sides, for
  one batch of `windows` windows of the clip."""
  frames224 = lip_sync.resize_frames(frames)
  pcm = lip_sync.to_pcm16(wav)
  cep = mfcc_lib.mfcc(pcm)
  count = lip_sync.num_windows(len(frames224), len(pcm))
  lip, aud = scorer.embeddings(frames224, cep, count)
  net, variables = scorer._model, scorer._variables  # pylint: disable=protected-access
  run = jnp.asarray(frames224[None, :windows + 4], jnp.float32)
  per_window = np.stack([frames224[i:i + 5] for i in range(windows)]).astype(np.float32)
  stem = syncnet.Conv3d(96, (5, 7, 7), (2, 2), conv_algorithm=net.conv_algorithm)
  stem_variables = {"params": variables["params"]["netcnnlip_0"]}
  apply_stem = jax.jit(stem.apply)
  apply_lip = jax.jit(lambda v, x: net.apply(v, x, method=syncnet.SyncNet.forward_lip))
  apply_aud = jax.jit(lambda v, x: net.apply(v, x, method=syncnet.SyncNet.forward_aud))
  mfcc_windows = jnp.zeros((windows, 13, 20, 1), jnp.float32)
  torch_windows = torch.from_numpy(np.ascontiguousarray(per_window.transpose(0, 4, 1, 2, 3)))
  return {
      "resize": best_ms(lambda: lip_sync.resize_frames(frames)),
      "mfcc": best_ms(lambda: mfcc_lib.mfcc(pcm)),
      "embeddings (whole clip)": best_ms(lambda: scorer.embeddings(frames224, cep, count)),
      "distances": best_ms(lambda: lip_sync.offset_distances(lip, aud)),
      "stem, run of frames": best_ms(lambda: apply_stem(stem_variables, run)),
      "stem, stacked windows": best_ms(lambda: apply_stem(stem_variables, jnp.asarray(per_window))),
      "lip tower": best_ms(lambda: apply_lip(variables, run)),
      "audio tower": best_ms(lambda: apply_aud(variables, mfcc_windows)),
      "reference stem": best_ms(lambda: model.netcnnlip[0](torch_windows)),
      "reference lip tower": best_ms(lambda: model.forward_lip(torch_windows)),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--clips", type=int, default=2)
  parser.add_argument("--seconds", type=float, default=4.0)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--json", default=None, help="also write the numbers here")
  parser.add_argument("--stages", action="store_true",
                      help="also time the pieces (ms, one batch of --batch windows, best of 3)")
  args = parser.parse_args()

  cores = len(os.sched_getaffinity(0))
  torch.set_num_threads(cores)
  torch.manual_seed(0)
  model = randomize_batchnorm_stats(mirror_lib.S(), seed=1).eval()
  with torch.no_grad():  # a shared embedding offset, so offsets score differently (LSE-C > 0)
    shared = 3.0 * torch.randn(1024)
    model.netfcaud[3].bias.copy_(shared)
    model.netfclip[3].bias.copy_(shared)
  with tempfile.TemporaryDirectory() as tmp:
    torch.save(model.state_dict(), pathlib.Path(tmp) / "syncnet_v2.model")
    variables = conversion.state_dict_to_variables(
        conversion.read_torch_checkpoint(pathlib.Path(tmp) / "syncnet_v2.model"),
        registry.official_template("syncnet"))
  actor = synthetic.TalkingPhoto.from_photo(synthetic.default_photo())
  clips = [synthetic.make_clip(actor, args.seconds, seed) for seed in range(args.clips)]
  clips = [(np.stack(c.frames), c.wav) for c in clips]
  scorer = lip_sync.LipSyncScorer(variables, batch_size=args.batch)

  t0 = time.perf_counter()
  scorer(*clips[0])
  compile_s = time.perf_counter() - t0
  ours_t, ref_t, diff = [], [], 0.0
  with torch.no_grad():
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      ours = [scorer(f, w) for f, w in clips]
      ours_t.append(time.perf_counter() - t0)
      t0 = time.perf_counter()
      ref = [_reference(model, f, w) for f, w in clips]
      ref_t.append(time.perf_counter() - t0)
  for o, r in zip(ours, ref):
    diff = max(diff, abs(o.lse_c - r[0]), abs(o.lse_d - r[1]))
    assert o.offset == r[2], (o, r)
  windows = sum(lip_sync.num_windows(len(f), len(w)) for f, w in clips)
  result = {
      "backend": jax.default_backend(), "cores": cores, "clips": args.clips,
      "seconds_per_clip": args.seconds, "windows": windows, "batch": args.batch,
      "ours_s": round(min(ours_t), 3), "reference_s": round(min(ref_t), 3),
      "speedup": round(min(ref_t) / min(ours_t), 2), "max_abs_diff": float(f"{diff:.3g}"),
      "first_call_s (compile + run)": round(compile_s, 2),
      "lse": [[round(o.lse_c, 4), round(o.lse_d, 4), o.offset] for o in ours],
  }
  if args.stages:
    with torch.no_grad():
      result["stages_ms"] = _stage_times(scorer, model, *clips[0], windows=args.batch)
  print(json.dumps(result))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
  main()
