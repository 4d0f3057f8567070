"""End-to-end inference speed: this pipeline vs a per-frame pipeline built like the release's.

Both turn ../shared/data/129.mp4 (30 fps, 256x256, 9 s) plus the first `--seconds` of
audio2.wav into an mp4, with the same random weights (the PyTorch mirror's, converted for
JAX), at each N of `--refs`:

- ours: `ip_lap_jax.inference.LipSyncer` (batched windows, shared reference features and
  modulations, jitted fixed shapes, frames sharded over devices, threads overlapping
  decode / Face Mesh / drawing / encoding with the device, watermark on). A warm-up run
  on 0.2 s of audio compiles everything (same batch shapes; its time is printed); the
  timed run is then compiled but uses a fresh detection cache, so Face Mesh runs as on a
  template's first use.
- release-like: the structure of `inference_single.py`: all frames read into memory,
  Face Mesh twice per frame (one pass for boxes and lip openness, one for landmarks),
  then per output frame: the landmark generator on one window (batch 1), 5 sketches, the
  renderer at batch 1 (the mirror's per-reference loop, as the release's), paste-back,
  encode. PyTorch eval + no_grad, `torch.set_num_threads(<usable cores>)`. The release's
  second face detector for the paste mask is replaced by the same Face Mesh mask (the
  release's would only add time).

Run:
  .venv/bin/python benchmarks/bench_infer.py --seconds 1 --refs 25 3
  (on the 2-core CPU the N=25 runs are slow: `--seconds 0.4 --refs 25` renders 8 frames)
Prints one line per (N, pipeline) and a JSON summary with `--json PATH`.

Host only (`--host-only`): the whole pipeline with the models replaced by
`ip_lap_jax.inference.standin` (answers at once), so the figure is what the host can
feed an infinitely fast accelerator. Templates are generated (the synthetic talking
photo on a textured background, `--template-seconds` at 25 fps) at 256x256, 1280x720 and 1920x1080;
speech is synthetic, `--seconds` long. Each size runs in a subprocess pinned with
`taskset` to 1 and to 2 cores, first with an empty detection cache (Face Mesh runs),
then cached; watermark on, N = 25, render size 128, batch 8, default encoder settings.
Prints frames/s and the seconds per stage (summed over threads), so the next
bottleneck is visible:
  .venv/bin/python benchmarks/bench_infer.py --host-only --seconds 8 --json /tmp/host.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the PyTorch mirrors (tests/torch_mirror)

from ip_lap_jax.media import audio as audio_lib  # noqa: E402
from ip_lap_jax import inference  # noqa: E402
from ip_lap_jax.face import landmarks  # noqa: E402
from ip_lap_jax.face import paste  # noqa: E402
from ip_lap_jax.face import sketch  # noqa: E402
from ip_lap_jax.media import video  # noqa: E402

# The sample folder, as in the tests: $IP_LAP_SAMPLE_DATA, default ../shared/data.
DATA = pathlib.Path(os.environ.get("IP_LAP_SAMPLE_DATA") or REPO.parent / "shared" / "data")


def make_checkpoint(root: pathlib.Path):
  """Random mirror weights saved in the release's format, converted; returns the modules."""
  import torch

  from ip_lap_jax import convert
  from torch_mirror.common import randomize_batchnorm_stats, save_official_checkpoint
  from torch_mirror.landmark_generator import Landmark_generator
  from torch_mirror.renderer import RendererTorch

  torch.manual_seed(0)
  modules = {"landmark_generator": Landmark_generator(), "renderer": RendererTorch()}
  for name, module in modules.items():
    randomize_batchnorm_stats(module, seed=1)
    module.eval()
    save_official_checkpoint(module, root / f"{name}.pth")
    convert.convert_checkpoint(root / f"{name}.pth", root / "ckpt" / name)
  return modules


def release_like(modules, template: str, speech: str, output: str, num_refs: int,
                 num_landmark_refs: int = 15) -> int:
  """The release's per-frame structure with the PyTorch mirror; returns frames written."""
  import torch

  lg, renderer = modules["landmark_generator"], modules["renderer"]
  frames = video.read_frames(template)  # all in memory, as the release
  h, w = frames[0].shape[:2]
  boxes, openness, poses, contents, all_points = [], [], [], [], []
  with landmarks.FaceMeshDetector() as detector:
    for frame in frames:  # pass 1: boxes and lip openness
      points = detector.detect(frame)
      boxes.append(landmarks.face_box(points, 25, (h, w)))
      openness.append(landmarks.lip_openness(points))
    for frame, box in zip(frames, boxes):  # pass 2: landmarks, as the release does again
      points = detector.detect(frame)
      p, c = landmarks.pose_content(landmarks.normalize_to_box(
          points[landmarks.ALL_INDICES], box, pixel_grid=True))
      poses.append(p)
      contents.append(c)
      all_points.append(points[landmarks.ALL_INDICES])
  openness = np.array(openness)
  wav = audio_lib.load_audio(speech)
  chunks = audio_lib.inference_mel_chunks(audio_lib.melspectrogram(wav))
  num_out = inference.output_frame_count(wav.size)

  def crop(i):
    y1, y2, x1, x2 = boxes[i].pixel
    return cv2.resize(frames[i][y1:y2, x1:x2], (128, 128)).astype(np.float32) / 255.0

  def draw(pose, content, i):
    points = landmarks.content_and_pose_to_all(pose, content)
    return sketch.draw_sketch(points, boxes[i].pixel_hw)

  def chw(x):  # [..., H, W, C] images -> [..., C, H, W]
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(x, np.float32), -1, -3)))

  def xy_first(x):  # [..., P, 2] landmarks -> [..., 2, P]
    return torch.from_numpy(np.ascontiguousarray(np.swapaxes(np.asarray(x, np.float32), -1, -2)))

  lmk = inference.select_references(openness, num_landmark_refs)
  img = inference.select_references(openness, num_refs)
  nl_pose = xy_first(np.stack([poses[i] for i in lmk]))[None]  # (1, Nl, 2, 74)
  nl_content = xy_first(np.stack([contents[i] for i in lmk]))[None]
  ref_images = chw(np.stack([crop(i) for i in img]))[None]
  ref_sketches = chw(np.stack([draw(poses[i], contents[i], i) for i in img]))[None]
  length = len(frames)
  with video.VideoWriter(output, audio_path=speech) as writer, torch.no_grad():
    for window in range(num_out - inference.CENTRE):
      positions = inference.window_positions(window)
      idx = [int(inference.pingpong(p, length)) for p in positions]
      mels = chunks[inference.window_mel_indices(window, len(chunks))]
      t_mels = torch.from_numpy(mels[None, :, None].astype(np.float32))  # (1, T, 1, 80, 16)
      t_pose = xy_first(np.stack([poses[i] for i in idx]))[None]
      content = lg(t_mels, t_pose, nl_pose, nl_content)  # (T, 2, 57)
      content = content.permute(0, 2, 1).numpy()
      sketches = chw(np.stack([draw(poses[i], content[t], i) for t, i in enumerate(idx)]))[None]
      centre = idx[inference.CENTRE]
      face = chw(crop(centre))[None, None]
      generated, _ = renderer(face, sketches, ref_images, ref_sketches,
                              t_mels[:, inference.CENTRE][:, None])
      gen = (generated[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
      polygon = paste.mask_polygon(all_points[centre], (h, w))
      out = paste.paste_face(frames[centre], gen, boxes[centre].pixel, polygon)
      for _ in inference.window_outputs(window):
        writer.write(out)
  return num_out


HOST_SIZES = ("256x256", "1280x720", "1920x1080")


def make_template(path: pathlib.Path, height: int, width: int, seconds: float, seed: int = 0):
  """The synthetic talking photo (half the frame's shorter side) on a blurred-noise
  background, written as an H.264 mp4 at 25 fps."""
  from ip_lap_jax.data import synthetic

  actor = synthetic.TalkingPhoto.from_photo(synthetic.default_photo(256))
  clip = synthetic.make_clip(actor, seconds, seed)
  rng = np.random.default_rng(seed)
  noise = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
  background = cv2.resize(cv2.GaussianBlur(noise, (5, 5), 1.5), (width, height))
  size = min(height, width) // 2
  y, x = (height - size) // 2, (width - size) // 3
  with video.VideoWriter(path, fps=25, preset="veryfast") as writer:
    for face in clip.frames:
      frame = background.copy()
      frame[y:y + size, x:x + size] = cv2.resize(face, (size, size))
      writer.write(frame)


def host_run(template: str, speech: str, out_dir: str) -> dict:
  """One template, uncached then cached, with the stand-in models (a child process)."""
  from ip_lap_jax.inference import standin

  rows = {}
  cache = tempfile.mkdtemp(dir=out_dir)  # empty: the first run detects
  for label in ("uncached", "cached"):
    options = inference.InferenceOptions(progress=False, cache_dir=cache)
    model = standin.StandInPredictor(batch_size=options.batch_size, render_size=128,
                                     num_refs=options.num_refs)
    syncer = inference.LipSyncer.from_predictor(model, options)
    result = syncer.run(template, speech, os.path.join(out_dir, f"{label}.mp4"))
    assert result.detection_cached == (label == "cached")
    rows[label] = {"frames": result.num_frames, "seconds": result.seconds,
                   "fps": result.frames_per_second, "stages": result.stage_seconds}
  return rows


def host_only(args: argparse.Namespace) -> None:
  results = []
  with tempfile.TemporaryDirectory() as tmp_dir:
    tmp = pathlib.Path(tmp_dir)
    from ip_lap_jax.data import synthetic
    speech = tmp / "speech.wav"
    audio_lib.save_wav(speech, synthetic.synth_speech(args.seconds, 11, audio_lib.SAMPLE_RATE))
    print(f"load: {os.getloadavg()}; cores: {os.cpu_count()}", flush=True)
    for size in args.sizes:
      width, height = (int(v) for v in size.split("x"))
      template = tmp / f"template_{size}.mp4"
      make_template(template, height, width, args.template_seconds)
      for cores in args.cores:
        out = tmp / f"run_{size}_{cores}"
        out.mkdir()
        cpus = ",".join(str(c) for c in range(cores))
        proc = subprocess.run(
            ["taskset", "-c", cpus, sys.executable, __file__, "--host-child", str(template),
             str(speech), str(out)], capture_output=True, text=True)
        if proc.returncode:
          raise RuntimeError(f"{size} on {cores} cores failed:\n{proc.stderr[-3000:]}")
        rows = json.loads(proc.stdout.strip().splitlines()[-1])
        for label, row in rows.items():
          stages = ", ".join(f"{k} {v / row['frames'] * 1000:.1f}"
                             for k, v in sorted(row["stages"].items(), key=lambda kv: -kv[1]))
          print(f"{size:>9} cores={cores} {label:>8}: {row['frames']} frames in "
                f"{row['seconds']:.2f} s = {row['fps']:.1f} frames/s; ms/frame per stage "
                f"(summed over threads): {stages}", flush=True)
          results.append({"size": size, "cores": cores, "detection": label, **row})
  print(f"load: {os.getloadavg()}", flush=True)
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


def main() -> None:
  if len(sys.argv) == 5 and sys.argv[1] == "--host-child":
    print(json.dumps(host_run(*sys.argv[2:])))
    return
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seconds", type=float, default=1.0, help="audio length (25 frames/s)")
  parser.add_argument("--refs", type=int, nargs="+", default=[25, 3])
  parser.add_argument("--batch-size", type=int, default=8)
  parser.add_argument("--skip-release", action="store_true")
  parser.add_argument("--json", default=None)
  parser.add_argument("--host-only", action="store_true",
                      help="stand-in models: the host's frames/s (see the docstring)")
  parser.add_argument("--sizes", nargs="+", default=list(HOST_SIZES), help="--host-only: WxH")
  parser.add_argument("--template-seconds", type=float, default=2.0,
                      help="--host-only: template length (Face Mesh runs in one process per "
                           "core from video_mesh.MIN_FRAMES_PER_WORKER frames per core)")
  parser.add_argument("--cores", type=int, nargs="+", default=[1, 2],
                      help="--host-only: run pinned to the first N cores")
  args = parser.parse_args()
  if args.host_only:
    host_only(args)
    return

  import jax
  import torch

  torch.set_num_threads(len(os.sched_getaffinity(0)))  # the cores this process may use
  results = []
  with tempfile.TemporaryDirectory() as tmp_dir:
    tmp = pathlib.Path(tmp_dir)
    modules = make_checkpoint(tmp)
    speech = tmp / "speech.wav"
    wav = audio_lib.load_audio(DATA / "audio2.wav")
    audio_lib.save_wav(speech, wav[:int(round(args.seconds * audio_lib.SAMPLE_RATE))])
    short = tmp / "short.wav"
    audio_lib.save_wav(short, wav[:int(0.2 * audio_lib.SAMPLE_RATE)])
    template = str(DATA / "129.mp4")
    print(f"devices: {jax.devices()}; cpu threads: {os.cpu_count()}; "
          f"frames: {inference.output_frame_count(int(round(args.seconds * 16000)))}", flush=True)
    for n in args.refs:
      row = {"N": n, "seconds_audio": args.seconds}
      # Warm-up: a 0.2 s clip has the same batch shapes, so this compiles everything.
      options = inference.InferenceOptions(num_refs=n, batch_size=args.batch_size,
                                           progress=False, cache_dir=str(tmp / f"cache_{n}_a"))
      syncer = inference.LipSyncer(tmp / "ckpt", options)
      warm = syncer.run(template, short, tmp / f"warmup_{n}.mp4")
      row["warmup_s"] = warm.seconds
      print(f"N={n:2d} ours warm-up (compile + 1 batch): {warm.seconds:.1f} s", flush=True)
      # Timed: compiled, but a fresh detection cache, so Face Mesh runs as in a first use.
      options = dataclasses.replace(options, cache_dir=str(tmp / f"cache_{n}_b"))
      result = inference.LipSyncer(tmp / "ckpt", options).run(template, speech, tmp / f"ours_{n}.mp4")
      row["ours_s"] = result.seconds
      row["ours_fps"] = result.frames_per_second
      row["frames"] = result.num_frames
      print(f"N={n:2d} ours: {result.num_frames} frames in {result.seconds:.1f} s = "
            f"{result.frames_per_second:.3f} frames/s", flush=True)
      if not args.skip_release:
        start = time.perf_counter()
        frames = release_like(modules, template, str(speech), str(tmp / f"release_{n}.mp4"), n)
        seconds = time.perf_counter() - start
        row["release_s"] = seconds
        row["release_fps"] = frames / seconds
        row["speedup"] = row["ours_fps"] / row["release_fps"]
        print(f"N={n:2d} release-like: {frames} frames in {seconds:.1f} s = "
              f"{frames / seconds:.3f} frames/s; speedup {row['speedup']:.2f}x", flush=True)
      results.append(row)
  print(json.dumps(results, indent=2))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(results, indent=2) + "\n")

if __name__ == "__main__":
  main()
