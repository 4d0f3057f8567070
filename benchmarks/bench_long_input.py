"""Long inputs: peak memory and output length for 10 s and 60 s of speech on a 9 s template.

Memory must not grow with the audio's length: frames are streamed (`inference.frames`,
`inference.pipeline`), and what is held per output frame is small (mel chunks, 57
content points for `InferenceResult.landmarks`). Each audio length runs in its own
process so that the peaks do not mix:

1. a warm-up run on 0.4 s of the same speech compiles both models (the same shapes as
   the measured run) and fills the detection cache;
2. the measured run, optionally with `tracemalloc` on (Python and numpy allocations:
   numpy reports its buffers to it), and the process's peak resident set (`getrusage` maxrss, which
   also counts XLA's buffers, the decoder, the encoder and MediaPipe) read before and
   after it.

Reported per length: maxrss after the warm-up, maxrss after the run (the process's
peak), the run's tracemalloc peak, and the output's frames against the audio's length.
maxrss is a high-water mark: a run that stays below the warm-up's peak does not move
it, so "growth" is the difference of peaks, not of current use.

Tiny render sizes keep it a CPU benchmark (render 16 px, N=2, the random-weight
checkpoint of the tests); the memory that could grow with length is outside the models.

Run (add --tracemalloc for the Python/numpy allocation peak too):
  .venv/bin/python benchmarks/bench_long_input.py --lengths 10 60 --json /tmp/long.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the PyTorch mirrors (tests/torch_mirror)

from ip_lap_jax import inference  # noqa: E402
from ip_lap_jax.constants import FPS  # noqa: E402
from ip_lap_jax.data import synthetic  # noqa: E402
from ip_lap_jax.media import audio as audio_lib  # noqa: E402
from ip_lap_jax.media import video  # noqa: E402


def _maxrss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def prepare(root: pathlib.Path, template_s: float, audio_s: float) -> None:
  """Random checkpoint, a `template_s` talking clip and `audio_s` of speech under root."""
  sys.path.insert(0, str(REPO))
  from benchmarks.bench_infer import make_checkpoint
  from tests import media_fixtures

  make_checkpoint(root)
  media = media_fixtures.GeneratedMedia(root)
  frames = media.face_frames(int(round(template_s * synthetic.FPS)), (160, 160), seed=0)
  with video.VideoWriter(root / "template.mp4", fps=synthetic.FPS) as writer:
    for frame in frames:
      writer.write(frame)
  audio_lib.save_wav(root / "speech.wav", synthetic.synth_speech(audio_s, seed=11))


def measure(root: pathlib.Path, seconds: float, batch_size: int, trace: bool) -> dict:
  """One length, in this process (the child): warm-up, then the measured run.

  `trace`: tracemalloc on during the run (it slows every Python allocation several-fold).
  """
  wav = audio_lib.load_audio(root / "speech.wav")
  for name, length in (("warm", 0.4), ("run", seconds)):
    audio_lib.save_wav(root / f"{name}_{seconds:g}.wav", wav[:int(length * audio_lib.SAMPLE_RATE)])
  options = inference.InferenceOptions(render_size=16, num_refs=2, batch_size=batch_size,
                                       progress=False, cache_dir=str(root / "cache"))
  syncer = inference.LipSyncer(root / "ckpt", options)
  syncer.run(root / "template.mp4", root / f"warm_{seconds:g}.wav", root / f"warm_{seconds:g}.mp4")
  rss_warm = _maxrss_mib()
  if trace:
    tracemalloc.start()
  start = time.perf_counter()
  out = root / f"out_{seconds:g}.mp4"
  result = syncer.run(root / "template.mp4", root / f"run_{seconds:g}.wav", out)
  wall = time.perf_counter() - start
  traced_peak = float("nan")
  if trace:
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
  info = video.probe(out)
  return {"audio_s": seconds, "frames": info.num_frames, "video_s": info.num_frames / FPS,
          "expected_frames": int(round(seconds * FPS)), "template_frames": result.template_frames,
          "maxrss_after_warmup_mib": rss_warm, "maxrss_after_run_mib": _maxrss_mib(),
          "tracemalloc_peak_mib": traced_peak / 2**20, "run_s": wall}


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--lengths", type=float, nargs="+", default=[10.0, 60.0])
  p.add_argument("--template-s", type=float, default=9.0)
  p.add_argument("--batch-size", type=int, default=8)
  p.add_argument("--tracemalloc", action="store_true",
                 help="also report the run's tracemalloc peak (much slower runs)")
  p.add_argument("--json", default=None)
  p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # root of a prepared run
  args = p.parse_args(argv)
  if args.child is not None:
    print(json.dumps(measure(pathlib.Path(args.child), args.lengths[0], args.batch_size,
                             args.tracemalloc)))
    return 0
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp)
    prepare(root, args.template_s, max(args.lengths))
    for seconds in args.lengths:
      proc = subprocess.run([sys.executable, __file__, "--child", str(root), "--lengths",
                             str(seconds), "--batch-size", str(args.batch_size)]
                            + (["--tracemalloc"] if args.tracemalloc else []),
                            capture_output=True, text=True, check=True)
      row = json.loads(proc.stdout.strip().splitlines()[-1])
      rows.append(row)
      print(f"{row['audio_s']:5.0f} s audio: {row['frames']} frames ({row['video_s']:.2f} s, "
            f"expected {row['expected_frames']}), maxrss {row['maxrss_after_warmup_mib']:.0f} MiB "
            f"after warm-up, {row['maxrss_after_run_mib']:.0f} MiB after the run, tracemalloc "
            f"peak {row['tracemalloc_peak_mib']:.1f} MiB, run {row['run_s']:.0f} s", flush=True)
  if len(rows) >= 2:
    first, last = rows[0], rows[-1]
    growth = last["maxrss_after_run_mib"] / first["maxrss_after_run_mib"] - 1
    traced = last["tracemalloc_peak_mib"] / first["tracemalloc_peak_mib"] - 1
    print(f"peak RSS growth {first['audio_s']:g} s -> {last['audio_s']:g} s: {100 * growth:+.1f}%"
          + (f"; tracemalloc peak growth: {100 * traced:+.1f}%" if args.tracemalloc else ""))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
