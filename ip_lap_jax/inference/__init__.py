"""Inference: template video or photo + speech -> lip-synced, watermarked video.

`LipSyncer(checkpoint, InferenceOptions(...)).run(template, audio, output)` is the API
(`infer.py` is its command line). Modules, one job each:
  api          InferenceOptions, InferenceResult, LipSyncer (the algorithm: its docstring)
  schedule     which template frame, mel chunk and references each output frame uses
  face_track   Face Mesh on the template (cached on disk) and the face boxes
  frames       template frames in playback order with bounded memory
  predictor    the checkpoint's two models, compiled for fixed shapes
  pipeline     producer, device and writer threads
  silence      silent spans of the speech and the closed-mouth blend
  jobs         many clips in one call (`LipSyncer.run_many`, `infer.py --jobs`)
"""

from ip_lap_jax.constants import CENTRE, FPS, WINDOW
from ip_lap_jax.inference.api import PRESETS, InferenceOptions, InferenceResult, LipSyncer
from ip_lap_jax.face.selection import FaceChoice
from ip_lap_jax.inference.face_track import FaceTrack, detect_template
from ip_lap_jax.inference.jobs import Job, JobOutcome, read_jobs
from ip_lap_jax.inference.predictor import load_checkpoint
from ip_lap_jax.inference.schedule import (nearest_valid, output_frame_count, pingpong,
                                           select_references, window_mel_indices,
                                           window_outputs, window_positions)
from ip_lap_jax.inference.silence import SilenceOptions
from ip_lap_jax.models.store import CheckpointError
