"""Lip-sync a template video or photo to speech: `python infer.py --help`.

Example (checkpoints from `python -m ip_lap_jax.convert` or `python -m ip_lap_jax.export`):
  python infer.py --template face.mp4 --audio speech.wav --checkpoint ckpt/ --output out.mp4
  python infer.py --jobs pairs.csv --checkpoint ckpt/   # rows: template,audio,output

The library calls behind it are `ip_lap_jax.inference.LipSyncer(ckpt, options).run(...)`
and `.run_many(jobs)`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ip_lap_jax import inference
from ip_lap_jax.inference import jobs as jobs_lib
from ip_lap_jax.errors import MediaError

_EPILOG = """\
checkpoint directory layout: two saved models (model.json + variables/ each),
  CKPT/landmark_generator/
  CKPT/renderer/
each either converted from the release's weights,
  python -m ip_lap_jax.convert --src landmarkgenerator_checkpoint.pth --out CKPT/landmark_generator
  python -m ip_lap_jax.convert --src renderer_checkpoint.pth --out CKPT/renderer
or exported from a training run (--step latest|best|N),
  python -m ip_lap_jax.export --workdir RUN --out CKPT/renderer --step best
Every model is rebuilt from its own model.json, so any exported variant works (an LSTM
landmark generator, a no_warp or no_audio renderer, a renderer trained at another image
size, which then renders at that size), also mixed with official ones.

many clips: --jobs FILE.csv holds one `template,audio,output` row per clip (an optional
header row; paths relative to the CSV's folder). Models load and compile once; a row
that fails is reported and skipped; the exit status is 1 when any row failed.

watermark: every output carries an invisible watermark in its frames and a tag in the
container metadata; check it with `python -m ip_lap_jax.watermark detect OUT.mp4`.
--no-watermark turns both off.
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  defaults = inference.InferenceOptions()
  quiet = defaults.silence
  p = argparse.ArgumentParser(
      prog="infer.py", description="Template video/photo + speech -> lip-synced mp4 (25 fps).",
      epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--template", help="template video or a single photo")
  p.add_argument("--audio", help="speech: any audio file or a video's audio track")
  p.add_argument("--checkpoint", required=True, help="checkpoint directory (layout below)")
  p.add_argument("--output", help="output .mp4")
  p.add_argument("--jobs", help="CSV of template,audio,output rows: many clips in one call "
                                "(instead of --template/--audio/--output)")
  p.add_argument("--face", default=defaults.face,
                 help="which face speaks when there are several: largest (default), center, "
                      "K (the K-th from the left, from 0) or a pixel box x,y,w,h; it is "
                      "followed from frame to frame")
  p.add_argument("--silence", choices=("closed", "model"), default=quiet.mode,
                 help="closed (default): the mouth closes where the speech is silent; "
                      "model: the model's own landmarks everywhere (the release)")
  p.add_argument("--vad-aggressiveness", type=int, choices=(0, 1, 2, 3),
                 default=quiet.aggressiveness,
                 help="WebRTC VAD mode, 0 (most kept as speech) to 3 (default %(default)s)")
  p.add_argument("--min-silence", type=float, default=quiet.min_silence_s,
                 help="shortest pause, in seconds, in which the mouth closes "
                      "(default %(default)s)")
  p.add_argument("--silence-hangover", type=float, default=quiet.hangover_s,
                 help="seconds of speech kept around voiced audio (default %(default)s)")
  p.add_argument("--silence-ramp", type=int, default=quiet.ramp_frames,
                 help="frames over which the mouth closes and reopens (default %(default)s)")
  p.add_argument("--num-refs", type=int, default=defaults.num_refs,
                 help="reference images N (default %(default)s)")
  p.add_argument("--num-landmark-refs", type=int, default=defaults.num_landmark_refs,
                 help="reference landmark sets Nl (default %(default)s)")
  p.add_argument("--batch-size", type=int, default=defaults.batch_size,
                 help="frames per device call, rounded up to a multiple of the devices "
                      "(default %(default)s)")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default=defaults.dtype,
                 help="compute dtype (default %(default)s)")
  p.add_argument("--face-pad", type=int, default=defaults.face_pad,
                 help="face box padding in pixels (default %(default)s)")
  p.add_argument("--debug-sketch", action="store_true",
                 help="put the drawn sketch beside each frame (the release's look)")
  p.add_argument("--audio-track", choices=("speech", "template"), default=defaults.audio_track,
                 help="audio of the output: the speech (default) or the template's own track")
  p.add_argument("--no-watermark", action="store_true",
                 help="do not embed the invisible watermark nor the metadata tag")
  p.add_argument("--crf", type=int, default=defaults.crf,
                 help="H.264 quality, 0-51: 18 (default) is visually lossless, each +6 "
                      "about halves the file")
  p.add_argument("--preset", choices=inference.PRESETS, default=defaults.preset,
                 help="H.264 encoder effort (default %(default)s: keeps up with an "
                      "accelerator); 'medium': about 2x the encoding CPU; 'ultrafast': half "
                      "the CPU for files several times larger")
  p.add_argument("--cache-dir", default=None,
                 help="face detection cache (default $XDG_CACHE_HOME/ip_lap_jax)")
  p.add_argument("--small-faces", action="store_true",
                 help="retry undetected frames with the full-range face detector")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  p.add_argument("--render-size", type=int, default=defaults.render_size,
                 help=argparse.SUPPRESS)  # tests only: see InferenceOptions.render_size
  args = p.parse_args(argv)
  single = (args.template, args.audio, args.output)
  if args.jobs is None and not all(single):
    p.error("give --template, --audio and --output, or --jobs")
  if args.jobs is not None and any(single):
    p.error("--jobs replaces --template, --audio and --output")
  return args


def options_from_args(args: argparse.Namespace) -> inference.InferenceOptions:
  return inference.InferenceOptions(
      num_refs=args.num_refs, num_landmark_refs=args.num_landmark_refs,
      batch_size=args.batch_size, dtype=args.dtype, face_pad=args.face_pad,
      debug_sketch=args.debug_sketch, audio_track=args.audio_track,
      watermark=not args.no_watermark, cache_dir=args.cache_dir,
      progress=not args.no_progress, small_faces=args.small_faces,
      render_size=args.render_size, face=args.face,
      silence=inference.SilenceOptions(
          mode=args.silence, aggressiveness=args.vad_aggressiveness,
          min_silence_s=args.min_silence, hangover_s=args.silence_hangover,
          ramp_frames=args.silence_ramp),
      crf=args.crf, preset=args.preset)


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
  if args.jobs is not None:
    return _main_jobs(args)
  try:
    options = options_from_args(args)
    inference.LipSyncer.check_inputs(args.template, args.audio)  # media errors first
    syncer = inference.LipSyncer(args.checkpoint, options)
    result = syncer.run(args.template, args.audio, args.output)
  except (MediaError, inference.CheckpointError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {result.output}: {result.num_frames} frames at 25 fps "
        f"({result.frames_per_second:.2f} frames/s; {result.passthrough_frames} without a face "
        "passed through)")
  return 0


def _main_jobs(args: argparse.Namespace) -> int:
  """--jobs: every row, then the summary; 2 if nothing could start, 1 if a row failed."""
  try:
    jobs = inference.read_jobs(args.jobs)
    syncer = inference.LipSyncer(args.checkpoint, options_from_args(args))
  except (OSError, inference.CheckpointError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  outcomes = syncer.run_many(jobs)
  print(jobs_lib.summary(outcomes))
  return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
  sys.exit(main())
