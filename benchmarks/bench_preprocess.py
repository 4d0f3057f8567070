"""Dataset preprocessing throughput and peak memory: this port vs the release's approach.

    .venv/bin/python benchmarks/bench_preprocess.py [--workers 2] [--copies 2]
        [--long-seconds 20] [--repeats 2] [--keep DIR]

Input: `--copies` copies (symlinks) of each 25 fps sample clip with audio from
../shared/data (face_2.mp4 844x844, face_3.mp4 590x590, 5 s each) as
`<speaker>/<clip>.mp4`, plus one `--long-seconds` clip written from face_2's frames
played back and forth (memory grows with clip length in the release's approach).

Both approaches run in the same invocation, each in a fresh child process whose process
tree's memory is sampled every 100 ms: peak of the sum of PSS (resident memory with
shared pages divided among their sharers, so forked or spawned workers are not
counted twice):
- release: the release's `preprocess_video.py` restated (a thread pool of `--workers`
  threads over clips; each clip read completely into memory with cv2.VideoCapture; per
  frame Face Mesh, Python loops over the 478 points, the MediaPipe drawing routine on a
  float64 canvas edge by edge, float64 sketch PNG), followed by its separate audio pass
  (`preprocess_audio.py`: a process pool; here with this port's mel code, so the audio
  arithmetic is equal).
- ours: `ip_lap_jax.data.preprocess.run` with `--workers` processes, one streaming pass per
  clip (frames and audio).
Frames/s = 25 fps frames processed / wall time, start-up included for both; runs are
interleaved `--repeats` times and the best is reported. CPU seconds of the whole
process tree are reported too: on a shared machine they are the steadier comparison.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import math
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
# The sample folder, as in the tests: $IP_LAP_SAMPLE_DATA, default ../shared/data.
DATA = pathlib.Path(os.environ.get("IP_LAP_SAMPLE_DATA") or REPO.parent / "shared" / "data")
sys.path.insert(0, str(REPO))


# --- The release's approach, restated -------------------------------------------

def _release_video_clip(mp4_path: str, out_root: pathlib.Path) -> int:
  import cv2
  import mediapipe as mp
  import numpy as np

  from ip_lap_jax.face import landmarks as L

  all_idx, pose_idx = set(L.ALL_INDICES.tolist()), set(L.POSE_INDICES.tolist())
  content_idx = all_idx - pose_idx
  name = "/".join(mp4_path[:-4].split("/")[-2:])
  dirs = {k: out_root / k / name for k in ("faces", "sketches", "landmarks")}
  with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
                                       refine_landmarks=True,
                                       min_detection_confidence=0.5) as face_mesh:
    cap = cv2.VideoCapture(mp4_path)
    frames = []
    while True:  # the whole clip in memory first, as the release
      ok, frame = cap.read()
      if not ok:
        break
      frames.append(frame)
    cap.release()
    for frame_idx, full in enumerate(frames):
      h, w = full.shape[:2]
      res = face_mesh.process(cv2.cvtColor(full, cv2.COLOR_BGR2RGB))
      if not res.multi_face_landmarks:
        continue
      lms = res.multi_face_landmarks[0]
      x_min, x_max, y_min, y_max = 999, -999, 999, -999
      pose, content = [], []
      for idx, lm in enumerate(lms.landmark):
        if idx in all_idx:
          x_min, x_max = min(x_min, lm.x), max(x_max, lm.x)
          y_min, y_max = min(y_min, lm.y), max(y_max, lm.y)
        if idx in pose_idx:
          pose.append((idx, lm.x, lm.y))
        if idx in content_idx:
          content.append((idx, lm.x, lm.y))
      x_min, x_max = max(x_min - 5 / w, 0), min(x_max + 5 / w, 1)
      y_min, y_max = max(y_min - 5 / h, 0), min(y_max + 5 / h, 1)
      face = cv2.resize(full[int(y_min * h):int(y_max * h), int(x_min * w):int(x_max * w)],
                        (128, 128))
      norm = lambda lst: [(i, (x - x_min) / (x_max - x_min), (y - y_min) / (y_max - y_min))
                          for i, x, y in lst]
      pose, content = norm(pose), norm(content)
      for i, x, y in pose + content:
        lms.landmark[i].x, lms.landmark[i].y = x, y
      for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
      np.save(dirs["landmarks"] / str(frame_idx),
              {"pose_landmarks": pose, "content_landmarks": content})
      hn, wn = (y_max - y_min) * h, (x_max - x_min) * w
      canvas = np.zeros((int(hn * 128 / min(hn, wn)), int(wn * 128 / min(hn, wn)), 3))
      rows, cols = canvas.shape[:2]
      px = {}
      for idx, lm in enumerate(lms.landmark):  # MediaPipe's drawing_utils routine
        valid = lambda v: (v > 0 or math.isclose(0, v)) and (v < 1 or math.isclose(1, v))
        if valid(lm.x) and valid(lm.y):
          px[idx] = (min(math.floor(lm.x * cols), cols - 1),
                     min(math.floor(lm.y * rows), rows - 1))
      for a, b in L.CONNECTIONS:
        if a in px and b in px:
          cv2.line(canvas, px[a], px[b], (224, 224, 224), 1)
      canvas = cv2.resize(canvas, (128, 128))
      cv2.imwrite(str(dirs["sketches"] / f"{frame_idx}.png"), canvas)
      cv2.imwrite(str(dirs["faces"] / f"{frame_idx}.png"), face)
  return len(frames)


def _release_audio_clip(mp4_path: str, out_root: pathlib.Path) -> None:
  import numpy as np

  from ip_lap_jax.media import audio

  name = "/".join(mp4_path[:-4].split("/")[-2:])
  out = out_root / "audio" / name
  out.mkdir(parents=True, exist_ok=True)
  wav = audio.load_audio(mp4_path)
  audio.save_wav(out / "audio.wav", wav)
  np.save(out / "audio", audio.melspectrogram(audio.load_audio(out / "audio.wav")).T)


def run_release(input_dir: pathlib.Path, out_root: pathlib.Path, workers: int) -> int:
  paths = sorted(str(p) for p in input_dir.glob("*/*.mp4"))
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    frames = sum(pool.map(lambda p: _release_video_clip(p, out_root), paths))
  with concurrent.futures.ProcessPoolExecutor(workers) as pool:
    list(pool.map(_release_audio_clip, paths, itertools.repeat(out_root)))
  return frames


def run_ours(input_dir: pathlib.Path, out_root: pathlib.Path, workers: int) -> int:
  from ip_lap_jax.data import preprocess

  summary = preprocess.run(input_dir, out_root, workers=workers, progress=False)
  if summary["failed"]:
    raise RuntimeError(f"clips failed: {summary['failed']}")
  return summary["this_run"]["frames"]


# --- Measurement ----------------------------------------------------------------

def _tree_sample(pid: int, cpu_seen: dict[int, float]) -> int:
  """PSS of the process tree under `pid` (bytes); records each process's CPU seconds."""
  import psutil

  try:
    root = psutil.Process(pid)
    procs = [root] + root.children(recursive=True)
  except psutil.NoSuchProcess:
    return 0
  total = 0
  for p in procs:
    try:
      # PSS: shared pages (libraries, fork-inherited memory) are split between the
      # processes sharing them, so the sum over the tree is not inflated.
      total += p.memory_full_info().pss
      t = p.cpu_times()
      cpu_seen[p.pid] = t.user + t.system
    except (psutil.NoSuchProcess, psutil.AccessDenied):
      pass
  return total


def measure(mode: str, input_dir: pathlib.Path, out_root: pathlib.Path, workers: int
            ) -> dict:
  """Runs one approach in a child process; wall time, frames, peak tree PSS."""
  cmd = [sys.executable, __file__, "--child", mode, "--input", str(input_dir),
         "--out", str(out_root), "--workers", str(workers)]
  cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
  start = time.perf_counter()
  child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
  peak = 0
  done = threading.Event()

  cpu_seen: dict[int, float] = {}

  def sample():
    nonlocal peak
    while not done.is_set():
      peak = max(peak, _tree_sample(child.pid, cpu_seen))
      time.sleep(0.1)  # reading smaps costs CPU; peaks last far longer than this

  sampler = threading.Thread(target=sample, daemon=True)
  sampler.start()
  out, _ = child.communicate()
  wall = time.perf_counter() - start
  done.set()
  sampler.join()
  if child.returncode:
    raise RuntimeError(f"{mode} failed with exit code {child.returncode}")
  cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
  # CPU time of the whole tree; unlike wall time it barely depends on what else the
  # machine runs. rusage misses processes nobody reaps (fork-server workers), sampling
  # misses up to 0.1 s per process: both are lower bounds, take the larger.
  reaped = ((cpu_after.ru_utime - cpu_before.ru_utime)
            + (cpu_after.ru_stime - cpu_before.ru_stime))
  cpu = max(reaped, sum(cpu_seen.values()))
  frames = json.loads(out.strip().splitlines()[-1])["frames"]
  return {"mode": mode, "frames": frames, "seconds": round(wall, 2),
          "frames_per_s": round(frames / wall, 2), "cpu_s": round(cpu, 2),
          "frames_per_cpu_s": round(frames / cpu, 2), "peak_pss_mib": round(peak / 2**20)}


def make_input(root: pathlib.Path, copies: int, long_seconds: float) -> pathlib.Path:
  from ip_lap_jax.media import video

  src = root / "in"
  for c in range(copies):
    for name in ("face_2", "face_3"):
      d = src / f"spk{c}"
      d.mkdir(parents=True, exist_ok=True)
      (d / f"{name}.mp4").symlink_to(DATA / f"{name}.mp4")
  if long_seconds > 0:
    frames = video.read_frames(DATA / "face_2.mp4")
    cycle = frames + frames[::-1]
    n = int(long_seconds * 25)
    (src / "long").mkdir(parents=True, exist_ok=True)
    with video.VideoWriter(src / "long" / "long.mp4", fps=25,
                           audio_path=DATA / "audio2.wav", preset="ultrafast") as w:
      for k in range(n):
        w.write(cycle[k % len(cycle)])
  return src


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--copies", type=int, default=2)
  parser.add_argument("--long-seconds", type=float, default=20.0)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--keep", default=None, help="work folder to keep (default: temp)")
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--input", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    run = run_release if args.child == "release" else run_ours
    frames = run(pathlib.Path(args.input), pathlib.Path(args.out), args.workers)
    print(json.dumps({"frames": frames}))
    return
  with tempfile.TemporaryDirectory(dir=args.keep) as tmp:
    root = pathlib.Path(tmp)
    input_dir = make_input(root, args.copies, args.long_seconds)
    runs = {"release": [], "ours": []}
    for _ in range(args.repeats):  # interleaved, so load changes hit both alike
      for mode in runs:
        out = root / f"out_{mode}"
        runs[mode].append(measure(mode, input_dir, out, args.workers))
        shutil.rmtree(out)
  print(json.dumps(runs, indent=1))
  best = {m: max(r, key=lambda x: x["frames_per_s"]) for m, r in runs.items()}
  cpu = {m: min(x["cpu_s"] for x in r) for m, r in runs.items()}
  release, ours = best["release"], best["ours"]
  print(f"best of {args.repeats}: {release['frames_per_s']} vs {ours['frames_per_s']} frames/s, "
        f"speed-up {ours['frames_per_s'] / release['frames_per_s']:.2f}x; CPU time "
        f"{cpu['release']} vs {cpu['ours']} s ({cpu['release'] / cpu['ours']:.2f}x less); peak PSS "
        f"{max(x['peak_pss_mib'] for x in runs['release'])} MiB (release) vs "
        f"{max(x['peak_pss_mib'] for x in runs['ours'])} MiB (ours), "
        f"{args.workers} workers, {os.cpu_count()} cores")


if __name__ == "__main__":
  main()
