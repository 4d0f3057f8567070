"""`make demo`'s program, shrunk (`--quick`): every stage runs and leaves its outputs."""

import json

import numpy as np

from ip_lap_jax.demo import run as demo
from ip_lap_jax.media import video
from ip_lap_jax.media import watermark


def test_quick_demo_end_to_end(tmp_path):
  out = tmp_path / "demo out"
  assert demo.main(["--quick", "--out", str(out)]) == 0

  # Data, preprocessing (official layout), training checkpoints, exported weights.
  assert len(list((out / "data" / "raw" / "train").glob("*.mp4"))) == demo.QUICK.train_clips
  summary = json.loads((out / "data" / "preprocessed" / "preprocess_summary.json").read_text())
  assert not summary.get("failed")
  assert (out / "data" / "preprocessed" / "train.txt").read_text().split() == \
      [f"train/clip{i:03d}" for i in range(demo.QUICK.train_clips)]
  for stage in ("landmark_generator", "renderer"):
    assert any((out / "runs" / stage / "checkpoints").iterdir())
    assert (out / "checkpoint" / stage / "variables").is_dir()

  # The watermarked result: 25 fps, as long as the held-out voice.
  info = video.probe(out / "result.mp4")
  assert info.fps == 25 and info.has_audio
  assert info.num_frames == round(demo.QUICK.inference_seconds * 25)
  assert watermark.detect_video(out / "result.mp4").found

  report = (out / "report.md").read_text()
  assert "| untrained |" in report and "| trained |" in report
  assert (out / "openness.png").stat().st_size > 10_000

  # A second run reuses everything: no new data, no new training steps.
  mtimes = {p: p.stat().st_mtime for p in (out / "data" / "raw").rglob("*.mp4")}
  assert demo.main(["--quick", "--out", str(out)]) == 0
  assert {p: p.stat().st_mtime for p in (out / "data" / "raw").rglob("*.mp4")} == mtimes
  metrics = json.loads((out / "runs" / "train_metrics.json").read_text())
  assert np.isfinite(metrics["landmark_generator"]["train"]["loss"])
