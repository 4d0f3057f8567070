"""The end-to-end demo on built-in data: `make demo` (or `python -m ip_lap_jax.demo`).

No weights, no dataset, no GPU: everything is generated here and runs through the real
pipeline.

1. data: short clips of scikit-image's astronaut photo whose jaw opens with the loudness
   of synthetic speech (`ip_lap_jax.data.synthetic`), plus held-out clips and a held-out voice;
2. preprocess: the clips into the release's dataset layout (`ip_lap_jax.data.preprocess`);
3. train: both stages with their `smoke` configs (`train.py`'s library);
4. evaluate: on held-out clips, landmark L1 and the correlation between the audio's loudness
   and the predicted lip openness, for the trained and an untrained landmark generator;
5. infer: a held-out clip as template, the held-out voice as speech -> `result.mp4`
   (watermarked), plus `openness.png` and `report.md`.

A second run reuses what is already built (each stage leaves its outputs; delete a folder
under `demo_out/` to redo that stage). `--quick` shrinks everything for tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import pathlib
import sys
import time
from typing import Any, Callable

import numpy as np

log = logging.getLogger("ip_lap_jax.demo")


@dataclasses.dataclass(frozen=True)
class DemoSize:
  """How much the demo generates and trains."""
  train_clips: int = 16
  test_clips: int = 2
  clip_seconds: float = 4.0
  landmark_steps: int = 500
  landmark_batch: int = 8
  landmark_lr: float = 1e-3
  renderer_steps: int = 12
  renderer_batch: int = 1
  # The renderer is convolutional; 64 x 64 faces make its CPU training 4x cheaper. The
  # demo shows the pipeline, not rendering quality (that takes GPU-days on LRS2).
  renderer_image_size: int = 64
  inference_refs: int = 3
  inference_seconds: float = 3.0


FULL = DemoSize()
QUICK = DemoSize(train_clips=3, test_clips=1, clip_seconds=2.0, landmark_steps=4, landmark_batch=4,
                 renderer_steps=1, renderer_batch=1, renderer_image_size=32, inference_refs=1,
                 inference_seconds=1.0)


def _stage(number: int, title: str) -> Callable[[Callable[[], Any]], Any]:
  """Runs a stage with a header line and its wall time."""

  def run(fn: Callable[[], Any]) -> Any:
    print(f"\n[{number}/5] {title}", flush=True)
    start = time.perf_counter()
    out = fn()
    print(f"[{number}/5] done in {time.perf_counter() - start:.0f} s", flush=True)
    return out

  return run


def make_data(out: pathlib.Path, size: DemoSize, seed: int) -> tuple[list[str], list[str], pathlib.Path]:
  """Synthetic clips (train + held-out) and a held-out voice; returns clip names and voice path."""
  from ip_lap_jax.media import audio
  from ip_lap_jax.data import synthetic  # pylint: disable=import-outside-toplevel
  raw = out / "data" / "raw"
  train = synthetic.make_dataset(raw, size.train_clips, size.clip_seconds, seed=seed, speaker="train")
  test = synthetic.make_dataset(raw, size.test_clips, size.clip_seconds, seed=seed + 1, speaker="heldout")
  voice = out / "data" / "heldout_voice.wav"
  if not voice.exists():
    audio.save_wav(voice, synthetic.synth_speech(size.inference_seconds, seed=seed + 2))
  names = lambda paths: [f"{p.parent.name}/{p.stem}" for p in paths]  # noqa: E731
  return names(train), names(test), voice


def preprocess_data(out: pathlib.Path, train: list[str], test: list[str]) -> pathlib.Path:
  """The clips into the release's layout, plus train/test file lists."""
  from ip_lap_jax.data import layout
  from ip_lap_jax.data import preprocess  # pylint: disable=import-outside-toplevel
  prep = out / "data" / "preprocessed"
  summary = preprocess.run(out / "data" / "raw", prep, workers=2)
  failed = summary.get("failed") or {}
  if failed:
    raise RuntimeError(f"preprocessing failed on {sorted(failed)}: see {prep}")
  layout.write_filelist(prep / "train.txt", train)
  layout.write_filelist(prep / "test.txt", test)
  return prep


def evaluate(out: pathlib.Path, prep: pathlib.Path, test: list[str], trained_variables: Any,
             seed: int) -> dict[str, Any]:
  """Landmark L1 and loudness/openness correlation, trained vs untrained; the plot."""
  import jax  # pylint: disable=import-outside-toplevel
  from ip_lap_jax.data import layout
  from ip_lap_jax.demo import evaluation  # pylint: disable=import-outside-toplevel
  from ip_lap_jax.models import registry  # pylint: disable=import-outside-toplevel

  roots = layout.DatasetRoots.under(prep)
  clips = [evaluation.load_clip_windows(roots, name) for name in test]
  spec = registry.official_spec("landmark_generator")
  model = registry.build(spec)
  untrained = registry.init_variables(spec, jax.random.PRNGKey(seed))
  reports = {"untrained": evaluation.evaluate(model, untrained, clips),
             "trained": evaluation.evaluate(model, trained_variables, clips)}
  evaluation.plot(reports, test[0], out / "openness.png")
  return {name: {"landmark_l1": r.l1, "loudness_openness_correlation": r.correlation}
          for name, r in reports.items()}


def write_report(out: pathlib.Path, metrics: dict[str, Any], inference: Any, size: DemoSize,
                 train_metrics: dict[str, Any]) -> str:
  lines = [
      "# ip_lap_jax demo report", "",
      f"Synthetic data: {size.train_clips} training clips and {size.test_clips} held-out clips of "
      f"{size.clip_seconds:g} s (astronaut photo, jaw driven by the loudness of synthetic speech).", "",
      "| landmark generator | held-out landmark L1 | corr(loudness, predicted lip openness) |",
      "|---|---|---|",
  ]
  for name, m in metrics.items():
    lines.append(f"| {name} | {m['landmark_l1']:.4f} | {m['loudness_openness_correlation']:+.3f} |")
  lines += ["", "Training (smoke configs):", "```", json.dumps(train_metrics, indent=1, default=float), "```", ""]
  if inference is not None:
    lines += [f"Inference: `{inference.output}`: {inference.num_frames} frames at 25 fps, "
              f"{inference.frames_per_second:.2f} frames/s on this machine, watermarked.", ""]
  text = "\n".join(lines)
  (out / "report.md").write_text(text)
  return text


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--quick", action="store_true", help="tiny sizes, for tests (meaningless results)")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  size = QUICK if args.quick else FULL
  out = pathlib.Path(args.out).resolve()
  out.mkdir(parents=True, exist_ok=True)

  train, test, voice = _stage(1, "synthetic talking-face data")(lambda: make_data(out, size, args.seed))
  prep = _stage(2, "preprocessing into the release's layout")(lambda: preprocess_data(out, train, test))
  checkpoint, trained_landmarks, train_metrics = _stage(3, "training both stages (smoke configs)")(
      lambda: train_both(out, prep, size, args.seed))
  metrics = _stage(4, "evaluating on held-out clips")(
      lambda: evaluate(out, prep, test, trained_landmarks, args.seed))
  inference = _stage(5, "inference on a held-out clip with a held-out voice")(
      lambda: infer(out, checkpoint, test[0], voice, size))
  print("\n" + write_report(out, metrics, inference, size, train_metrics))
  print(f"outputs: {out / 'result.mp4'}, {out / 'openness.png'}, {out / 'report.md'}")
  return 0


def _train(out: pathlib.Path, stage: str, variant: str, overrides: dict[str, Any]) -> dict[str, Any]:
  """One stage through the training library, resumed if its workdir has checkpoints."""
  import importlib  # pylint: disable=import-outside-toplevel

  import jax  # pylint: disable=import-outside-toplevel
  from ip_lap_jax.training import loop as train_lib  # pylint: disable=import-outside-toplevel
  cfg = importlib.import_module(f"ip_lap_jax.configs.{stage}").get_config(variant)
  for key, value in overrides.items():
    node = cfg
    *parents, leaf = key.split(".")
    for name in parents:
      node = node[name]
    node[leaf] = value
  # All local devices that split the (small) demo batches evenly.
  devices = jax.local_devices()
  while cfg.batch_size % len(devices) or cfg.eval_batch_size % len(devices):
    devices = devices[:-1]
  return cfg, train_lib.train_and_evaluate(cfg, out / "runs" / stage, devices)


def train_both(out: pathlib.Path, prep: pathlib.Path, size: DemoSize, seed: int
               ) -> tuple[pathlib.Path, Any, dict[str, Any]]:
  """Smoke-config training of both stages; exports them where inference reads them.

  Returns (checkpoint dir, trained landmark-generator variables, final metrics).
  """
  from ip_lap_jax import export  # pylint: disable=import-outside-toplevel
  from ip_lap_jax.data import layout  # pylint: disable=import-outside-toplevel
  roots = layout.DatasetRoots.under(prep)
  lists = {"data.train_list": str(prep / "train.txt"), "data.test_list": str(prep / "test.txt")}
  common = {"seed": seed, **lists}
  _, lmk = _train(out, "landmark_generator", "smoke", {
      **common, "data.landmark_root": str(roots.landmark_root), "data.audio_root": str(roots.audio_root),
      "num_train_steps": size.landmark_steps, "batch_size": size.landmark_batch,
      "optimizer.learning_rate": size.landmark_lr,
      "eval_batch_size": size.landmark_batch, "eval_every_steps": max(1, size.landmark_steps // 3),
      "checkpoint_every_steps": max(1, size.landmark_steps // 3), "log_every_steps": max(1, size.landmark_steps // 20)})
  ren_cfg, ren = _train(out, "renderer", "smoke", {
      **common, "data.face_root": str(roots.face_root), "data.sketch_root": str(roots.sketch_root),
      "data.audio_root": str(roots.audio_root), "num_train_steps": size.renderer_steps,
      "data.image_size": size.renderer_image_size,
      "batch_size": size.renderer_batch, "eval_batch_size": size.renderer_batch,
      "eval_every_steps": size.renderer_steps, "checkpoint_every_steps": size.renderer_steps,
      "log_every_steps": max(1, size.renderer_steps // 5)})

  checkpoint = out / "checkpoint"
  lmk_vars = {k: lmk["state"][k] for k in ("params", "batch_stats")}
  trained_now = bool(lmk["train"] or ren["train"])
  for name in ("landmark_generator", "renderer"):
    if trained_now or not (checkpoint / name).is_dir():
      export.export(out / "runs" / name, checkpoint / name, overwrite=True)
  metrics_path = out / "runs" / "train_metrics.json"
  if trained_now:
    metrics = {"landmark_generator": {"train": lmk["train"], "eval": lmk["eval"],
                                      "first_logged": lmk["history"][0][1] if lmk["history"] else {}},
               "renderer": {"train": ren["train"], "eval": ren["eval"], "image_size": ren_cfg.data.image_size}}
    metrics_path.write_text(json.dumps(metrics, indent=1, default=float))
  else:  # both runs were already complete: nothing trained now, report the first run's figures
    metrics = json.loads(metrics_path.read_text())
  return checkpoint, lmk_vars, metrics


def infer(out: pathlib.Path, checkpoint: pathlib.Path, template_clip: str, voice: pathlib.Path,
          size: DemoSize):
  """The real inference pipeline on a held-out clip as template."""
  from ip_lap_jax import inference  # pylint: disable=import-outside-toplevel
  template = out / "data" / "raw" / f"{template_clip}.mp4"
  result = out / "result.mp4"
  newest_input = max(p.stat().st_mtime for p in [voice, *checkpoint.rglob("provenance.json")])
  if result.exists() and result.stat().st_mtime > newest_input:
    print(f"{result} is up to date")
    return None
  options = inference.InferenceOptions(num_refs=size.inference_refs, batch_size=4,
                                       cache_dir=str(out / "cache"))
  return inference.LipSyncer(checkpoint, options).run(template, voice, result)


if __name__ == "__main__":
  sys.exit(main())
