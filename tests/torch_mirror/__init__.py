"""PyTorch mirrors of the official IP_LAP modules, for parity tests and benchmarks only.

Every mirror uses the official attribute names, so its `state_dict()` keys equal the
release's checkpoint keys. It lives beside the tests, outside the installed
package, because it imports torch (the package itself imports torch only in
`ip_lap_jax.conversion.pth`, lazily); tests import it as `torch_mirror`, benchmarks put
`tests/` on sys.path.
"""
