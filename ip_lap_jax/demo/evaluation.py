"""What the demo reports: does the landmark generator open the mouth with the loudness?

On held-out preprocessed clips, every window of T frames goes through the landmark
generator (Nl references at evenly spaced lip-openness ranks of the clip, chosen by
inference's own `select_references`; the windows run through inference's jitted
`predict_content`). From the predicted content landmarks of each window's centre frame
we read the lip openness (`landmarks.lip_openness`: MediaPipe points 0 and 17,
box-normalised) and correlate it with the audio's loudness at that frame. The same
numbers for an untrained model show what training added.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Mapping

import jax
import numpy as np

from ip_lap_jax.constants import CENTRE, WINDOW
from ip_lap_jax.data import layout
from ip_lap_jax.data import synthetic
from ip_lap_jax.face import landmarks
from ip_lap_jax.inference import predictor, schedule
from ip_lap_jax.media import audio
from ip_lap_jax.models.landmark_generator import LandmarkGenerator

T = WINDOW  # frames per window (the release's name)


@dataclasses.dataclass
class ClipWindows:
  """Every full window of one preprocessed clip, ready for the landmark generator."""
  name: str
  centres: np.ndarray  # [K] frame numbers of the windows' centre frames
  mels: np.ndarray  # [K, T, 80, 16, 1]
  pose: np.ndarray  # [K, T, 74, 2]
  content: np.ndarray  # [K, T, 57, 2]
  ref_pose: np.ndarray  # [Nl, 74, 2]
  ref_content: np.ndarray  # [Nl, 57, 2]
  loudness: np.ndarray  # [K] loudness at the centre frames


def load_clip_windows(roots: layout.DatasetRoots, clip: str, num_refs: int = 15) -> ClipWindows:
  """Reads a preprocessed clip and builds all windows whose frames and mels exist."""
  frames = layout.frame_numbers(roots.landmark_root / clip)
  poses, contents = {}, {}
  for f in frames:
    poses[f], contents[f] = layout.load_landmarks(roots.landmark_path(clip, f))
  mel = layout.load_mel(roots.mel_path(clip))  # [80, M]
  wav = audio.load_audio(roots.wav_path(clip))
  loudness = synthetic.frame_loudness(wav, max(frames) + 1)

  windows = []
  for start in frames:
    span = list(range(start, start + T))
    if not all(f in poses for f in span):
      continue
    mel_windows = [audio.training_mel_window(mel, f) for f in span]
    if any(m is None for m in mel_windows):
      continue
    windows.append((span, np.stack(mel_windows)))
  if not windows:
    raise ValueError(f"{clip}: no complete window of {T} frames")

  openness = landmarks.lip_openness(np.stack([contents[f] for f in frames]))
  refs = np.asarray(frames)[schedule.select_references(openness, num_refs)]
  return ClipWindows(
      name=clip,
      centres=np.array([span[CENTRE] for span, _ in windows]),
      mels=np.stack([m for _, m in windows])[..., None].astype(np.float32),
      pose=np.stack([[poses[f] for f in span] for span, _ in windows]).astype(np.float32),
      content=np.stack([[contents[f] for f in span] for span, _ in windows]).astype(np.float32),
      ref_pose=np.stack([poses[f] for f in refs]).astype(np.float32),
      ref_content=np.stack([contents[f] for f in refs]).astype(np.float32),
      loudness=loudness[[span[CENTRE] for span, _ in windows]],
  )


def _padded(x: np.ndarray, rows: int) -> np.ndarray:
  """`x` with copies of its first row appended up to `rows` rows."""
  return np.concatenate([x, np.repeat(x[:1], rows - len(x), axis=0)]) if len(x) < rows else x


def predict(model: LandmarkGenerator, variables: Mapping[str, Any], clip: ClipWindows,
            batch_size: int = 32) -> np.ndarray:
  """Predicted content landmarks of every window: [K, T, 57, 2].

  Batches are padded to `batch_size` rows, so inference's jitted `predict_content`
  compiles once per model for every clip and both sets of variables.
  """
  out = []
  for i in range(0, len(clip.centres), batch_size):
    sl = slice(i, i + batch_size)
    content = predictor.predict_content(
        variables, _padded(clip.mels[sl], batch_size), _padded(clip.pose[sl], batch_size),
        clip.ref_pose, clip.ref_content, model=model)
    out.append(np.asarray(content)[:len(clip.centres[sl])])
  return np.concatenate(out)


@dataclasses.dataclass
class OpennessReport:
  """Per model: landmark L1 against Face Mesh, and openness-loudness correlation."""
  l1: float
  correlation: float
  series: dict[str, dict[str, np.ndarray]]  # clip -> {'centres','loudness','predicted','measured'}


def evaluate(model: LandmarkGenerator, variables: Mapping[str, Any], clips: list[ClipWindows]) -> OpennessReport:
  l1_sum, count = 0.0, 0
  all_pred, all_loud = [], []
  series = {}
  variables = jax.device_put(variables)  # once, not once per batch
  for clip in clips:
    pred = predict(model, variables, clip)
    l1_sum += float(np.abs(pred - clip.content).sum())
    count += pred.size
    predicted = landmarks.lip_openness(pred[:, CENTRE])
    all_pred.append(predicted)
    all_loud.append(clip.loudness)
    series[clip.name] = dict(centres=clip.centres, loudness=clip.loudness, predicted=predicted,
                             measured=landmarks.lip_openness(clip.content[:, CENTRE]))
  pred, loud = np.concatenate(all_pred), np.concatenate(all_loud)
  corr = float(np.corrcoef(pred, loud)[0, 1]) if pred.std() > 0 and loud.std() > 0 else 0.0
  return OpennessReport(l1=l1_sum / count, correlation=corr, series=series)


def plot(reports: Mapping[str, OpennessReport], clip: str, path: os.PathLike[str] | str) -> None:
  """Loudness and lip openness (measured, and predicted by each model) over time."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  def unit(x: np.ndarray) -> np.ndarray:
    return (x - x.min()) / max(float(np.ptp(x)), 1e-9)

  first = next(iter(reports.values())).series[clip]
  seconds = first["centres"] / synthetic.FPS
  fig, ax = plt.subplots(figsize=(10, 3.8))
  ax.fill_between(seconds, unit(first["loudness"]), color="0.85", label="audio loudness (RMS)")
  ax.plot(seconds, unit(first["measured"]), color="k", lw=1, ls="--", label="lip openness, Face Mesh (truth)")
  for (name, report), colour in zip(reports.items(), ("tab:red", "tab:blue")):
    ax.plot(seconds, unit(report.series[clip]["predicted"]), color=colour, lw=1.6,
            label=f"predicted openness, {name} (r = {report.correlation:.2f})")
  ax.set_xlabel("time (s)")
  ax.set_ylabel("normalised")
  ax.set_title(f"held-out clip {clip}: lip openness vs loudness")
  ax.legend(loc="upper right", fontsize=8)
  fig.tight_layout()
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
