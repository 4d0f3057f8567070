"""Inference: template video or photo + speech -> lip-synced, watermarked video.

`LipSyncer(checkpoint, InferenceOptions(...)).run(template, audio, output)` is the API
(`infer.py` is its command line).
"""

from ip_lap_jax.inference.lipsync import (CheckpointError, FaceTrack, InferenceOptions,
                                          InferenceResult, LipSyncer, detect_template,
                                          load_checkpoint, nearest_valid, output_frame_count,
                                          pingpong, select_references, window_mel_indices,
                                          window_outputs, window_positions)
from ip_lap_jax.constants import CENTRE, FPS, WINDOW
