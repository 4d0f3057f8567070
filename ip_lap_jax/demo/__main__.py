"""`python -m ip_lap_jax.demo [--quick] [--out DIR]`: the end-to-end demo (see `run`)."""

from ip_lap_jax.demo.run import main

raise SystemExit(main())
