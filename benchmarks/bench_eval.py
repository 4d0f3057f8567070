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

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import cv2  # noqa: E402
import jax  # noqa: E402
import python_speech_features  # noqa: E402
import torch  # noqa: E402
from torch_mirror import syncnet as mirror_lib  # noqa: E402

from ip_lap_jax import conversion  # noqa: E402
from ip_lap_jax.data import synthetic  # noqa: E402
from ip_lap_jax.models import registry  # noqa: E402
from ip_lap_jax.evaluation import lip_sync  # noqa: E402
from torch_mirror.common import randomize_batchnorm_stats  # noqa: E402


def _reference(model: mirror_lib.S, frames: np.ndarray, wav: np.ndarray) -> tuple[float, ...]:
  frames224 = np.stack([cv2.resize(f, (224, 224)) for f in frames])
  pcm = lip_sync.to_pcm16(wav)
  return mirror_lib.reference_lse(model, frames224, python_speech_features.mfcc(pcm, 16000),
                                  len(pcm), batch_size=20)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--clips", type=int, default=2)
  parser.add_argument("--seconds", type=float, default=4.0)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--json", default=None, help="also write the numbers here")
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
  print(json.dumps(result))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
  main()
