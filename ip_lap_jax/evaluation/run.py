"""The talking-face evaluation: generate every test clip, score it, summarise as the paper.

Settings:
  reconstruction  each clip driven by its own audio;
  dubbing         each clip driven by another test clip's audio: a derangement of the list
                  drawn with `seed` (written to `pairs.json`), the audio cut or repeated
                  to the clip's own length (`generate.fit_audio`).

Metrics per clip (averaged over its frames), then over clips in the summary:
  PSNR, SSIM   piq's conventions (`image_metrics`) on the 128 crops (reconstruction only);
  LPIPS        v0.1 AlexNet (`models.lpips`), images mapped [0, 1] -> [-1, 1], RGB
               (reconstruction only);
  LMD          Face Mesh lip (and jaw + lips) landmark distance in 128-crop pixels
               (`landmark_distance`; reconstruction only: in dubbing the truth says
               other words);
  LSE-C, LSE-D SyncNet (`lip_sync`) on the generated crops resized to 224 with the driving
               audio; the ground truth's own LSE is the summary's reference row;
  FID          pytorch-fid's Inception on every generated and every ground-truth frame of
               the whole test set, pooled (one FID, not per batch as in training; images
               in [0, 1], BGR as the release hands them to piq).
A metric whose weights are not given is `n/a` with the flag that enables it.

Outputs in OUT: `clips/<speaker>__<clip>.json` per clip (resumable: a scored clip is
skipped on a rerun; a failed clip records its reason and is retried), `features/` (the
Inception features for FID), `per_clip.csv` (clip, driving audio, metric, value),
`summary.json` and `summary.md`. `run.json` records the settings; a rerun with other
settings into the same OUT is refused.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import functools
import json
import logging
import math
import os
import pathlib
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from ip_lap_jax import files
from ip_lap_jax.data import layout
from ip_lap_jax.evaluation import generate, image_metrics, landmark_distance, lip_sync
from ip_lap_jax.inference import predictor
from ip_lap_jax.models import store

log = logging.getLogger(__name__)

SETTINGS = ("reconstruction", "dubbing")
# Metric name -> the flag whose weights it needs (None: always available).
METRICS = {"psnr": None, "ssim": None, "lpips": "--lpips", "lmd": None, "lmd_jaw_lips": None,
           "lse_c": "--syncnet", "lse_d": "--syncnet", "lse_offset": "--syncnet",
           "gt_lse_c": "--syncnet", "gt_lse_d": "--syncnet", "fid": "--inception"}
RECONSTRUCTION_ONLY = ("psnr", "ssim", "lpips", "lmd", "lmd_jaw_lips")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """What `evaluate` runs (the command line's flags)."""
  checkpoint: str
  data: str
  setting: str = "reconstruction"
  test_list: str | None = None
  syncnet: str | None = None
  lpips: str | None = None
  inception: str | None = None
  num_refs: int = 25
  num_landmark_refs: int = 15
  batch_size: int = 8
  dtype: str = "float32"
  seed: int = 0
  box_px: int = 128

  def __post_init__(self):
    if self.setting not in SETTINGS:
      raise ValueError(f"setting must be one of {SETTINGS}, got {self.setting!r}")


def derangement(names: list[str], seed: int) -> dict[str, str]:
  """clip -> the clip whose audio drives it: a permutation without fixed points (seeded)."""
  if len(names) < 2:
    raise ValueError("dubbing needs at least 2 test clips")
  rng = np.random.default_rng(seed)
  while True:
    order = rng.permutation(len(names))
    if not np.any(order == np.arange(len(names))):
      return {names[i]: names[int(j)] for i, j in enumerate(order)}


def _clip_file(out: pathlib.Path, name: str, suffix: str) -> pathlib.Path:
  return out / ("clips" if suffix == ".json" else "features") / (name.replace("/", "__") + suffix)


# Module level, the modules static: every evaluation in the process shares the executables.
_psnr = jax.jit(image_metrics.psnr)
_ssim = jax.jit(image_metrics.ssim)


@functools.partial(jax.jit, static_argnames="model")
def _apply(variables: Any, images: jax.Array, *, model: Any) -> jax.Array:
  return model.apply(variables, images)


@functools.partial(jax.jit, static_argnames="model")
def _lpips(variables: Any, x: jax.Array, y: jax.Array, *, model: Any) -> jax.Array:
  return model.apply(variables, x, y, normalize=True)


class _Scorers:
  """The metric networks (each only when its weights are given), built once."""

  def __init__(self, cfg: EvalConfig):
    self.sync = self.lpips = self.inception = None
    if cfg.syncnet:
      self.sync = lip_sync.LipSyncScorer(store.load_model(cfg.syncnet, expect="syncnet").variables)
    if cfg.lpips:
      saved = store.load_model(cfg.lpips, expect="lpips")
      self.lpips = (functools.partial(_lpips, model=saved.build()), saved.variables)
    if cfg.inception:
      saved = store.load_model(cfg.inception, expect="inception")
      self.inception = (functools.partial(_apply, model=saved.build()), saved.variables)
    self.psnr = _psnr
    self.ssim = _ssim
    self.landmarks = landmark_distance.MouthLandmarks()

  def close(self) -> None:
    self.landmarks.__exit__()

  def inception_features(self, images: np.ndarray) -> np.ndarray:
    apply, variables = self.inception
    return per_frame(lambda x: apply(variables, x), images)


_CHUNK = 32  # frames per jitted call
# A clip's last chunk is cut to a multiple of this: at most _CHUNK / _CHUNK_BUCKET
# shapes to compile per function, and a short tail does not cost a whole chunk of
# Inception.
_CHUNK_BUCKET = 8


def per_frame(fn: Any, *arrays: np.ndarray) -> np.ndarray:
  """fn over frames [T, ...] of `arrays` in chunks of _CHUNK frames, the last one of the
  fewest multiples of _CHUNK_BUCKET frames that hold the rest (padded with repeats and
  trimmed), concatenated: [T, ...]."""
  t = len(arrays[0])
  outs = []
  for start in range(0, t, _CHUNK):
    rows, take = lip_sync.bucketed_rows(start, t, _CHUNK, _CHUNK_BUCKET)
    outs.append(np.asarray(fn(*(jnp.asarray(a[rows]) for a in arrays)))[:take])
  return np.concatenate(outs)


def _score(clip: generate.Clip, generated: np.ndarray, driving_wav: np.ndarray,
           scorers: _Scorers, setting: str) -> tuple[dict[str, float], dict[str, np.ndarray]]:
  """Metrics of one generated clip (BGR uint8 [T, S, S, 3]) and its FID features."""
  size = generated.shape[1]
  truth = np.stack([generate.resize_square(f, size) for f in clip.faces])
  gen01, gt01 = generated.astype(np.float32) / 255.0, truth.astype(np.float32) / 255.0
  scores: dict[str, float] = {}
  if setting == "reconstruction":
    scores["psnr"] = float(np.mean(per_frame(scorers.psnr, gen01, gt01)))
    scores["ssim"] = float(np.mean(per_frame(scorers.ssim, gen01, gt01)))
    if scorers.lpips is not None:
      apply, variables = scorers.lpips
      lpips = per_frame(lambda x, y: apply(variables, x, y), gen01[..., ::-1], gt01[..., ::-1])
      scores["lpips"] = float(np.mean(lpips))
    distances = landmark_distance.clip_distances(generated, truth, scorers.landmarks)
    scores["lmd"], scores["lmd_jaw_lips"] = distances.lmd, distances.lmd_jaw_lips
  if scorers.sync is not None:
    fitted = generate.fit_audio(driving_wav, clip.num_frames)
    lse = scorers.sync(generated, fitted)
    scores.update(lse_c=lse.lse_c, lse_d=lse.lse_d, lse_offset=float(lse.offset))
    gt = scorers.sync(clip.faces, generate.fit_audio(clip.wav, clip.num_frames))
    scores.update(gt_lse_c=gt.lse_c, gt_lse_d=gt.lse_d)
  features = {}
  if scorers.inception is not None:
    features = {"generated": scorers.inception_features(gen01),
                "gt": scorers.inception_features(gt01)}
  return scores, features


def _prepared_roots(cfg: EvalConfig, out: pathlib.Path) -> tuple[layout.DatasetRoots, list[str]]:
  """The layout to read (preprocessing a folder of raw videos first) and the clip list."""
  data = pathlib.Path(cfg.data)
  if not data.is_dir():
    raise FileNotFoundError(f"{data}: no such data folder")
  if not (data / "landmarks").is_dir():  # raw videos: preprocess them once
    from ip_lap_jax.data import preprocess  # pylint: disable=import-outside-toplevel
    prepared = out / "preprocessed"
    log.info("%s has no landmarks/: preprocessing its videos into %s", data, prepared)
    preprocess.run(data, prepared)
    data = prepared
  roots = layout.DatasetRoots.under(data)
  names = (layout.read_filelist(cfg.test_list) if cfg.test_list
           else layout.make_filelist(roots.landmark_root))
  if not names:
    raise ValueError(f"no test clips (list {cfg.test_list or roots.landmark_root})")
  return roots, names


def _check_run_file(out: pathlib.Path, cfg: EvalConfig) -> None:
  path = out / "run.json"
  settings = dataclasses.asdict(cfg)
  if path.is_file():
    previous = json.loads(path.read_text())
    if previous != settings:
      changed = sorted(k for k in settings if previous.get(k) != settings[k])
      raise ValueError(f"{out} holds an evaluation with other settings ({changed}); "
                       "use another --out")
  else:
    files.write_json_atomic(path, settings)


def evaluate(cfg: EvalConfig, out: str | os.PathLike[str], *, progress: bool = True
             ) -> dict[str, Any]:
  """Runs the evaluation into `out` (layout: the module docstring); returns the summary."""
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel

  out = pathlib.Path(out)
  for sub in ("clips", "features"):
    (out / sub).mkdir(parents=True, exist_ok=True)
  _check_run_file(out, cfg)
  roots, names = _prepared_roots(cfg, out)
  driving = ({n: n for n in names} if cfg.setting == "reconstruction"
             else derangement(names, cfg.seed))
  files.write_json_atomic(out / "pairs.json", {"setting": cfg.setting, "seed": cfg.seed,
                                               "driving_audio": driving})
  todo = [n for n in names if not _done(out, n)]
  if todo:
    generator = generate.Generator(
        predictor.load_checkpoint(cfg.checkpoint), num_refs=cfg.num_refs,
        num_landmark_refs=cfg.num_landmark_refs, batch_size=cfg.batch_size,
        dtype=cfg.dtype, box_px=cfg.box_px)
    scorers = _Scorers(cfg)
    try:
      with tqdm(total=len(names), initial=len(names) - len(todo), unit="clip",
                desc=f"evaluate ({cfg.setting})", disable=not progress) as bar:
        for name, loaded in _prefetched(roots, todo, driving):
          _evaluate_clip(out, name, driving[name], loaded, generator, scorers, cfg.setting)
          bar.update(1)
    finally:
      scorers.close()
  return write_summary(out, names, driving, cfg)


def _done(out: pathlib.Path, name: str) -> bool:
  path = _clip_file(out, name, ".json")
  return path.is_file() and "error" not in json.loads(path.read_text())


def _prefetched(roots: layout.DatasetRoots, names: list[str], driving: dict[str, str]
                ) -> Iterator[tuple[str, Any]]:
  """(name, (clip, driving wav) or the exception) in order, the next clip read in a
  background thread while the current one is generated and scored."""
  def load(name: str) -> Any:
    try:
      clip = generate.load_clip(roots, name)
      source = clip if driving[name] == name else generate.load_clip(roots, driving[name])
      return clip, source.wav
    except Exception as e:  # reported per clip; the run goes on
      return e

  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    pending = pool.submit(load, names[0]) if names else None
    for i, name in enumerate(names):
      loaded = pending.result()
      pending = pool.submit(load, names[i + 1]) if i + 1 < len(names) else None
      yield name, loaded


def _evaluate_clip(out: pathlib.Path, name: str, driving_name: str, loaded: Any,
                   generator: generate.Generator, scorers: _Scorers, setting: str) -> None:
  record: dict[str, Any] = {"clip": name, "driving_audio": driving_name}
  try:
    if isinstance(loaded, Exception):
      raise loaded
    clip, driving_wav = loaded
    generated = generator(clip, driving_wav)
    scores, features = _score(clip, generated, driving_wav, scorers, setting)
    record.update(frames=clip.num_frames, scores=scores)
    if features:
      path = _clip_file(out, name, ".npz")
      tmp = path.with_name(path.name + ".tmp.npz")
      np.savez(tmp, **features)
      os.replace(tmp, path)
  except Exception as e:  # a bad clip is recorded with its reason; the run goes on
    log.warning("%s failed: %s", name, e)
    record["error"] = f"{type(e).__name__}: {e}"
  files.write_json_atomic(_clip_file(out, name, ".json"), record)


def _fid_pooled(out: pathlib.Path, names: list[str]) -> float | None:
  from ip_lap_jax.training import metrics as metrics_lib  # pylint: disable=import-outside-toplevel

  gen, gt = [], []
  for name in names:
    path = _clip_file(out, name, ".npz")
    if path.is_file() and _done(out, name):
      with np.load(path) as features:
        gen.append(features["generated"])
        gt.append(features["gt"])
  if sum(len(g) for g in gen) < 2:
    return None
  return metrics_lib.fid(np.concatenate(gen), np.concatenate(gt))


def write_summary(out: pathlib.Path, names: list[str], driving: dict[str, str],
                  cfg: EvalConfig) -> dict[str, Any]:
  """per_clip.csv, summary.json and summary.md from the per-clip records."""
  records = [json.loads(_clip_file(out, n, ".json").read_text()) for n in names
             if _clip_file(out, n, ".json").is_file()]
  scored = [r for r in records if "error" not in r]
  failed = {r["clip"]: r["error"] for r in records if "error" in r}
  rows = [(r["clip"], r["driving_audio"], k, v) for r in scored for k, v in sorted(r["scores"].items())]
  tmp = out / ".per_clip.csv.tmp"
  with open(tmp, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["clip", "driving_audio", "metric", "value"])
    writer.writerows(rows)
  os.replace(tmp, out / "per_clip.csv")

  enabled = {"--syncnet": cfg.syncnet, "--lpips": cfg.lpips, "--inception": cfg.inception}
  means: dict[str, Any] = {}
  for metric, flag in METRICS.items():
    if cfg.setting == "dubbing" and metric in RECONSTRUCTION_ONLY:
      continue
    if flag is not None and not enabled[flag]:
      means[metric] = f"n/a ({flag} CKPT)"
      continue
    if metric == "fid":
      value = _fid_pooled(out, names)
      means[metric] = value if value is not None else "n/a (fewer than 2 frames)"
      continue
    values = [r["scores"][metric] for r in scored if metric in r["scores"]
              and not math.isnan(r["scores"][metric])]
    means[metric] = float(np.mean(values)) if values else "n/a (no scored clip)"
  summary = {"setting": cfg.setting, "checkpoint": cfg.checkpoint, "clips": len(names),
             "scored": len(scored), "failed": failed, "num_refs": cfg.num_refs,
             "seed": cfg.seed, "metrics": means,
             "fid_note": "one FID over all generated vs all ground-truth frames (pooled)"}
  files.write_json_atomic(out / "summary.json", summary)
  (out / "summary.md").write_text(summary_table(summary))
  return summary


def _cell(value: Any, digits: int = 3) -> str:
  return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def summary_table(summary: dict[str, Any]) -> str:
  """The paper's table layout for one setting, with the ground truth's LSE first."""
  m = summary["metrics"]
  if summary["setting"] == "reconstruction":
    columns = ["psnr", "ssim", "lpips", "fid", "lmd", "lse_c", "lse_d"]
    heads = ["PSNR ↑", "SSIM ↑", "LPIPS ↓", "FID ↓", "LMD ↓", "LSE-C ↑", "LSE-D ↓"]
  else:
    columns, heads = ["fid", "lse_c", "lse_d"], ["FID ↓", "LSE-C ↑", "LSE-D ↓"]
  gt = ["-"] * len(columns)
  gt[-2:] = [_cell(m["gt_lse_c"]), _cell(m["gt_lse_d"])]
  lines = [f"# {summary['setting'].capitalize()}: {summary['scored']} of "
           f"{summary['clips']} clips, N = {summary['num_refs']}", "",
           "| | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|",
           "| ground truth | " + " | ".join(gt) + " |",
           f"| {summary['checkpoint']} | " + " | ".join(_cell(m[c]) for c in columns) + " |",
           "", f"FID: {summary['fid_note']}. LMD in pixels of the 128 crop, Face Mesh lip "
           "points (also jaw + lips in summary.json): not comparable with dlib-68 LMD.",
           f"LMD jaw + lips: {_cell(m.get('lmd_jaw_lips', '-'))}."
           if summary["setting"] == "reconstruction" else "",
           ""]
  if summary["failed"]:
    lines += ["Failed clips:", ""] + [f"- {k}: {v}" for k, v in sorted(summary["failed"].items())]
  return "\n".join(lines) + "\n"
