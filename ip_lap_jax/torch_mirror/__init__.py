"""PyTorch mirrors of the official IP_LAP modules, for parity tests and benchmarks only.

Every mirror uses the official attribute names, so its `state_dict()` keys equal the
release's checkpoint keys. This package imports torch; nothing outside tests, benchmarks
and `ip_lap_jax.convert` (lazily) may import it.
"""
