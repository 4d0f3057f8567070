"""The inference API: `LipSyncer(checkpoint, InferenceOptions(...)).run(template, audio, output)`.

The algorithm is the release's `inference_single.py`:
1. template frames at 25 fps; Face Mesh on each; face box padded by 25 px; landmarks
   normalised to the integer pixel box; lip openness (points 0-17) (`face_track`);
2. speech -> 16 kHz -> mel -> chunks; frame j of the output uses chunk max(0, j - 2);
3. Nl landmark references and N image references at evenly spaced ranks of the frames
   sorted by lip openness (`schedule.select_references`);
4. the template plays forward then backward, repeated, to cover the audio
   (`schedule.pingpong`);
5. window k (frames k..k+4) -> landmark generator -> 5 sketches -> renderer -> the
   centre frame k+2, pasted into its frame with a feathered mask (`ip_lap_jax.face.paste`);
   the first window's frame is written 3 times (`pipeline`).

Additions for real footage (each off or neutral where the release's behaviour is wanted):
- Silence (`silence`): where the speech is silent, each predicted window frame's
  content moves toward the most closed landmark reference by its output frame's closing
  weight (`--silence model`: the model's raw output, as the release).
- Several faces (`face_track`, `face.selection`): the face `face` chooses is followed
  from frame to frame; frames where it is lost pass through unchanged.
- Many clips (`run_many`, `jobs`): one loaded and compiled model set for all of them.

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
  them (`predictor`), in a thread that runs while Face Mesh scans the template.
- Frames of a batch are sharded over every local device (`jax.devices()`).
- Frames are streamed (`pipeline`, `frames`): only the detection results (131 points per
  frame) and a bounded block of decoded frames are held.
- Detection results are cached on disk under `cache_dir` (`face_track`); a template's
  first use runs Face Mesh in one process per core.
- After the device, paste-back and the watermark touch only the face box and a bounded
  tile lattice of frames the pipeline owns (no full-frame copies), on a thread pool,
  while libx264 encodes in its own threads (`pipeline`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Sequence

import jax
import numpy as np

from ip_lap_jax.errors import MediaError, require_file
from ip_lap_jax.face import landmarks
from ip_lap_jax.face.selection import FaceChoice
from ip_lap_jax.inference import face_track, jobs as jobs_lib, pipeline, predictor, schedule
from ip_lap_jax.inference import silence
from ip_lap_jax.inference.silence import SilenceOptions
from ip_lap_jax.inference.frames import FrameReader
from ip_lap_jax.media import audio as audio_lib
from ip_lap_jax.media import video

logger = logging.getLogger(__name__)


# libx264's presets, fastest first.
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow",
           "slower", "veryslow")


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
    silence: how silent spans of the speech are found and handled (`silence.
      SilenceOptions`: mode 'closed' (default) or 'model', VAD aggressiveness, minimum
      silence, hangover, ramp).
    face: which face speaks when a frame has several: 'largest' (default), 'center',
      'K' (the K-th from the left, from 0) or 'x,y,w,h' (`face.selection.FaceChoice`).
    crf: libx264's constant rate factor: 18 (default) is visually lossless; each +6
      about halves the file.
    preset: libx264's effort: 'veryfast' (default) keeps up with an accelerator on a
      few cores; 'medium' costs about twice the encoding CPU, 'ultrafast' half of it
      for files several times larger (benchmarks/README.md).
    workers: threads pasting and watermarking; 0 (default): one per usable core.
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
  silence: SilenceOptions = SilenceOptions()
  face: str = "largest"
  crf: int = 18
  preset: str = "veryfast"
  workers: int = 0

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
    FaceChoice.parse(self.face)  # raises on a bad `face` now, not after loading models
    if not 0 <= self.crf <= 51:
      raise ValueError(f"crf must be in 0..51, got {self.crf}")
    if self.preset not in PRESETS:
      raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
    if self.workers < 0:
      raise ValueError("workers must be >= 0")

  @property
  def face_choice(self) -> FaceChoice:
    return FaceChoice.parse(self.face)


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
    render_size: side of the faces the renderer rendered.
    seconds: wall time of the run; frames_per_second: num_frames / seconds.
    landmarks: [num_frames, 57, 2] float32, the content landmarks (box-normalised) each
      output frame was drawn from: the centre frame of its window, after the silence
      blend; NaN rows for frames passed through.
    silent: [num_frames] bool, frames in a silent span (all False with 'model').
    stage_seconds: seconds per stage ('detection', 'decode', 'prepare', 'paste',
      'watermark', 'encode', ...), summed over the threads running it (`pipeline.StageClock`).
  """
  output: str
  num_frames: int
  passthrough_frames: int
  template_frames: int
  faceless_template_frames: int
  detection_cached: bool
  render_size: int
  seconds: float
  frames_per_second: float
  landmarks: np.ndarray = dataclasses.field(default=None, repr=False, compare=False)
  silent: np.ndarray = dataclasses.field(default=None, repr=False, compare=False)
  stage_seconds: dict[str, float] = dataclasses.field(default_factory=dict)


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
    self.predictor = predictor.Predictor(
        predictor.load_checkpoint(checkpoint_dir), dtype=options.dtype,
        batch_size=options.batch_size, render_size=options.render_size,
        num_refs=options.num_refs, num_landmark_refs=options.num_landmark_refs)

  @classmethod
  def from_predictor(cls, model: predictor.Predictor, options: InferenceOptions) -> LipSyncer:
    """A syncer around a ready predictor (or a stand-in with its interface: host-only
    benchmarks and tests, `ip_lap_jax.inference.standin`)."""
    syncer = cls.__new__(cls)
    syncer.options, syncer.checkpoint_dir, syncer.predictor = options, None, model
    return syncer

  @property
  def batch_size(self) -> int:
    """Windows per device call: the option rounded up to a multiple of the devices."""
    return self.predictor.batch_size

  @property
  def render_size(self) -> int:
    return self.predictor.render_size

  @property
  def variables(self) -> dict[str, jax.Array]:
    """Per model name, its variables on every device."""
    return self.predictor.variables

  def compile(self) -> predictor.CompiledPredictor:
    """Both device functions compiled for this run's fixed shapes (cached per process)."""
    return self.predictor.compile()

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

  def run(self, template: str | os.PathLike[str], audio: str | os.PathLike[str],
          output: str | os.PathLike[str]) -> InferenceResult:
    """Writes the lip-synced video to `output` (mp4)."""
    return self._run(template, audio, output, progress=self.options.progress)

  def run_many(self, jobs: Sequence[jobs_lib.Job | Sequence[str | os.PathLike[str]]]
               ) -> list[jobs_lib.JobOutcome]:
    """Runs every job (`Job`s or (template, audio, output) triples) in order.

    The models are loaded and compiled once (this syncer's); a template used by several
    jobs is detected once (the detection cache). A job that fails is logged with its
    reason and skipped; the others still run. One progress bar counts the clips.

    Returns:
      one `JobOutcome` per job, in order (`jobs.summary` words them).
    """
    from tqdm import tqdm

    todo = jobs_lib.as_jobs(jobs)
    outcomes = []
    with tqdm(total=len(todo), unit="clip", desc="lip sync",
              disable=not self.options.progress) as bar:
      for job in todo:
        bar.set_postfix_str(os.path.basename(job.output))
        try:
          outcomes.append(jobs_lib.JobOutcome(job, result=self._run(
              job.template, job.audio, job.output, progress=False)))
        except Exception as e:  # pylint: disable=broad-except  # reported, then skipped
          logger.error("%s: skipped: %s", job.output, e)
          outcomes.append(jobs_lib.JobOutcome(job, error=str(e) or type(e).__name__))
        bar.update(1)
    return outcomes

  def _run(self, template: str | os.PathLike[str], audio: str | os.PathLike[str],
           output: str | os.PathLike[str], progress: bool) -> InferenceResult:
    start = time.perf_counter()
    opts = self.options
    template, audio, output = os.fspath(template), os.fspath(audio), os.fspath(output)
    info, wav = self.check_inputs(template, audio)
    mel_chunks = audio_lib.inference_mel_chunks(audio_lib.melspectrogram(wav))
    num_out = schedule.output_frame_count(wav.size)
    silent, closing = self._silence(wav, num_out)

    # On an error before `.result()` the compile thread finishes on its own (daemon): the
    # error is reported at once, and a later run finds the executables cached.
    compiling = pipeline.run_in_thread(self.compile, "ip_lap_jax-compile")
    clock = pipeline.StageClock()
    with clock("detection"):
      track, cached = face_track.detect_template(template, small_faces=opts.small_faces,
                                                 cache_dir=opts.cache_dir, face=opts.face_choice)
    geometry = face_track.frame_geometry(track, opts.face_pad)
    if not geometry.usable.any():
      raise MediaError(template, f"no face found in any of its {track.num_frames} frames")
    compiled = compiling.result()
    faceless = int(track.num_frames - geometry.usable.sum())
    if faceless:
      logger.warning("%s: no face in %d of %d frames; they pass through unchanged",
                     template, faceless, track.num_frames)

    plan = pipeline.Plan(track=track, geometry=geometry,
                         fill=schedule.nearest_valid(geometry.usable),
                         mel_chunks=mel_chunks, num_out=num_out, closing=closing)
    target = pipeline.Output(path=output, audio_path=self._audio_track(template, audio, info),
                             metadata=self._metadata(), watermark=opts.watermark,
                             debug_sketch=opts.debug_sketch, progress=progress,
                             crf=opts.crf, preset=opts.preset, workers=opts.workers)
    content = np.full((num_out, landmarks.NUM_CONTENT, 2), np.nan, np.float32)
    with FrameReader(template, track.num_frames,
                     frame_bytes=track.frame_hw[0] * track.frame_hw[1] * 3,
                     budget_bytes=opts.reverse_block_mib << 20) as reader:
      refs = pipeline.prepare_references(plan, reader, self.predictor)
      passthrough = pipeline.run_pipeline(plan, reader, compiled, refs, target, clock,
                                          landmarks_out=content)
    seconds = time.perf_counter() - start
    if passthrough:
      logger.warning("%d of %d output frames had no face and were written unchanged",
                     passthrough, num_out)
    return InferenceResult(output=output, num_frames=num_out, passthrough_frames=passthrough,
                           template_frames=track.num_frames, faceless_template_frames=faceless,
                           detection_cached=cached, render_size=self.render_size,
                           seconds=seconds, frames_per_second=num_out / seconds,
                           landmarks=content, silent=silent,
                           stage_seconds=dict(clock.seconds))

  def _silence(self, wav: np.ndarray, num_out: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(silent [num_out] bool, closing weights [num_out] or None for 'model')."""
    opts = self.options.silence
    if opts.mode == "model":
      return np.zeros(num_out, bool), None
    silent = silence.silent_frames(wav, num_out, opts)
    return silent, silence.closing_weights(silent, opts.ramp_frames)

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
