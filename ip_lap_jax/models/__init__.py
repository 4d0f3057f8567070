"""Flax (linen) models of IP_LAP; submodule names follow the official state_dict.

Import the concrete modules directly (`ip_lap_jax.models.landmark_generator`, ...);
this package file imports nothing so that loading one model stays cheap.
"""
