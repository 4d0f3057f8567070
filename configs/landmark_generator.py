"""The landmark generator config users pass to `train.py --config=configs/landmark_generator.py[:variants]`.

The definition lives in the package (`ip_lap_jax/configs/landmark_generator.py`, which documents every
variant and field) so that an installed package can build it too; this file is what
`--config` points at.
"""

from ip_lap_jax.configs.landmark_generator import get_config  # noqa: F401
