"""`python -m ip_lap_jax.preprocess --input DIR --output DIR [--workers N] [--pad 5]`.

The command-line entry of dataset preprocessing (`ip_lap_jax.data.preprocess`, which
documents the options and the output layout).
"""

from ip_lap_jax.data.preprocess import main

if __name__ == "__main__":
  raise SystemExit(main())
