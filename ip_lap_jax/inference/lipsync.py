"""Inference: a template video (or photo) plus speech -> a lip-synced, watermarked mp4.

The algorithm is the release's `inference_single.py` (REFERENCE section 7):
1. template frames at 25 fps; Face Mesh on each; face box padded by 25 px; landmarks
   normalised to the integer pixel box; lip openness (points 0-17);
2. speech -> 16 kHz -> mel -> chunks; frame j of the output uses chunk max(0, j - 2);
3. Nl landmark references and N image references at evenly spaced ranks of the frames
   sorted by lip openness (`select_references`);
4. the template plays forward then backward, repeated, to cover the audio (`pingpong`);
5. window k (frames k..k+4) -> landmark generator -> 5 sketches -> renderer -> the
   centre frame k+2, pasted into its frame with a feathered mask (`ip_lap_jax.face.paste`);
   the first window's frame is written 3 times.

Deviations, each for a stated reason:
- Output length: the release writes one frame per mel chunk, about 0.15 s shorter than
  the audio. Here the video has round(duration * 25) frames, so its duration equals the
  audio's within one frame; the last few frames (whose windows would run past the
  audio) reuse the last mel chunk.
- Frames without a face are written unchanged (the release stops); windows read the
  pose of the nearest frame that has a face. References are chosen among frames with
  a face; linspace in float64 (the release: float32 `torch.linspace`).
- Paste mask: Face Mesh points (see `ip_lap_jax.face.paste`), not a second detector.

Speed and memory:
- The landmark generator runs `batch_size` windows per call, the renderer renders
  `batch_size` frames per call with the N references shared by all of them and the
  flow module's modulations computed once per frame (`shared_modulation`). Shapes are
  fixed (the last batch is padded) and both functions are compiled ahead of time for
  them, in a thread that runs while Face Mesh scans the template; the executables are
  cached per process, so a second run or `LipSyncer` with the same settings reuses them.
- Frames of a batch are sharded over every local device (`jax.devices()`); the batch size
  is rounded up to a multiple of the device count.
- A producer thread decodes, crops and prepares batch i+1 and a writer thread pastes,
  watermarks and encodes batch i-1 while the device renders batch i.
- Frames are streamed: only the detection results (131 points per frame) and a bounded
  block of decoded frames are held. Playing the template backwards re-decodes it in
  blocks of at most `reverse_block_mib` MiB.
- Detection results are cached on disk under `cache_dir`, keyed by the template's
  SHA-256 and the detector settings.

Checkpoint directory layout: two saved models (`ip_lap_jax.models.store`), converted
(`python -m ip_lap_jax.convert`) or exported from training (`python -m ip_lap_jax.export`):
  <checkpoint>/landmark_generator/{model.json,variables}
  <checkpoint>/renderer/{model.json,variables}
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import pathlib
import queue
import tempfile
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Mapping

import chex
import cv2
import jax
import jax.numpy as jnp
import numpy as np

from ip_lap_jax.media import audio as audio_lib
from ip_lap_jax.face import landmarks
from ip_lap_jax.face import paste
from ip_lap_jax.face import sketch
from ip_lap_jax.media import video
from ip_lap_jax.files import file_sha256
from ip_lap_jax.constants import CENTRE, FACE_SIZE, FPS, WINDOW
from ip_lap_jax.errors import MediaError, require_file
from ip_lap_jax.models import registry, store
from ip_lap_jax.models.store import CheckpointError

logger = logging.getLogger(__name__)

_DETECTION_CACHE_VERSION = 1
_MODELS = ("landmark_generator", "renderer")


@dataclasses.dataclass(frozen=True)
class InferenceOptions:
  """Settings of one run (the CLI flags of `infer.py`).

  Attributes:
    num_refs: N, reference images for the renderer (release: 25).
    num_landmark_refs: Nl, reference landmark sets for the generator (release: 15).
    batch_size: windows per device call (rounded up to a multiple of the devices).
    dtype: compute dtype, 'float32' or 'bfloat16' (parameters stay float32).
    face_pad: face box padding in pixels (release: 25).
    debug_sketch: put the centre frame's drawn sketch left of each frame (the release's
      look; doubles the width). Off by default: clean output.
    audio_track: 'speech' muxes the driving audio (default), 'template' keeps the
      template's own audio track (none if it has none).
    watermark: embed the invisible watermark and the metadata tag (default). Turning it
      off is explicit (`--no-watermark`).
    cache_dir: where detection results are cached; None: $XDG_CACHE_HOME/ip_lap_jax or
      ~/.cache/ip_lap_jax.
    progress: show a progress bar (frames/s, ETA).
    small_faces: the detector's second chance for small faces (see FaceMeshDetector).
    render_size: side of the faces the renderer sees; None (default): the renderer's own
      image size (its spec; 128 for the release). The networks are convolutional, so
      smaller sizes run (meaningless output with trained weights) and keep pipeline
      tests cheap on a CPU.
    reverse_block_mib: memory bound for playing the template backwards.
  """
  num_refs: int = 25
  num_landmark_refs: int = 15
  batch_size: int = 8
  dtype: str = "float32"
  face_pad: int = landmarks.INFERENCE_PAD_PX
  debug_sketch: bool = False
  audio_track: str = "speech"
  watermark: bool = True
  cache_dir: str | None = None
  progress: bool = True
  small_faces: bool = False
  render_size: int | None = None
  reverse_block_mib: int = 256

  def __post_init__(self):
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
    if self.audio_track not in ("speech", "template"):
      raise ValueError(f"audio_track must be 'speech' or 'template', got {self.audio_track!r}")
    for name in ("num_refs", "num_landmark_refs", "batch_size", "render_size"):
      if getattr(self, name) is not None and getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1")
    if self.face_pad < 0:
      raise ValueError("face_pad must be >= 0")


@dataclasses.dataclass(frozen=True)
class InferenceResult:
  """What a run produced.

  Attributes:
    output: path of the mp4.
    num_frames: frames written (round(audio duration * 25)).
    passthrough_frames: output frames written unchanged because their template frame
      has no face.
    template_frames: frames of the template at 25 fps; faceless_template_frames: how
      many of them have no face.
    detection_cached: the template's Face Mesh results came from the disk cache.
    seconds: wall time of the run; frames_per_second: num_frames / seconds.
  """
  output: str
  num_frames: int
  passthrough_frames: int
  template_frames: int
  faceless_template_frames: int
  detection_cached: bool
  seconds: float
  frames_per_second: float


# --------------------------------------------------------------------------- planning


def output_frame_count(num_samples: int, sample_rate: int = audio_lib.SAMPLE_RATE) -> int:
  """Output frames for audio of `num_samples`: round(duration * 25)."""
  return int(round(num_samples * FPS / sample_rate))


def pingpong(position: int | np.ndarray, length: int) -> int | np.ndarray:
  """Template frame shown at output position: 0..L-1, then L-1..0, repeated."""
  r = np.mod(position, 2 * length)
  return np.where(r < length, r, 2 * length - 1 - r)


def select_references(openness: np.ndarray, count: int) -> np.ndarray:
  """Frames at evenly spaced ranks of the lip-openness order (release: linspace ranks).

  Args:
    openness: [F] lip openness per template frame, NaN for frames without a face.
    count: how many references (repeats happen when fewer frames have a face).
  Returns:
    int [count] template frame indices, from most closed to most open.
  """
  valid = np.flatnonzero(~np.isnan(openness))
  if valid.size == 0:
    raise ValueError("no frame with a face")
  order = valid[np.argsort(openness[valid], kind="stable")]
  ranks = np.linspace(0, valid.size - 1, count).astype(np.int64)
  return order[ranks]


def nearest_valid(valid: np.ndarray) -> np.ndarray:
  """[F] bool -> [F] int: each frame's nearest frame with a face (itself if it has one)."""
  idx = np.flatnonzero(valid)
  if idx.size == 0:
    raise ValueError("no frame with a face")
  pos = np.searchsorted(idx, np.arange(valid.size))
  lo = idx[np.clip(pos - 1, 0, idx.size - 1)]
  hi = idx[np.clip(pos, 0, idx.size - 1)]
  frames = np.arange(valid.size)
  return np.where(np.abs(frames - lo) <= np.abs(hi - frames), lo, hi)


def window_positions(window: int) -> np.ndarray:
  """Output positions of window k's frames: k..k+4 (the centre is k+2)."""
  return window + np.arange(WINDOW)


def window_mel_indices(window: int, num_chunks: int) -> np.ndarray:
  """Mel chunk of each frame of window k: max(0, j - 2), capped at the last chunk."""
  return np.minimum(np.maximum(window_positions(window) - CENTRE, 0), num_chunks - 1)


def window_outputs(window: int) -> list[int]:
  """Output positions a window's rendered frame fills (the first window: 0, 1 and 2)."""
  return [0, 1, 2] if window == 0 else [window + CENTRE]


# -------------------------------------------------------------------- face detection


@dataclasses.dataclass(frozen=True)
class FaceTrack:
  """Face Mesh results of a template at 25 fps.

  Attributes:
    points: [F, 131, 2] float64 canonical points normalised to the frame (x, y); NaN
      rows for frames without a face.
    frame_hw: (height, width) of the frames.
  """
  points: np.ndarray
  frame_hw: tuple[int, int]

  @property
  def num_frames(self) -> int:
    return self.points.shape[0]

  @property
  def valid(self) -> np.ndarray:
    return ~np.isnan(self.points[:, 0, 0])


def default_cache_dir() -> pathlib.Path:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(base) / "ip_lap_jax"


def _detection_cache_path(template: str, cache_dir: str | os.PathLike[str] | None,
                          small_faces: bool) -> pathlib.Path:
  import mediapipe  # its version is part of the key: another model finds other points

  settings = {"version": _DETECTION_CACHE_VERSION, "fps": FPS, "small_faces": small_faces,
              "mediapipe": mediapipe.__version__, "refine_landmarks": True,
              "min_detection_confidence": 0.5}
  key = hashlib.sha256(
      (file_sha256(template) + json.dumps(settings, sort_keys=True)).encode()).hexdigest()
  root = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
  return root / "face_tracks" / f"{key[:32]}.npz"


def detect_template(template: str | os.PathLike[str], *, small_faces: bool = False,
                    cache_dir: str | os.PathLike[str] | None = None,
                    use_cache: bool = True) -> tuple[FaceTrack, bool]:
  """Face Mesh on every template frame (at 25 fps), cached on disk.

  Returns:
    (track, from_cache).
  """
  template = require_file(template)
  cache_path = _detection_cache_path(template, cache_dir, small_faces)
  if use_cache and cache_path.is_file():
    with np.load(cache_path) as data:
      return FaceTrack(points=data["points"], frame_hw=tuple(int(v) for v in data["frame_hw"])), True
  rows: list[np.ndarray] = []
  frame_hw = None
  nan_row = np.full((landmarks.NUM_ALL, 2), np.nan)
  with landmarks.FaceMeshDetector(small_faces=small_faces) as detector:
    for frame in video.iter_frames(template, fps=FPS):
      frame_hw = frame.shape[:2]
      points = detector.detect(frame)
      rows.append(nan_row if points is None else points[landmarks.ALL_INDICES])
  track = FaceTrack(points=np.stack(rows), frame_hw=tuple(int(v) for v in frame_hw))
  if use_cache:
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_path.parent, suffix=".npz")
    os.close(fd)
    np.savez(tmp, points=track.points, frame_hw=np.array(track.frame_hw))
    os.replace(tmp, cache_path)  # atomic: a reader never sees half a file
  return track, False


@dataclasses.dataclass(frozen=True)
class _FrameGeometry:
  """Per template frame, derived from the track (arrays over F frames).

  boxes: [F, 4] int (y1, y2, x1, x2); pose [F, 74, 2], content [F, 57, 2] float32
  box-normalised; openness [F] (NaN without a face); usable [F] bool.
  """
  boxes: np.ndarray
  pose: np.ndarray
  content: np.ndarray
  openness: np.ndarray
  usable: np.ndarray


_LIP_POSITIONS = tuple(int(np.flatnonzero(landmarks.CANONICAL_ORDER == i)[0])
                       for i in landmarks.LIP_OPENNESS_INDICES)


def _geometry(track: FaceTrack, pad: int) -> _FrameGeometry:
  f = track.num_frames
  boxes = np.zeros((f, 4), np.int64)
  pose = np.zeros((f, landmarks.NUM_POSE, 2), np.float32)
  content = np.zeros((f, landmarks.NUM_CONTENT, 2), np.float32)
  openness = np.full(f, np.nan)
  usable = track.valid.copy()
  for i in np.flatnonzero(usable):
    pts = track.points[i]
    box = landmarks.face_box(pts, pad, track.frame_hw)
    y1, y2, x1, x2 = box.pixel
    if y2 <= y1 or x2 <= x1:  # a degenerate detection: treat as no face
      usable[i] = False
      continue
    boxes[i] = box.pixel
    p, c = landmarks.pose_content(landmarks.normalize_to_box(pts, box, pixel_grid=True))
    pose[i], content[i] = p, c
    a, b = _LIP_POSITIONS
    openness[i] = float(np.linalg.norm(pts[a] - pts[b]))
  return _FrameGeometry(boxes, pose, content, openness, usable)


# ---------------------------------------------------------------------- frame access


class _FrameReader:
  """Template frames at 25 fps in any order, holding a bounded number of them.

  Forward steps stream from one decoder; a backward step decodes a block of frames
  ending at the requested one (from the start: `iter_frames` cannot seek) and serves
  the following backward steps from it.
  """

  def __init__(self, path: str, num_frames: int, frame_bytes: int, budget_bytes: int):
    self._path = path
    self._num_frames = num_frames
    self._block = max(1, min(num_frames, budget_bytes // max(frame_bytes, 1)))
    self._it: Iterator[np.ndarray] | None = None
    self._next = 0  # index of the frame self._it yields next
    self._cache: dict[int, np.ndarray] = {}

  def close(self) -> None:
    """Closes the decoder (a generator holding an open container)."""
    if self._it is not None and hasattr(self._it, "close"):
      self._it.close()
    self._it = None
    self._cache = {}

  def _restart(self) -> None:
    self.close()
    self._it = iter(video.iter_frames(self._path, fps=FPS))
    self._next = 0

  def _advance_to(self, index: int) -> np.ndarray:
    if self._it is None or self._next > index:
      self._restart()
    frame = None
    while self._next <= index:
      try:
        frame = next(self._it)
      except StopIteration:
        raise MediaError(self._path, f"frame {index} vanished on re-reading") from None
      self._next += 1
    return frame

  def get(self, index: int) -> np.ndarray:
    if index in self._cache:
      return self._cache[index]
    if self._it is not None and index >= self._next:
      self._cache = {index: self._advance_to(index)}
    else:  # backwards: decode the block [lo, index]
      lo = max(0, index - self._block + 1)
      self._restart()
      self._cache = {}
      for i in range(lo, index + 1):
        self._cache[i] = self._advance_to(i)
    return self._cache[index]


# ---------------------------------------------------------------------- device code


@functools.partial(jax.jit, static_argnames=("model",))
def _predict_content(variables, mels, pose, ref_pose, ref_content, *, model):
  """mels [B, 5, 80, 16, 1], pose [B, 5, 74, 2], refs [Nl, ...] -> content [B, 5, 57, 2].

  `model`: the landmark generator module (`models.registry.build`).
  """
  b = mels.shape[0]
  ref_pose = jnp.broadcast_to(ref_pose[None], (b,) + ref_pose.shape)
  ref_content = jnp.broadcast_to(ref_content[None], (b,) + ref_content.shape)
  return model.apply(variables, mels, pose, ref_pose, ref_content, train=False)


@functools.partial(jax.jit, static_argnames=("model",))
def _render(variables, faces, sketches, ref_images, ref_sketches, mels, *, model):
  """Renders a batch of centre frames; the N references are shared by the batch.

  Args:
    faces: [B, S, S, 3] template faces; sketches: [B, 5, S, S, 3];
    ref_images, ref_sketches: [N, S, S, 3]; mels: [B, 80, 16, 1].
    model: the renderer module (`models.registry.build`).
  Returns:
    uint8 [B, S, S, 3], the generated faces truncated to uint8 as the release does.
  """
  b = faces.shape[0]
  refs = jnp.broadcast_to(ref_images[None], (b,) + ref_images.shape)
  ref_sk = jnp.broadcast_to(ref_sketches[None], (b,) + ref_sketches.shape)
  generated, _ = model.apply(variables, faces, sketches, refs, ref_sk, mels, train=False)
  return (generated * 255.0).astype(jnp.uint8)


def load_checkpoint(checkpoint_dir: str | os.PathLike[str]) -> dict[str, store.SavedModel]:
  """Loads and checks both saved models (layout: the module docstring).

  Each is rebuilt from its own spec (`model.json`), so any exported variant (an LSTM
  landmark generator, a renderer without warping or audio, another image size) runs,
  also mixed with official ones.

  Raises:
    CheckpointError: a model is missing or any parameter is missing, unexpected or
      mis-shaped; the message names the directory and the keys.
  """
  root = pathlib.Path(checkpoint_dir)
  if not root.is_dir():
    raise CheckpointError(f"{root}: checkpoint directory does not exist")
  return {model: store.load_model(root / model, expect=model) for model in _MODELS}


# ---------------------------------------------------------------------------- batches


@dataclasses.dataclass
class _Item:
  """One rendered window (or a pass-through frame) on its way to the writer."""
  frame: np.ndarray  # uint8 [H, W, 3] background
  outputs: list[int]  # output positions it fills
  slot: int | None  # row in the batch, None = pass through unchanged
  template_index: int


@dataclasses.dataclass
class _Batch:
  items: list[_Item]
  faces: np.ndarray  # [B, S, S, 3] float32
  pose: np.ndarray  # [B, 5, 74, 2] float32
  mels: np.ndarray  # [B, 5, 80, 16, 1] float32
  frames: np.ndarray  # [B, 5] template frames (with a face) of each window frame
  count: int  # real rows (the rest is padding)


_DONE = object()
# Compiled executables per (shapes, dtype, devices), shared by every LipSyncer.
_COMPILED: dict[tuple, tuple[Any, Any]] = {}
_COMPILE_LOCK = threading.Lock()


class _Failure:
  def __init__(self, error: BaseException):
    self.error = error


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
  while not stop.is_set():
    try:
      q.put(item, timeout=0.1)
      return True
    except queue.Full:
      continue
  return False


def _get(q: queue.Queue, stop: threading.Event) -> Any:
  """Next queue entry, or _DONE once `stop` is set (another thread failed)."""
  while not stop.is_set():
    try:
      return q.get(timeout=0.1)
    except queue.Empty:
      continue
  return _DONE


def _resize(img: np.ndarray, size: int) -> np.ndarray:
  if img.shape[0] == size and img.shape[1] == size:
    return img
  return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


class LipSyncer:
  """Template + speech -> lip-synced mp4 (see the module docstring).

  Usage:
    syncer = LipSyncer("checkpoints/", InferenceOptions(num_refs=25))
    result = syncer.run("template.mp4", "speech.wav", "out.mp4")

  The checkpoint is loaded and checked against the models here; a mismatch raises
  CheckpointError before any media is touched.
  """

  def __init__(self, checkpoint_dir: str | os.PathLike[str],
               options: InferenceOptions = InferenceOptions()):
    self.options = options
    self.checkpoint_dir = os.fspath(checkpoint_dir)
    saved = load_checkpoint(checkpoint_dir)
    self.specs = {name: model.spec for name, model in saved.items()}
    self.models = {name: registry.build(model.spec, dtype=options.dtype)
                   for name, model in saved.items()}
    variables = {name: model.variables for name, model in saved.items()}
    self.render_size = options.render_size or self.specs["renderer"].image_size
    self.devices = jax.devices()
    self.mesh = jax.sharding.Mesh(np.array(self.devices), ("batch",))
    self._batch_sharding = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec("batch"))
    self._replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
    self.variables = jax.device_put(variables, self._replicated)
    n = len(self.devices)
    self.batch_size = -(-options.batch_size // n) * n

  # -- compilation --------------------------------------------------------------

  def compile(self) -> tuple[Any, Any]:
    """Compiles both device functions for this run's fixed shapes (cached per process).

    `run` calls it in a background thread while Face Mesh scans the template, so the
    compilation overlaps detection.
    Returns:
      (predict_content, render) compiled executables.
    """
    opts = self.options
    b, s = self.batch_size, self.render_size
    nl, n = opts.num_landmark_refs, opts.num_refs
    key = (b, s, nl, n, self.models["landmark_generator"], self.models["renderer"],
           tuple(d.id for d in self.devices),
           jax.tree_util.tree_structure(self.variables))
    with _COMPILE_LOCK:
      if key in _COMPILED:
        return _COMPILED[key]
    f32 = jnp.float32

    def batched(*shape):
      return jax.ShapeDtypeStruct(shape, f32, sharding=self._batch_sharding)

    def shared(*shape):
      return jax.ShapeDtypeStruct(shape, f32, sharding=self._replicated)

    mel = (80, audio_lib.MEL_STEP, 1)
    content_fn = _predict_content.lower(
        self.variables["landmark_generator"], batched(b, WINDOW, *mel),
        batched(b, WINDOW, landmarks.NUM_POSE, 2), shared(nl, landmarks.NUM_POSE, 2),
        shared(nl, landmarks.NUM_CONTENT, 2), model=self.models["landmark_generator"]).compile()
    render_fn = _render.lower(
        self.variables["renderer"], batched(b, s, s, 3), batched(b, WINDOW, s, s, 3),
        shared(n, s, s, 3), shared(n, s, s, 3), batched(b, *mel),
        model=self.models["renderer"]).compile()
    with _COMPILE_LOCK:
      _COMPILED[key] = (content_fn, render_fn)
    return content_fn, render_fn

  # -- checks -------------------------------------------------------------------

  @staticmethod
  def check_inputs(template: str | os.PathLike[str], audio: str | os.PathLike[str]
                   ) -> tuple[video.VideoInfo, np.ndarray]:
    """Cheap checks of both inputs; returns (template info, 16 kHz audio).

    Raises:
      MediaError: a missing or unreadable file, or audio shorter than one mel window.
    """
    template = require_file(template)
    audio = require_file(audio)
    info = video.probe(template)
    wav = audio_lib.load_audio(audio)
    min_samples = audio_lib.MEL_STEP * audio_lib.HOP  # 16 mel frames = 0.2 s
    if wav.size < min_samples or len(audio_lib.inference_mel_chunks(
        audio_lib.melspectrogram(wav))) == 0:
      raise MediaError(audio, f"audio is {wav.size / audio_lib.SAMPLE_RATE:.3f} s long; "
                       "at least 0.2 s (one mel window) is needed")
    return info, wav

  # -- run ----------------------------------------------------------------------

  def run(self, template: str | os.PathLike[str], audio: str | os.PathLike[str],
          output: str | os.PathLike[str]) -> InferenceResult:
    """Writes the lip-synced video to `output` (mp4)."""
    start = time.perf_counter()
    opts = self.options
    template, audio, output = os.fspath(template), os.fspath(audio), os.fspath(output)
    info, wav = self.check_inputs(template, audio)
    mel_chunks = audio_lib.inference_mel_chunks(audio_lib.melspectrogram(wav))
    num_out = output_frame_count(wav.size)

    compiled: list[Any] = [None]

    def compile_in_background() -> None:
      try:
        compiled[0] = self.compile()
      except BaseException as e:  # re-raised below, in the caller's thread
        compiled[0] = e

    compiler = threading.Thread(target=compile_in_background, name="ip_lap_jax-compile",
                                daemon=True)
    compiler.start()
    # On an error below the compile thread is left to finish on its own (daemon): the
    # error is reported at once, and a later run finds the executables cached.
    track, cached = detect_template(template, small_faces=opts.small_faces,
                                    cache_dir=opts.cache_dir)
    geometry = _geometry(track, opts.face_pad)
    if not geometry.usable.any():
      raise MediaError(template, f"no face found in any of its {track.num_frames} frames")
    compiler.join()
    if isinstance(compiled[0], BaseException):
      raise compiled[0]
    self._content_fn, self._render_fn = compiled[0]
    faceless = int(track.num_frames - geometry.usable.sum())
    if faceless:
      logger.warning("%s: no face in %d of %d frames; they pass through unchanged",
                     template, faceless, track.num_frames)

    fill = nearest_valid(geometry.usable)
    reader = _FrameReader(template, track.num_frames,
                          frame_bytes=track.frame_hw[0] * track.frame_hw[1] * 3,
                          budget_bytes=opts.reverse_block_mib << 20)
    try:
      refs = self._references(track, geometry, reader)
      passthrough = self._pipeline(track, geometry, fill, reader, refs, mel_chunks, num_out,
                                   output, self._audio_track(template, audio, info),
                                   self._metadata())
    finally:
      reader.close()
    seconds = time.perf_counter() - start
    if passthrough:
      logger.warning("%d of %d output frames had no face and were written unchanged",
                     passthrough, num_out)
    return InferenceResult(output=output, num_frames=num_out, passthrough_frames=passthrough,
                           template_frames=track.num_frames, faceless_template_frames=faceless,
                           detection_cached=cached, seconds=seconds, frames_per_second=num_out / seconds)

  def _audio_track(self, template: str, audio: str, info: video.VideoInfo) -> str | None:
    """The file whose audio is muxed into the output (None: silent)."""
    if self.options.audio_track == "speech":
      return audio
    if not info.has_audio:
      logger.warning("%s has no audio track: the output is silent", template)
      return None
    return template

  def _metadata(self) -> dict[str, str]:
    if not self.options.watermark:
      return {}
    from ip_lap_jax.media import watermark
    return dict(watermark.METADATA)

  def _references(self, track: FaceTrack, geometry: _FrameGeometry,
                  reader: _FrameReader) -> dict[str, jax.Array]:
    """Landmark references [Nl, ...] and image references + sketches [N, S, S, 3]."""
    opts = self.options
    s = self.render_size
    lmk = select_references(geometry.openness, opts.num_landmark_refs)
    img = select_references(geometry.openness, opts.num_refs)
    crops = {}
    for index in sorted(set(img.tolist())):
      y1, y2, x1, x2 = geometry.boxes[index]
      face = cv2.resize(reader.get(index)[y1:y2, x1:x2], (FACE_SIZE, FACE_SIZE))
      crops[index] = _resize(face, s).astype(np.float32) / 255.0
    images = np.stack([crops[i] for i in img])
    sketches = np.stack([_resize(self._sketch(geometry.pose[i], geometry.content[i],
                                              geometry.boxes[i]), s) for i in img])
    arrays = {"ref_pose": geometry.pose[lmk], "ref_content": geometry.content[lmk],
              "ref_images": images, "ref_sketches": sketches}
    return {k: jax.device_put(jnp.asarray(v, jnp.float32), self._replicated)
            for k, v in arrays.items()}

  @staticmethod
  def _sketch(pose: np.ndarray, content: np.ndarray, box: np.ndarray) -> np.ndarray:
    y1, y2, x1, x2 = box
    points = landmarks.content_and_pose_to_all(pose.astype(np.float64), content.astype(np.float64))
    return sketch.draw_sketch(points, (int(y2 - y1), int(x2 - x1)))

  def _batches(self, track: FaceTrack, geometry: _FrameGeometry, fill: np.ndarray,
               reader: _FrameReader, mel_chunks: np.ndarray, num_out: int) -> Iterator[_Batch]:
    """Yields batches of windows in output order (producer thread)."""
    s = self.render_size
    bsz = self.batch_size
    length = track.num_frames

    def empty() -> dict[str, np.ndarray]:
      return {"faces": np.zeros((bsz, s, s, 3), np.float32),
              "pose": np.zeros((bsz, WINDOW, landmarks.NUM_POSE, 2), np.float32),
              "mels": np.zeros((bsz, WINDOW, 80, audio_lib.MEL_STEP, 1), np.float32),
              "frames": np.zeros((bsz, WINDOW), np.int64)}

    arrays, items, count = empty(), [], 0
    for window in range(num_out - CENTRE):
      t = int(pingpong(window + CENTRE, length))
      frame = reader.get(t)
      slot = None
      if geometry.usable[t]:
        slot = count
        y1, y2, x1, x2 = geometry.boxes[t]
        face = cv2.resize(frame[y1:y2, x1:x2], (FACE_SIZE, FACE_SIZE))
        arrays["faces"][slot] = _resize(face, s).astype(np.float32) / 255.0
        frames = fill[pingpong(window_positions(window), length)]
        arrays["frames"][slot] = frames
        arrays["pose"][slot] = geometry.pose[frames]
        arrays["mels"][slot] = mel_chunks[window_mel_indices(window, len(mel_chunks))][..., None]
        count += 1
      items.append(_Item(frame=frame, outputs=window_outputs(window), slot=slot,
                         template_index=t))
      if count == bsz:
        yield _Batch(items=items, count=count, **arrays)
        arrays, items, count = empty(), [], 0
    if items:
      for k in range(count, bsz):  # pad with copies of row 0 (fixed shapes)
        for v in arrays.values():
          v[k] = v[0]
      yield _Batch(items=items, count=count, **arrays)

  def _pipeline(self, track, geometry, fill, reader, refs, mel_chunks, num_out, output,
                audio_path, metadata) -> int:
    opts = self.options
    stop = threading.Event()
    to_device: queue.Queue = queue.Queue(maxsize=2)
    to_writer: queue.Queue = queue.Queue(maxsize=2)
    passthrough = [0]

    def produce() -> None:
      try:
        for batch in self._batches(track, geometry, fill, reader, mel_chunks, num_out):
          if not _put(to_device, batch, stop):
            return
        _put(to_device, _DONE, stop)
      except BaseException as e:  # handed to the main thread
        _put(to_device, _Failure(e), stop)

    def write() -> None:
      try:
        self._write(to_writer, stop, geometry, track, output, audio_path, metadata, num_out,
                    passthrough)
      except BaseException as e:
        stop.set()
        failure[0] = e

    failure: list[BaseException | None] = [None]
    producer = threading.Thread(target=produce, name="ip_lap_jax-producer", daemon=True)
    writer = threading.Thread(target=write, name="ip_lap_jax-writer", daemon=True)
    producer.start()
    writer.start()
    try:
      while True:
        batch = _get(to_device, stop)
        if batch is _DONE:
          break
        if isinstance(batch, _Failure):
          raise batch.error
        rendered, sketches = self._infer_batch(batch, geometry, refs)
        if not _put(to_writer, (batch, rendered, sketches), stop):
          break
      _put(to_writer, _DONE, stop)
    except BaseException:
      stop.set()
      raise
    finally:
      writer.join()
      stop.set()
      producer.join()
    if failure[0] is not None:
      raise failure[0]
    return passthrough[0]

  def _infer_batch(self, batch: _Batch, geometry: _FrameGeometry, refs: Mapping[str, jax.Array]
                   ) -> tuple[jax.Array, np.ndarray]:
    """Landmarks -> sketches -> rendering for one batch; rendering is left in flight."""
    shard = functools.partial(jax.device_put, device=self._batch_sharding)
    content = np.asarray(self._content_fn(
        self.variables["landmark_generator"], shard(batch.mels), shard(batch.pose),
        refs["ref_pose"], refs["ref_content"]))
    s = self.render_size
    bsz = batch.faces.shape[0]
    sketches = np.zeros((bsz, WINDOW, s, s, 3), np.float32)
    centre = np.zeros((bsz, FACE_SIZE, FACE_SIZE, 3), np.float32)  # full size, for debug
    for b in range(batch.count):
      for t in range(WINDOW):
        drawn = self._sketch(batch.pose[b, t], content[b, t], geometry.boxes[batch.frames[b, t]])
        sketches[b, t] = _resize(drawn, s)
        if t == CENTRE:
          centre[b] = drawn
    sketches[batch.count:] = sketches[0]
    rendered = self._render_fn(self.variables["renderer"], shard(batch.faces), shard(sketches),
                               refs["ref_images"], refs["ref_sketches"],
                               shard(batch.mels[:, CENTRE]))
    return rendered, centre

  def _write(self, to_writer: queue.Queue, stop: threading.Event, geometry: _FrameGeometry,
             track: FaceTrack, output: str, audio_path: str | None,
             metadata: Mapping[str, str], num_out: int, passthrough: list[int]) -> None:
    """Pastes, watermarks and encodes (writer thread)."""
    opts = self.options
    embed: Callable[[np.ndarray], np.ndarray] | None = None
    if opts.watermark:
      from ip_lap_jax.media import watermark
      embed = watermark.embed_frame
    from tqdm import tqdm

    h, w = track.frame_hw
    written = 0
    with tqdm(total=num_out, unit="frame", disable=not opts.progress, desc="lip sync") as bar, \
        video.VideoWriter(output, fps=FPS, audio_path=audio_path, metadata=metadata) as writer:
      while True:
        entry = _get(to_writer, stop)
        if entry is _DONE:
          if stop.is_set():  # abandoned: VideoWriter deletes its temporary file
            raise RuntimeError("inference stopped before the video was complete")
          break
        batch, rendered, centre_sketches = entry
        faces = np.asarray(rendered)  # waits for the device
        for item in batch.items:
          if item.slot is None:
            out = item.frame
            passthrough[0] += len(item.outputs)
            sketch_img = np.zeros_like(item.frame)
          else:
            t = item.template_index
            polygon = paste.mask_polygon(track.points[t], track.frame_hw)
            out = paste.paste_face(item.frame, faces[item.slot], tuple(geometry.boxes[t]), polygon)
            sketch_img = (cv2.resize(centre_sketches[item.slot], (w, h)) * 255).astype(np.uint8)
          if opts.debug_sketch:
            out = np.concatenate([sketch_img, out], axis=1)
          if embed is not None:
            out = embed(out)
          for _ in item.outputs:
            writer.write(out)
          written += len(item.outputs)
          bar.update(len(item.outputs))
      if written != num_out:
        raise RuntimeError(f"wrote {written} frames, expected {num_out}")
