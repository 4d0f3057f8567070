"""`python -m ip_lap_jax.watermark detect VIDEO`: is a video marked as generated?

The command-line entry of the watermark (`ip_lap_jax.media.watermark`, which documents the
embedding, its robustness and the exit status).
"""

from ip_lap_jax.media.watermark import main

if __name__ == "__main__":
  raise SystemExit(main())
