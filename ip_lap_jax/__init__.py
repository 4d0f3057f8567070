"""ip_lap_jax: a JAX/Flax port of IP_LAP (CVPR 2023).

Importing the package is cheap and never imports torch; submodules are imported on use.
"""

__version__ = "0.1.0"
