"""`python -m ip_lap_jax.evaluate --checkpoint CKPT --data DATA --list test.txt
--setting reconstruction|dubbing --out EVAL/ [--syncnet CKPT/syncnet] [--lpips CKPT/lpips]
[--inception CKPT/inception] [--num-refs 25]`

Generates every clip of the test list with the checkpoint (the same code path as
inference, on the face crops) and scores it with the field's metrics: PSNR, SSIM, LPIPS,
FID, LMD, LSE-C and LSE-D (`ip_lap_jax.evaluation.run` documents each and the outputs:
per_clip.csv, summary.json, summary.md). DATA is the preprocessed layout, or a folder
of raw videos (preprocessed first). Resumable: rerun the same command after an
interruption. The Python function is `ip_lap_jax.evaluation.run.evaluate`.
"""

from __future__ import annotations

import argparse
import logging

from ip_lap_jax.evaluation import run


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m ip_lap_jax.evaluate",
                                   description=__doc__.split("\n\n")[1])
  parser.add_argument("--checkpoint", required=True,
                      help="folder with landmark_generator/ and renderer/ saved models")
  parser.add_argument("--data", required=True,
                      help="preprocessed layout (faces/, landmarks/, audio/) or raw videos")
  parser.add_argument("--list", default=None, dest="test_list",
                      help="speaker/clip per line (default: every clip of DATA)")
  parser.add_argument("--setting", choices=run.SETTINGS, default="reconstruction")
  parser.add_argument("--out", required=True, help="output folder (resumable)")
  parser.add_argument("--syncnet", default=None, help="converted syncnet_v2.model (LSE-C/D)")
  parser.add_argument("--lpips", default=None, help="converted LPIPS AlexNet (LPIPS)")
  parser.add_argument("--inception", default=None, help="converted FID Inception (FID)")
  parser.add_argument("--num-refs", type=int, default=25, help="N reference images (25)")
  parser.add_argument("--num-landmark-refs", type=int, default=15)
  parser.add_argument("--batch-size", type=int, default=8)
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  parser.add_argument("--seed", type=int, default=0, help="dubbing's audio derangement")
  parser.add_argument("--box-px", type=int, default=128,
                      help="face box size the sketches are drawn for (default 128)")
  parser.add_argument("--no-progress", action="store_true")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  cfg = run.EvalConfig(
      checkpoint=args.checkpoint, data=args.data, setting=args.setting,
      test_list=args.test_list, syncnet=args.syncnet, lpips=args.lpips,
      inception=args.inception, num_refs=args.num_refs,
      num_landmark_refs=args.num_landmark_refs, batch_size=args.batch_size,
      dtype=args.dtype, seed=args.seed, box_px=args.box_px)
  try:
    summary = run.evaluate(cfg, args.out, progress=not args.no_progress)
  except (ValueError, FileNotFoundError, OSError) as e:
    parser.exit(2, f"error: {e}\n")
  print(open(f"{args.out}/summary.md", encoding="utf-8").read())
  return 1 if summary["failed"] else 0


if __name__ == "__main__":
  raise SystemExit(main())
