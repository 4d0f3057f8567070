"""The streaming part of a run: threads around the device.

A producer thread decodes, crops and prepares batch i+1 (`_batches`), the calling thread
runs the landmark generator, draws the sketches and starts the renderer on batch i
(`_infer_batch`); after the device, a pool of `Output.workers` threads pastes and
watermarks whole batches (`_compose`, in place into frames the pipeline owns; numpy and
OpenCV release the GIL) and one encoder thread writes their frames in order (`_write`),
libx264 running its own threads. Queues between the stages hold a few batches, so
memory stays bounded; when one thread fails the others stop, the output file is not
created and the first error is raised in the caller.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import os
import queue
import threading
import time
from typing import Any, Callable, Iterator, Mapping, TypeVar

import cv2
import jax
import numpy as np

from ip_lap_jax.constants import CENTRE, FACE_SIZE, FPS, WINDOW
from ip_lap_jax.face import landmarks
from ip_lap_jax.face import paste
from ip_lap_jax.inference import schedule, silence
from ip_lap_jax.inference.face_track import FaceTrack, FrameGeometry, resize_square
from ip_lap_jax.inference.frames import FrameReader
from ip_lap_jax.inference.predictor import CompiledPredictor, Predictor
from ip_lap_jax.media import audio as audio_lib
from ip_lap_jax.media import video

T = TypeVar("T")


def run_in_thread(fn: Callable[[], T], name: str) -> concurrent.futures.Future[T]:
  """Starts `fn` in a daemon thread; its result or exception arrives in the future.

  Daemon: a caller that fails meanwhile reports at once instead of waiting for `fn`.
  """
  future: concurrent.futures.Future[T] = concurrent.futures.Future()

  def target() -> None:
    future.set_running_or_notify_cancel()
    try:
      future.set_result(fn())
    except BaseException as e:  # re-raised by future.result() in the caller's thread
      future.set_exception(e)

  threading.Thread(target=target, name=name, daemon=True).start()
  return future


def usable_cores() -> int:
  """CPU cores this process may run on (its affinity mask, e.g. under `taskset`)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


class StageClock:
  """Seconds spent in each stage of a run, summed over the threads that run it.

  Stages of parallel threads add up to more than the wall time; their shares show where
  the host's time goes (`InferenceResult.stage_seconds`).
  """

  def __init__(self):
    self._lock = threading.Lock()
    self.seconds: dict[str, float] = collections.defaultdict(float)

  @contextlib.contextmanager
  def __call__(self, stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
      yield
    finally:
      elapsed = time.perf_counter() - start
      with self._lock:
        self.seconds[stage] += elapsed


@dataclasses.dataclass(frozen=True)
class Plan:
  """What a run renders: the template's faces and the speech's frames.

  Attributes:
    track, geometry: the template's detections and what is derived from them.
    fill: [F] int, each template frame's nearest frame with a usable face.
    mel_chunks: [M, 80, 16] the speech's mel chunks (`audio.inference_mel_chunks`).
    num_out: output frames.
    closing: [num_out] float in [0, 1], how far each output frame's mouth moves toward
      the most closed reference (`silence.closing_weights`); None: the model's own
      landmarks everywhere (`--silence model`).
  """
  track: FaceTrack
  geometry: FrameGeometry
  fill: np.ndarray
  mel_chunks: np.ndarray
  num_out: int
  closing: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Output:
  """Where and how frames are written.

  Attributes:
    path: the mp4.
    audio_path: the file whose audio track is muxed in (None: silent).
    metadata: container tags.
    watermark: embed the invisible watermark in every frame.
    debug_sketch: put the centre frame's sketch left of each frame.
    progress: show a progress bar.
    crf, preset: libx264's quality and effort (`video.VideoWriter`).
    workers: threads pasting and watermarking batches; 0: one per usable core.
    encoder_threads: libx264's threads; 0: one per usable core.
  """
  path: str
  audio_path: str | None
  metadata: Mapping[str, str]
  watermark: bool
  debug_sketch: bool
  progress: bool
  crf: int = 18
  preset: str = "veryfast"
  workers: int = 0
  encoder_threads: int = 0


@dataclasses.dataclass(frozen=True)
class References:
  """What every window shares, on every device.

  Attributes:
    pose: [Nl, 74, 2], content: [Nl, 57, 2] landmark references.
    images, sketches: [N, S, S, 3] image references and their sketches.
    closed_content: [57, 2] float32 on the host, the content of the landmark reference
      with the lowest lip openness (the mouth `--silence closed` moves toward).
  """
  pose: jax.Array
  content: jax.Array
  images: jax.Array
  sketches: jax.Array
  closed_content: np.ndarray


def prepare_references(plan: Plan, reader: FrameReader, predictor: Predictor) -> References:
  """Nl landmark and N image references at evenly spaced lip-openness ranks."""
  geometry, s = plan.geometry, predictor.render_size
  lmk = schedule.select_references(geometry.openness, predictor.num_landmark_refs)
  img = schedule.select_references(geometry.openness, predictor.num_refs)
  faces = {i: geometry.face(reader.get(i), i, s) for i in sorted(set(img.tolist()))}
  sketches = [resize_square(geometry.sketch(geometry.pose[i], geometry.content[i], i), s)
              for i in img]
  # Measured on the box-normalised content: that is what the blend mixes with.
  closed = lmk[int(np.argmin(landmarks.lip_openness(geometry.content[lmk])))]
  return References(pose=predictor.replicate(geometry.pose[lmk]),
                    content=predictor.replicate(geometry.content[lmk]),
                    images=predictor.replicate(np.stack([faces[i] for i in img])),
                    sketches=predictor.replicate(np.stack(sketches)),
                    closed_content=geometry.content[closed].astype(np.float32))


@dataclasses.dataclass
class _Item:
  """One rendered window (or a pass-through frame) on its way to the writer."""
  frame: np.ndarray  # uint8 [H, W, 3] background, owned by this item (pasted in place)
  outputs: list[int]  # output positions it fills
  slot: int | None  # row in the batch, None = pass through unchanged
  template_index: int
  window: int  # k: the window covers output positions k..k+4


@dataclasses.dataclass
class _Batch:
  items: list[_Item]
  faces: np.ndarray  # [B, S, S, 3] float32
  pose: np.ndarray  # [B, 5, 74, 2] float32
  mels: np.ndarray  # [B, 5, 80, 16, 1] float32
  frames: np.ndarray  # [B, 5] template frames (with a face) of each window frame
  count: int  # real rows (the rest is padding)


_DONE = object()


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


def _batches(plan: Plan, reader: FrameReader, batch_size: int, size: int,
             clock: StageClock) -> Iterator[_Batch]:
  """Batches of windows in output order, the last padded to `batch_size` (producer).

  Each item owns its frame (`FrameReader.take`): the writer pastes into it in place.
  """
  geometry, length = plan.geometry, plan.track.num_frames
  num_windows = schedule.num_windows(plan.num_out)

  def empty() -> dict[str, np.ndarray]:
    return {"faces": np.zeros((batch_size, size, size, 3), np.float32),
            "pose": np.zeros((batch_size, WINDOW, landmarks.NUM_POSE, 2), np.float32),
            "mels": np.zeros((batch_size, WINDOW, 80, audio_lib.MEL_STEP, 1), np.float32),
            "frames": np.zeros((batch_size, WINDOW), np.int64)}

  arrays, items, count = empty(), [], 0
  for window in range(num_windows):
    t = int(schedule.pingpong(window + CENTRE, length))
    again = window + 1 < num_windows and int(schedule.pingpong(window + 1 + CENTRE, length)) == t
    with clock("decode"):
      frame = reader.take(t, again)
    slot = None
    if geometry.usable[t]:
      slot = count
      with clock("prepare"):  # the crop and resize (the rest is indexing)
        arrays["faces"][slot] = geometry.face(frame, t, size)
      frames = plan.fill[schedule.pingpong(schedule.window_positions(window), length)]
      arrays["frames"][slot] = frames
      arrays["pose"][slot] = geometry.pose[frames]
      mel_indices = schedule.window_mel_indices(window, len(plan.mel_chunks))
      arrays["mels"][slot] = plan.mel_chunks[mel_indices][..., None]
      count += 1
    items.append(_Item(frame=frame, outputs=schedule.window_outputs(window), slot=slot,
                       template_index=t, window=window))
    if count == batch_size:
      yield _Batch(items=items, count=count, **arrays)
      arrays, items, count = empty(), [], 0
  if items:
    for k in range(count, batch_size):  # pad with copies of row 0 (fixed shapes)
      for v in arrays.values():
        v[k] = v[0]
    yield _Batch(items=items, count=count, **arrays)


def _predict_content(compiled: CompiledPredictor, batch: _Batch, refs: References,
                     closing: np.ndarray | None) -> np.ndarray:
  """The landmark generator's content for a batch, closed where the speech is silent.

  Args:
    closing: [num_out] weights of the output frames (`Plan.closing`) or None.
  Returns:
    [B, 5, 57, 2] content; frame t of the window in row b stands for output position
    k + t, and moves toward `refs.closed_content` by that position's weight.
  """
  content = compiled.predict_content(batch.mels, batch.pose, refs.pose, refs.content)
  if closing is None:
    return content
  content = np.array(content)  # writable (a device result's host view is read-only)
  for item in batch.items:
    if item.slot is not None:
      # The last windows reach past the final frame; they take its weight.
      positions = np.minimum(schedule.window_positions(item.window), closing.size - 1)
      content[item.slot] = silence.close_mouth(content[item.slot], closing[positions],
                                               refs.closed_content)
  return content


def _infer_batch(compiled: CompiledPredictor, batch: _Batch, geometry: FrameGeometry,
                 refs: References, closing: np.ndarray | None = None,
                 landmarks_out: np.ndarray | None = None) -> tuple[jax.Array, np.ndarray]:
  """Landmarks -> sketches -> rendering of one batch; rendering is left in flight.

  Args:
    closing: see `_predict_content`.
    landmarks_out: [num_out, 57, 2]; when given, each rendered output position's centre
      content is stored in it.
  Returns:
    (rendered uint8 [B, S, S, 3] on the devices, centre sketches float32
    [B, 128, 128, 3] at full size for `debug_sketch`).
  """
  content = _predict_content(compiled, batch, refs, closing)
  if landmarks_out is not None:
    for item in batch.items:
      if item.slot is not None:
        landmarks_out[item.outputs] = content[item.slot, CENTRE]
  s = compiled.predictor.render_size
  bsz = batch.faces.shape[0]
  sketches = np.zeros((bsz, WINDOW, s, s, 3), np.float32)
  centre = np.zeros((bsz, FACE_SIZE, FACE_SIZE, 3), np.float32)
  for b in range(batch.count):
    for t in range(WINDOW):
      drawn = geometry.sketch(batch.pose[b, t], content[b, t], batch.frames[b, t])
      sketches[b, t] = resize_square(drawn, s)
      if t == CENTRE:
        centre[b] = drawn
  sketches[batch.count:] = sketches[0]
  rendered = compiled.render(batch.faces, sketches, refs.images, refs.sketches,
                             batch.mels[:, CENTRE])
  return rendered, centre


def _compose(entry: tuple[_Batch, jax.Array, np.ndarray], plan: Plan, output: Output,
             clock: StageClock) -> list[tuple[np.ndarray, _Item]]:
  """Pastes and watermarks one batch's frames (a pool thread); returns them in order.

  Args:
    entry: (batch, rendered uint8 [B, S, S, 3] still on the devices, centre sketches
      float32 [B, 128, 128, 3]).
  Returns:
    (uint8 [H, W, 3] frame, or [H, 2W, 3] with `debug_sketch`; its item) per item. Work
    per frame is the face box (paste) and the watermark's bounded tile lattice: the
    items' own frames are changed in place, never copied.
  """
  batch, rendered, centre_sketches = entry
  with clock("device wait"):
    faces = np.asarray(rendered)
  track, geometry = plan.track, plan.geometry
  out = []
  for item in batch.items:
    frame = item.frame
    if item.slot is not None:
      with clock("paste"):
        t = item.template_index
        polygon = paste.mask_polygon(track.points[t], track.frame_hw)
        paste.paste_face_inplace(frame, faces[item.slot], tuple(geometry.boxes[t]), polygon)
    if output.debug_sketch:  # the only full-frame work, and only on request
      with clock("debug sketch"):
        if item.slot is None:
          sketch_img = np.zeros_like(frame)
        else:
          h, w = track.frame_hw
          sketch_img = (cv2.resize(centre_sketches[item.slot], (w, h)) * 255).astype(np.uint8)
        frame = np.concatenate([sketch_img, frame], axis=1)
    out.append((frame, item))
  if output.watermark:
    from ip_lap_jax.media import watermark
    with clock("watermark"):
      watermark.embed_frames_inplace([frame for frame, _ in out])
  return out


def _write(to_writer: queue.Queue, stop: threading.Event, plan: Plan, output: Output,
           clock: StageClock) -> int:
  """Composes batches on a thread pool and encodes them in order (writer thread).

  A dispatcher thread hands each batch to the pool as it arrives and queues its future;
  this thread encodes the futures' frames in that order. At most `workers` batches are
  queued for encoding, so memory stays bounded.

  Returns:
    The output frames passed through without a face.
  """
  from tqdm import tqdm

  workers = output.workers or usable_cores()
  pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="ip_lap_jax-compose")
  to_encoder: queue.Queue = queue.Queue(maxsize=workers)

  def dispatch() -> None:
    try:
      while True:
        entry = _get(to_writer, stop)
        if entry is _DONE:
          _put(to_encoder, _DONE, stop)
          return
        if not _put(to_encoder, pool.submit(_compose, entry, plan, output, clock), stop):
          return
    except BaseException as e:  # handed to the encoder loop, which raises it
      _put(to_encoder, _Failure(e), stop)

  dispatcher = run_in_thread(dispatch, "ip_lap_jax-dispatch")
  written = passthrough = 0
  try:
    with tqdm(total=plan.num_out, unit="frame", disable=not output.progress,
              desc="lip sync") as bar, \
        video.VideoWriter(output.path, fps=FPS, audio_path=output.audio_path,
                          metadata=output.metadata, crf=output.crf, preset=output.preset,
                          threads=output.encoder_threads or usable_cores()) as writer:
      while True:
        entry = _get(to_encoder, stop)
        if entry is _DONE:
          if stop.is_set():  # abandoned: VideoWriter deletes its temporary file
            raise RuntimeError("inference stopped before the video was complete")
          break
        if isinstance(entry, _Failure):
          raise entry.error
        for frame, item in entry.result():
          with clock("encode"):
            for _ in item.outputs:
              writer.write(frame)
          written += len(item.outputs)
          passthrough += len(item.outputs) if item.slot is None else 0
          bar.update(len(item.outputs))
      if written != plan.num_out:
        raise RuntimeError(f"wrote {written} frames, expected {plan.num_out}")
      with clock("encode"):
        writer.close()  # flushes libx264's delayed frames and muxes the audio
  except BaseException:
    stop.set()  # the dispatcher, producer and device loop give up too
    raise
  finally:
    concurrent.futures.wait([dispatcher])
    pool.shutdown(wait=True, cancel_futures=True)
  return passthrough


def run_pipeline(plan: Plan, reader: FrameReader, compiled: CompiledPredictor,
                 refs: References, output: Output, clock: StageClock | None = None,
                 landmarks_out: np.ndarray | None = None) -> int:
  """Renders and writes every output frame; returns how many were passed through.

  Args:
    clock: adds up the seconds of each stage (None: a throwaway one).
    landmarks_out: [num_out, 57, 2], when given, receives the centre content of each
      rendered output frame (rows of pass-through frames are left as they are).
  Raises:
    The first error of any thread.
  """
  clock = clock if clock is not None else StageClock()
  stop = threading.Event()
  to_device: queue.Queue = queue.Queue(maxsize=2)
  to_writer: queue.Queue = queue.Queue(maxsize=2)
  predictor = compiled.predictor

  def produce() -> None:
    try:
      for batch in _batches(plan, reader, predictor.batch_size, predictor.render_size,
                            clock):
        if not _put(to_device, batch, stop):
          return
      _put(to_device, _DONE, stop)
    except BaseException as e:  # handed to the device loop, which raises it
      _put(to_device, _Failure(e), stop)

  def write() -> int:
    try:
      return _write(to_writer, stop, plan, output, clock)
    except BaseException:
      stop.set()  # the producer and the device loop give up too
      raise

  produced = run_in_thread(produce, "ip_lap_jax-producer")
  written = run_in_thread(write, "ip_lap_jax-writer")
  try:
    while True:
      batch = _get(to_device, stop)
      if batch is _DONE:
        break
      if isinstance(batch, _Failure):
        raise batch.error
      with clock("landmarks, sketches, render call"):
        rendered, sketches = _infer_batch(compiled, batch, plan.geometry, refs, plan.closing,
                                          landmarks_out)
      if not _put(to_writer, (batch, rendered, sketches), stop):
        break
    _put(to_writer, _DONE, stop)
  except BaseException:
    stop.set()
    raise
  finally:
    concurrent.futures.wait([written])
    stop.set()
    concurrent.futures.wait([produced])
  return written.result()
