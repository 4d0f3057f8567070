"""The renderer config users pass to `train.py --config=configs/renderer.py[:variants]`.

The definition lives in the package (`ip_lap_jax/configs/renderer.py`, which documents every
variant and field) so that an installed package can build it too; this file is what
`--config` points at.
"""

from ip_lap_jax.configs.renderer import get_config  # noqa: F401
