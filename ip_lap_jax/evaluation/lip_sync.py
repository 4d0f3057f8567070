"""LSE-C / LSE-D: SyncNet's audio-visual sync scores, as `SyncNetInstance.evaluate`
(`joonson/syncnet_python`, Wav2Lip's `calculate_scores_LRS.py`) computes them.

The original, step by step, and what this module does at each step:
  1. Frames: JPEGs dumped by ffmpeg, read with cv2 (BGR), each whole frame resized to
     224 x 224 (`cv2.resize`, bilinear) in Wav2Lip's LRS2 scoring, fed as float 0..255
     without any normalisation. Here: BGR uint8 frames in memory (the package's frame
     order, `ip_lap_jax.media.video`), the same `cv2.resize`; no JPEG round trip.
  2. Audio: 16 kHz mono int16 (`pcm_s16le`), `python_speech_features.mfcc(audio, 16000)`
     on the int16 values: `ip_lap_jax.evaluation.mfcc`. Float audio in [-1, 1] is turned
     into those int16 values first (x 32768, rounded, clipped, as a pcm_s16le encoder).
  3. min_length = min(frames, floor(samples / 640)); windows v = 0 .. min_length - 6
     (`lastframe = min_length - 5` and `range(0, lastframe)`: the last usable window is
     never scored). Window v: frames v .. v+4 and MFCC columns 4v .. 4v+19 (25 video
     frames vs 100 MFCC frames per second). The original embeds them in Python batches of
     20, 5 frames per window; here a batch of windows is one run of consecutive frames
     per device, from one copy of the clip on the device, embedded in one jitted call
     (split over local accelerators): on CPU overlapping windows share their frames in
     the stem (`models.syncnet._depth_winograd`).
  4. For each offset k in -15..15 (vshift 15): distance between lip embedding i and audio
     embedding i + k, audio embeddings zero-padded by 15 on both ends (`calc_pdist`),
     PyTorch's `pairwise_distance` = ||a - b + 1e-6||_2; mean over windows per offset.
  5. LSE-D = min of the 31 means; LSE-C = median (PyTorch's: the lower middle value)
     minus that min; offset = 15 - argmin (first minimum).
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, NamedTuple

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ip_lap_jax.evaluation import mfcc as mfcc_lib
from ip_lap_jax.models import registry
from ip_lap_jax.models.syncnet import LIP_FRAMES, LIP_SIZE, MFCC_SHAPE

Array = jax.Array

VSHIFT = 15
SAMPLES_PER_FRAME = 640  # 16 kHz / 25 fps
MFCC_PER_FRAME = 4
PAIRWISE_EPS = 1e-6  # torch.nn.functional.pairwise_distance's default eps


class LipSyncScores(NamedTuple):
  lse_c: float
  lse_d: float
  offset: int


def resize_frames(frames_bgr: np.ndarray) -> np.ndarray:
  """[T, H, W, 3] uint8 -> [T, 224, 224, 3] uint8: the whole frame, `cv2.resize` bilinear."""
  frames_bgr = np.asarray(frames_bgr)
  if frames_bgr.ndim != 4 or frames_bgr.shape[-1] != 3 or frames_bgr.dtype != np.uint8:
    raise ValueError(f"frames must be uint8 BGR [T, H, W, 3], got {frames_bgr.dtype} "
                     f"{frames_bgr.shape}")
  if frames_bgr.shape[1:3] == (LIP_SIZE, LIP_SIZE):
    return frames_bgr
  return np.stack([cv2.resize(f, (LIP_SIZE, LIP_SIZE)) for f in frames_bgr])


def to_pcm16(audio: np.ndarray) -> np.ndarray:
  """int16 samples as they are; float in [-1, 1] -> int16 (x 32768, rounded, clipped)."""
  audio = np.asarray(audio).reshape(-1)
  if audio.dtype == np.int16:
    return audio
  if not np.issubdtype(audio.dtype, np.floating):
    raise ValueError(f"audio must be int16 or float in [-1, 1], got {audio.dtype}")
  return np.clip(np.rint(audio.astype(np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def num_windows(num_frames: int, num_samples: int) -> int:
  """Windows the original scores: min(frames, floor(samples / 640)) - 5."""
  return min(num_frames, num_samples // SAMPLES_PER_FRAME) - LIP_FRAMES


def offset_distances(lip: np.ndarray, aud: np.ndarray, vshift: int = VSHIFT) -> np.ndarray:
  """`calc_pdist` + the mean over windows: lip, aud [N, D] -> [2 * vshift + 1].

  Entry k is the mean over windows i of ||lip[i] - aud_padded[i + k] + 1e-6||, where
  aud_padded has vshift zero rows before and after (offset k - vshift). N is padded up
  to a multiple of 64 so that clips of different lengths share compilations.
  """
  n = len(lip)
  size = -(-n // 64) * 64
  pad = ((0, size - n), (0, 0))
  return np.asarray(_offset_distances(np.pad(lip, pad), np.pad(aud, pad), n, vshift))


@functools.partial(jax.jit, static_argnames="vshift")
def _offset_distances(lip: Array, aud: Array, count: Array, vshift: int) -> Array:
  """lip, aud [N, D] of which the first `count` rows are windows -> [2 * vshift + 1]."""
  valid = jnp.arange(lip.shape[0]) < count
  padded = jnp.pad(jnp.where(valid[:, None], aud, 0.0), ((vshift, vshift), (0, 0)))
  index = jnp.arange(lip.shape[0])[:, None] + jnp.arange(2 * vshift + 1)[None, :]
  diff = lip[:, None, :] - padded[index] + PAIRWISE_EPS  # [N, 2v+1, D]
  dist = jnp.sqrt(jnp.sum(diff * diff, axis=-1))
  return jnp.sum(jnp.where(valid[:, None], dist, 0.0), axis=0) / count


def scores_from_distances(mean_dists: np.ndarray, vshift: int = VSHIFT) -> LipSyncScores:
  """[2 * vshift + 1] mean distances -> (LSE-C, LSE-D, offset) as the original."""
  mean_dists = np.asarray(mean_dists, np.float32)
  argmin = int(np.argmin(mean_dists))
  minval = mean_dists[argmin]
  median = np.sort(mean_dists)[(len(mean_dists) - 1) // 2]  # torch.median: lower middle
  return LipSyncScores(float(median - minval), float(minval), vshift - argmin)


_FRAME_BUCKET = 32
_WINDOW_BUCKET = 16


def bucketed_rows(start: int, total: int, chunk: int, bucket: int) -> tuple[np.ndarray, int]:
  """Row indices [size] of the chunk of `total` rows from `start`, and how many are real.

  A full chunk has `chunk` rows; the last one the fewest multiples of `bucket` that hold
  the rest, padded by repeating the last row (so at most chunk / bucket shapes compile,
  and a short tail does not cost a whole chunk).
  """
  take = min(chunk, total - start)
  size = min(chunk, -(-take // bucket) * bucket)
  return np.minimum(np.arange(start, start + size), total - 1), take


def default_devices() -> list[jax.Device]:
  """Every local device on accelerators; one on CPU, where fake devices share the cores
  and splitting a batch over them only adds partitioning and synchronisation."""
  devices = jax.local_devices()
  return devices[:1] if devices[0].platform == "cpu" else devices


def _pad_axis0(array: np.ndarray, multiple: int, length: int = 0) -> np.ndarray:
  """Zero rows appended up to the first multiple of `multiple` holding `length` rows (and
  all of `array`'s)."""
  extra = -(-max(len(array), length) // multiple) * multiple - len(array)
  return np.concatenate([array, np.zeros((extra, *array.shape[1:]), array.dtype)]) if extra else array


@functools.partial(jax.jit, static_argnames=("model", "lip_sharding"))
def _embed_batch(variables: Any, frames: Array, mfcc: Array, starts: Array, *, model: Any,
                 lip_sharding: NamedSharding) -> tuple[Array, Array]:
  """frames [T, 224, 224, 3] uint8, mfcc [13, M], starts [B] -> (lip, aud) [B, 1024].

  `starts` are consecutive from starts[0] (a short batch's padding rows excepted, whose
  embeddings are dropped), so the lip tower reads, per device, one run of consecutive
  frames holding its windows (SyncNet embeds every window of a run, sharing the frames
  of overlapping windows); `frames` must extend 4 frames past the last start. Module
  level with the SyncNet module static, so every scorer of the process shares the
  compiled executable.
  """
  runs = lip_sharding.mesh.size
  per_run = starts.shape[0] // runs
  length = per_run + LIP_FRAMES - 1
  clips = jnp.stack([jax.lax.dynamic_slice_in_dim(frames, starts[0] + i * per_run, length)
                     for i in range(runs)]).astype(jnp.float32)  # [runs, per_run + 4, ...]
  clips = jax.lax.with_sharding_constraint(clips, lip_sharding)
  cols = jax.vmap(lambda s: jax.lax.dynamic_slice_in_dim(
      mfcc, s * MFCC_PER_FRAME, MFCC_SHAPE[1], axis=1))(starts)  # [B, 13, 20]
  return model.apply(variables, clips, cols[..., None])


class LipSyncScorer:
  """Embeds all windows of a clip with SyncNet in jitted batches, then scores them.

  Usage: `LipSyncScorer(store.load_tree(dir))(frames_bgr, audio)`.

  Args:
    variables: SyncNet's {'params', 'batch_stats'} (`python -m ip_lap_jax.convert --src
      syncnet_v2.model`).
    batch_size: windows per jitted call (rounded up to a multiple of the local devices).
      The last batch shrinks to the fewest multiples of 16 windows that hold the rest
      (at most batch_size / 16 shapes to compile, and a short clip is not embedded
      batch_size times), padded with repeats of a valid window and trimmed.
    precision: SyncNet's `precision` (default: HIGHEST off CPU, so GPUs do not use TF32;
      XLA's default on CPU, which is float32 there). The convolution algorithm is the
      registry's resolution for the devices' platform (Winograd on CPU).
    devices: devices to split each batch over (default: all local devices when they are
      accelerators; one CPU device otherwise, as fake CPU devices share the same cores).
  """

  def __init__(self, variables: Mapping[str, Any], batch_size: int = 64,
               precision: Any = "auto", devices: list[jax.Device] | None = None):
    if devices is None:
      devices = default_devices()
    if precision == "auto":
      precision = None if devices[0].platform == "cpu" else jax.lax.Precision.HIGHEST
    self.batch_size = -(-batch_size // len(devices)) * len(devices)
    self._bucket = -(-_WINDOW_BUCKET // len(devices)) * len(devices)
    mesh = Mesh(np.asarray(devices), ("batch",))
    self._batch_sharding = NamedSharding(mesh, PartitionSpec("batch"))
    self._replicated = NamedSharding(mesh, PartitionSpec())
    self._variables = jax.device_put(variables, self._replicated)
    self._model = registry.build(registry.official_spec("syncnet"),
                                 backend=devices[0].platform).clone(precision=precision)

  def embeddings(self, frames224: np.ndarray, mfcc: np.ndarray, count: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Lip and audio embeddings of windows 0 .. count-1: [count, 1024] each.

    frames224: [T, 224, 224, 3] uint8 BGR; mfcc: [M, 13] (python_speech_features' layout).
    """
    # Padded to buckets, so clips of similar lengths share one compiled executable, and
    # past the last batch's padding windows (dynamic slices would clamp, not read zeros);
    # real windows read only the real frames and columns.
    last = (count - 1) // self.batch_size * self.batch_size  # the last batch reads furthest
    read = last + bucketed_rows(last, count, self.batch_size, self._bucket)[0].size + LIP_FRAMES - 1
    frames224 = _pad_axis0(frames224[:read], _FRAME_BUCKET, read)
    cep = _pad_axis0(np.asarray(mfcc, np.float32), _FRAME_BUCKET * MFCC_PER_FRAME).T
    frames = jax.device_put(frames224, self._replicated)
    cep = jax.device_put(np.ascontiguousarray(cep), self._replicated)
    lips, auds = [], []
    for first in range(0, count, self.batch_size):
      starts, take = bucketed_rows(first, count, self.batch_size, self._bucket)
      lip, aud = _embed_batch(self._variables, frames, cep,
                             jax.device_put(starts.astype(np.int32), self._batch_sharding),
                             model=self._model, lip_sharding=self._batch_sharding)
      lips.append(np.asarray(lip)[:take])
      auds.append(np.asarray(aud)[:take])
    return np.concatenate(lips), np.concatenate(auds)

  def __call__(self, frames_bgr: np.ndarray, audio: np.ndarray) -> LipSyncScores:
    """frames_bgr: [T, H, W, 3] uint8 at 25 fps; audio: [N] 16 kHz (int16, or float in
    [-1, 1]) -> LipSyncScores(lse_c, lse_d, offset)."""
    frames224 = resize_frames(frames_bgr)
    pcm = to_pcm16(audio)
    count = num_windows(len(frames224), len(pcm))
    if count < 1:
      raise ValueError(f"too short to score: {len(frames224)} frames and {len(pcm)} samples "
                       f"give {count} windows (SyncNet needs min(frames, samples/640) >= 6)")
    lip, aud = self.embeddings(frames224, mfcc_lib.mfcc(pcm), count)
    return scores_from_distances(offset_distances(lip, aud))
