"""The release's fixed numbers, defined once (the official code hard-codes them).

Pure Python: preprocessing workers import this without loading JAX.
"""

FPS = 25
"""Video frame rate everything works at; other rates are converted to it first."""

WINDOW = 5
"""Frames per landmark window and per renderer input (the release's T)."""

CENTRE = 2
"""Index of the rendered frame in its window."""

FACE_SIZE = 128
"""Side of the square face crops the official models take."""

NUM_LANDMARK_REFS = 15
"""Reference landmark sets the landmark generator takes (the release's Nl)."""

NUM_REFS_INFERENCE = 25
"""Reference images the renderer takes at the release's inference (its N)."""

NUM_REFS_TRAINING = 3
"""Reference images per example in the release's renderer training."""
