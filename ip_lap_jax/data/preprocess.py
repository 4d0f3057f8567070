"""Dataset preprocessing: videos -> the release's face / sketch / landmark / audio layout.

    python -m ip_lap_jax.preprocess --input DIR --output DIR [--workers N] [--pad 5]
        [--small-faces] [--face-root D --sketch-root D --landmark-root D --audio-root D]

Input: LRS2-like `<input>/<speaker>/<clip>.mp4` (any video extension in
`VIDEO_EXTENSIONS`); videos lying directly in `<input>` get the input folder's name as
their speaker. Output (`dataset_layout`): `faces/`, `sketches/`, `landmarks/`, `audio/`
under `--output`, or the four roots given explicitly.

What one clip costs and produces (one pass, streaming):
- the audio track -> 16 kHz mono `audio.wav` + mel `audio.npy` (M, 80) (the release's
  `preprocess_audio.py` step, folded in);
- every frame converted to 25 fps (`video.iter_frames`, never the whole clip in
  memory) -> one Face Mesh pass -> landmark file, 128x128 face crop (pad 5 px), sketch;
  frames without a face are skipped and listed (gaps in numbering, as the release).
  Frames are decoded straight to RGB (Face Mesh's order; only the crop is turned to
  BGR), on one decoder thread when the workers already fill the cores.

Workers are processes (forkserver, modules preloaded once), each with its own Face
Mesh; clips are distributed one at a time, largest file first. The release used a
thread pool, which the GIL serialises around MediaPipe's Python-side work. Nothing the
parent or the fork server imports loads JAX, scipy or librosa: they cost ~3 s of CPU,
paid before any worker could start.

Resumable: a clip is complete only once its marker `<output>/.preprocess_done/<speaker>/
<clip>.json` is written, after all its files; a clip without a marker is cleared and
redone. Failed clips are retried on the next run (their failure is deterministic and
cheap to find again). `<output>/preprocess_summary.json` lists the clips done (frames,
frames written, indices skipped for no face), the clips failed with a reason, and the
run's throughput. Bad input never stops the run: unreadable file, no audio, no video
frames, no face in any frame are each a failed clip with its reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import multiprocessing
import os
import pathlib
import shutil
import sys
import time
from typing import Any, Iterable

import cv2

from ip_lap_jax.constants import FPS
from ip_lap_jax.data import layout
from ip_lap_jax.face import landmarks
from ip_lap_jax.face import sketch
from ip_lap_jax.errors import MediaError

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg",
                              ".mpeg", ".flv", ".wmv"})
DONE_DIR = ".preprocess_done"
SUMMARY_NAME = "preprocess_summary.json"


@dataclasses.dataclass(frozen=True)
class ClipJob:
  """One input video and its `speaker/clip` name in the output layout."""
  path: str
  name: str


@dataclasses.dataclass
class ClipResult:
  """What a worker reports for one clip."""
  name: str
  path: str
  ok: bool
  frames: int = 0  # 25 fps frames decoded
  written: int = 0  # frames with a face (files written)
  skipped_no_face: list[int] = dataclasses.field(default_factory=list)
  reason: str = ""
  seconds: float = 0.0


def find_clips(input_dir: str | os.PathLike[str]) -> list[ClipJob]:
  """Videos at `<input>/<speaker>/<clip>.<ext>` and `<input>/<clip>.<ext>`, sorted.

  A flat video gets the input folder's own name as speaker. Two files with the same
  name but different extensions would collide in the output: the first (sorted) wins
  and the other is logged and ignored. Hidden files and folders are ignored.
  """
  root = pathlib.Path(input_dir).resolve()
  if not root.is_dir():
    raise FileNotFoundError(f"{input_dir}: input folder does not exist")

  def videos(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in VIDEO_EXTENSIONS)

  candidates = [(f"{root.name}/{p.stem}", p) for p in videos(root)]
  for speaker in sorted(p for p in root.iterdir() if p.is_dir()):
    if not speaker.name.startswith("."):
      candidates += [(f"{speaker.name}/{p.stem}", p) for p in videos(speaker)]
  jobs: dict[str, ClipJob] = {}
  for name, path in candidates:
    if name in jobs:
      log.warning("%s: same clip name as %s, ignored", path, jobs[name].path)
      continue
    jobs[name] = ClipJob(os.fspath(path), name)
  return sorted(jobs.values(), key=lambda j: j.name)


def _marker_path(output_dir: pathlib.Path, name: str) -> pathlib.Path:
  return output_dir / DONE_DIR / f"{name}.json"


def _write_json_atomic(path: pathlib.Path, data: Any) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  tmp.write_text(json.dumps(data, indent=1))
  os.replace(tmp, path)


def _clear_clip(roots: layout.DatasetRoots, name: str) -> None:
  for d in roots.clip_dirs(name):
    shutil.rmtree(d, ignore_errors=True)


def process_clip(job: ClipJob, detector: landmarks.FaceMeshDetector,
                 roots: layout.DatasetRoots, output_dir: pathlib.Path,
                 pad_px: float = landmarks.DATASET_PAD_PX, decoder_threads: int = 0
                 ) -> ClipResult:
  """Preprocesses one clip into the layout and writes its done marker.

  Never raises for bad input: problems come back as `ok=False` with a reason, and the
  clip's partial output is removed. `decoder_threads`: as `video.iter_frames`' threads.
  """
  from ip_lap_jax.media import audio
  from ip_lap_jax.media import video  # media I/O only where clips are processed

  start = time.perf_counter()
  result = ClipResult(job.name, job.path, ok=False)
  _clear_clip(roots, job.name)
  try:
    wav = audio.load_audio(job.path)
    if wav.size == 0:
      raise MediaError(job.path, "empty audio stream")
    face_dir, sketch_dir, landmark_dir, audio_dir = roots.clip_dirs(job.name)
    for d in (face_dir, sketch_dir, landmark_dir):
      d.mkdir(parents=True, exist_ok=True)
    # Frames come in RGB, the order MediaPipe takes: no full-frame conversion per frame;
    # only the 128 px face crop is turned to BGR for the PNG.
    for index, frame in enumerate(video.iter_frames(job.path, fps=FPS, pixel_format="rgb24",
                                                    threads=decoder_threads)):
      result.frames += 1
      points = detector.detect_rgb(frame)
      if points is None:
        result.skipped_no_face.append(index)
        continue
      found = landmarks.analyze(points, frame.shape[:2], pad_px)
      y1, y2, x1, x2 = found.box.pixel
      if y2 <= y1 or x2 <= x1 or min(found.box.float_hw) < 1.0:
        # A degenerate detection (box under a pixel): treat as no face.
        result.skipped_no_face.append(index)
        continue
      layout.save_landmarks(roots.landmark_path(job.name, index), found.pose,
                                    found.content)
      layout.write_png(
          roots.sketch_path(job.name, index),
          sketch.draw_sketch_uint8(found.all_points, found.box.float_hw))
      # Resizing works per channel, so crop-then-swap equals the BGR frame's crop.
      face_bgr = cv2.cvtColor(landmarks.crop_face(frame, found.box), cv2.COLOR_RGB2BGR)
      layout.write_png(roots.face_path(job.name, index), face_bgr)
      result.written += 1
    if result.frames == 0:
      raise MediaError(job.path, "zero-length clip: no video frames")
    if result.written == 0:
      raise MediaError(job.path, f"no face found in any of {result.frames} frames")
    audio_dir.mkdir(parents=True, exist_ok=True)
    audio.save_wav(roots.wav_path(job.name), wav)
    # The mel is computed from the stored 16-bit file read back, as the release computes
    # it from its extracted wav, so audio.npy and audio.wav always agree.
    layout.save_mel(roots.mel_path(job.name),
                            audio.melspectrogram(audio.load_audio(roots.wav_path(job.name))))
    result.ok = True
  except MediaError as e:
    result.reason = str(e)
  except Exception as e:  # pylint: disable=broad-except
    # Anything else a broken file can trigger (decoder or MediaPipe errors) must not
    # stop the run either; the type keeps the reason diagnosable.
    result.reason = f"{job.path}: {type(e).__name__}: {e}"
  result.seconds = time.perf_counter() - start
  if result.ok:
    _write_json_atomic(_marker_path(output_dir, job.name), _done_entry(result))
  else:
    _clear_clip(roots, job.name)
  return result


def _done_entry(result: ClipResult) -> dict[str, Any]:
  return {"path": result.path, "frames": result.frames, "written": result.written,
          "skipped_no_face": result.skipped_no_face, "seconds": round(result.seconds, 3)}


# --- Worker processes -----------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(roots: layout.DatasetRoots, output_dir: pathlib.Path,
                 pad_px: float, small_faces: bool, decoder_threads: int = 0) -> None:
  import cv2

  # One process per core already; OpenCV's own threads would only compete.
  cv2.setNumThreads(1)
  _WORKER.update(roots=roots, output_dir=output_dir, pad_px=pad_px,
                 decoder_threads=decoder_threads,
                 detector=landmarks.FaceMeshDetector(small_faces=small_faces))


def _decoder_threads(workers: int) -> int:
  """Decoder threads per clip: ffmpeg's choice (0) for a single worker; otherwise the
  cores left per worker, at least 1. Workers that fill the cores gain nothing from
  frame-threaded decoding, only its overhead (3 threads: ~20% more decoding CPU)."""
  if workers <= 1:
    return 0
  return max(1, (os.cpu_count() or 1) // workers)


def _work(job: ClipJob) -> ClipResult:
  return process_clip(job, _WORKER["detector"], _WORKER["roots"], _WORKER["output_dir"],
                      _WORKER["pad_px"], _WORKER["decoder_threads"])


# No scipy, librosa or JAX among these or their imports (audio restates the pieces it
# used from them): the fork server imports this list before any worker can start.
_PRELOAD = ("ip_lap_jax.data.preprocess", "ip_lap_jax.media.audio", "ip_lap_jax.media.video", "mediapipe")


def _results(jobs: list[ClipJob], workers: int, init_args: tuple) -> Iterable[ClipResult]:
  if workers <= 1:
    _init_worker(*init_args)
    try:
      yield from map(_work, jobs)
    finally:
      _WORKER.pop("detector").close()
    return
  ctx = multiprocessing.get_context("forkserver")
  # The fork server imports the heavy modules once; workers fork from it instead of
  # each paying ~1.5 s of imports. Nothing that starts threads (no MediaPipe graph)
  # exists before the fork: each worker builds its own detector.
  ctx.set_forkserver_preload(list(_PRELOAD))
  with ctx.Pool(workers, initializer=_init_worker, initargs=init_args) as pool:
    yield from pool.imap_unordered(_work, jobs, chunksize=1)


def _file_size(path: str) -> int:
  try:
    return os.path.getsize(path)
  except OSError:
    return 0


def _load_done(output_dir: pathlib.Path, jobs: list[ClipJob]) -> dict[str, dict]:
  done = {}
  for job in jobs:
    marker = _marker_path(output_dir, job.name)
    if marker.is_file():
      try:
        done[job.name] = json.loads(marker.read_text())
      except (OSError, ValueError):
        pass  # a damaged marker means the clip is redone
  return done


def run(input_dir: str | os.PathLike[str], output_dir: str | os.PathLike[str], *,
        workers: int | None = None, pad_px: float = landmarks.DATASET_PAD_PX,
        small_faces: bool = False, roots: layout.DatasetRoots | None = None,
        progress: bool = True) -> dict[str, Any]:
  """Preprocesses every clip under `input_dir`; returns (and writes) the summary.

  Args:
    workers: processes (default: all cores); <= 1 runs in this process.
    pad_px: face box padding in frame pixels (the release's dataset: 5).
    small_faces: `FaceMeshDetector(small_faces=True)` (full-range retry).
    roots: output roots (default `DatasetRoots.under(output_dir)`).
  """
  from tqdm import tqdm

  output_dir = pathlib.Path(output_dir).resolve()
  output_dir.mkdir(parents=True, exist_ok=True)
  roots = roots or layout.DatasetRoots.under(output_dir)
  if workers is None:
    workers = os.cpu_count() or 1
  jobs = find_clips(input_dir)
  done = _load_done(output_dir, jobs)
  pending = [j for j in jobs if j.name not in done]
  # Largest files first: a long clip started last would leave the other workers idle
  # at the end of the run.
  pending.sort(key=lambda j: -_file_size(j.path))
  log.info("%d clips found, %d already done, %d to do, %d workers", len(jobs), len(done),
           len(pending), workers)
  failed: dict[str, dict[str, str]] = {}
  frames = 0
  start = time.perf_counter()

  def summary() -> dict[str, Any]:
    elapsed = time.perf_counter() - start
    clips_run = len(failed) + sum(1 for n in done if done[n].get("_this_run"))
    return {
        "input": os.fspath(pathlib.Path(input_dir).resolve()),
        "roots": {k: os.fspath(v) for k, v in dataclasses.asdict(roots).items()},
        "pad_px": pad_px, "small_faces": small_faces,
        "clips_total": len(jobs), "clips_done": len(done), "clips_failed": len(failed),
        "frames_skipped_no_face": sum(len(d["skipped_no_face"]) for d in done.values()),
        "done": {n: {k: v for k, v in d.items() if not k.startswith("_")}
                 for n, d in sorted(done.items())},
        "failed": dict(sorted(failed.items())),
        "this_run": {"clips": clips_run, "frames": frames, "seconds": round(elapsed, 2),
                     "frames_per_s": round(frames / elapsed, 2) if elapsed else 0.0,
                     "clips_per_s": round(clips_run / elapsed, 3) if elapsed else 0.0,
                     "workers": workers},
    }

  summary_path = output_dir / SUMMARY_NAME
  bar = tqdm(total=len(pending), unit="clip", disable=not progress, dynamic_ncols=True)
  try:
    init_args = (roots, output_dir, pad_px, small_faces, _decoder_threads(workers))
    for i, result in enumerate(_results(pending, workers, init_args)):
      frames += result.frames
      if result.ok:
        done[result.name] = {**_done_entry(result), "_this_run": True}
      else:
        failed[result.name] = {"path": result.path, "reason": result.reason}
        log.warning("failed: %s", result.reason)
      bar.update(1)
      bar.set_postfix(frames_per_s=f"{frames / (time.perf_counter() - start):.1f}",
                      failed=len(failed))
      if i % 50 == 49:  # a summary survives an interruption of a long run
        _write_json_atomic(summary_path, summary())
  finally:
    bar.close()
    result_summary = summary()
    _write_json_atomic(summary_path, result_summary)
  return result_summary


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--input", required=True, help="folder of <speaker>/<clip> videos")
  parser.add_argument("--output", required=True, help="output folder (summary, markers)")
  parser.add_argument("--workers", type=int, default=None, help="processes (default: cores)")
  parser.add_argument("--pad", type=float, default=landmarks.DATASET_PAD_PX,
                      help="face box padding in pixels (release: 5)")
  parser.add_argument("--small-faces", action="store_true",
                      help="retry frames without a face with the full-range detector")
  for root in ("face", "sketch", "landmark", "audio"):
    parser.add_argument(f"--{root}-root", default=None,
                        help=f"{root} root (default: <output>/{root}{'s' if root in ('face', 'sketch', 'landmark') else ''})")
  parser.add_argument("--no-progress", action="store_true")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  roots = layout.DatasetRoots.under(pathlib.Path(args.output).resolve())
  roots = dataclasses.replace(roots, **{
      f"{r}_root": pathlib.Path(getattr(args, f"{r}_root")).resolve()
      for r in ("face", "sketch", "landmark", "audio") if getattr(args, f"{r}_root")})
  result = run(args.input, args.output, workers=args.workers, pad_px=args.pad,
               small_faces=args.small_faces, roots=roots, progress=not args.no_progress)
  print(json.dumps({k: result[k] for k in ("clips_total", "clips_done", "clips_failed",
                                           "frames_skipped_no_face", "this_run")}))
  for name, info in result["failed"].items():
    print(f"FAILED {name}: {info['reason']}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
