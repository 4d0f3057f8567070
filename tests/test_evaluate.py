"""`python -m ip_lap_jax.evaluate` end to end on generated clips, random weights for every
network (landmark generator, renderer at 32 px, SyncNet, LPIPS, FID Inception)."""

from __future__ import annotations

import csv
import json
import pathlib
import shutil
from typing import Callable

import jax
import numpy as np
import pytest

from ip_lap_jax import evaluate as evaluate_cli
from ip_lap_jax.data import preprocess, synthetic
from ip_lap_jax.evaluation import generate, run
from ip_lap_jax.models import registry, store

CLIP_SECONDS = 0.64  # 16 frames: 11 SyncNet windows (>= 6); 14 generation windows, 4 batches


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, pathlib.Path]:
  """Three preprocessed synthetic clips, and saved random-weight models."""
  root = tmp_path_factory.mktemp("evaluate")
  synthetic.make_dataset(root / "raw", 3, CLIP_SECONDS, seed=5, speaker="spk")
  summary = preprocess.run(root / "raw", root / "data", workers=1, progress=False)
  assert not summary.get("failed")
  (root / "test.txt").write_text("".join(f"spk/clip{i:03d}\n" for i in range(3)))
  specs = {"landmark_generator": registry.official_spec("landmark_generator"),
           "renderer": registry.official_spec("renderer").replace(image_size=32),
           "syncnet": registry.official_spec("syncnet"),
           "lpips": registry.official_spec("lpips"),
           "inception": registry.official_spec("inception")}
  # Each init runs once: XLA's optimisations would cost more compile time than they save.
  old = jax.config.values["jax_disable_most_optimizations"]
  jax.config.update("jax_disable_most_optimizations", True)
  try:
    for i, (name, spec) in enumerate(specs.items()):
      variables = registry.init_variables(spec, jax.random.key(i))
      folder = root / "ckpt" / name if name in ("landmark_generator", "renderer") else root / name
      store.save_model(folder, spec, variables, provenance={"model": name})
  finally:
    jax.config.update("jax_disable_most_optimizations", old)
  return {"root": root, "data": root / "data", "list": root / "test.txt",
          "ckpt": root / "ckpt", "syncnet": root / "syncnet", "lpips": root / "lpips",
          "inception": root / "inception"}


def _config(s: dict[str, pathlib.Path], setting: str, **kw) -> run.EvalConfig:
  return run.EvalConfig(checkpoint=str(s["ckpt"]), data=str(s["data"]), setting=setting,
                        test_list=str(s["list"]), syncnet=str(s["syncnet"]),
                        lpips=str(s["lpips"]), inception=str(s["inception"]), num_refs=2,
                        batch_size=4, **kw)


@pytest.fixture(scope="module")
def evaluated(setup, tmp_path_factory) -> Callable[[str], tuple[dict, pathlib.Path]]:
  """setting -> (summary, output folder) of its evaluation with every metric network: run
  once, on first use, and read by several tests (which must not change the folder)."""
  runs: dict[str, tuple[dict, pathlib.Path]] = {}

  def get(setting: str) -> tuple[dict, pathlib.Path]:
    if setting not in runs:
      out = tmp_path_factory.mktemp(setting)
      runs[setting] = run.evaluate(_config(setup, setting), out, progress=False), out
    return runs[setting]

  return get


@pytest.mark.parametrize("setting", run.SETTINGS)
def test_both_settings_write_all_outputs(evaluated, setting):
  summary, out = evaluated(setting)
  assert summary["scored"] == 3 and not summary["failed"]
  metrics = summary["metrics"]
  expected = (["psnr", "ssim", "lpips", "lmd", "lmd_jaw_lips"] if setting == "reconstruction"
              else []) + ["lse_c", "lse_d", "gt_lse_c", "gt_lse_d", "fid"]
  for name in expected:
    if name.startswith("lmd") and isinstance(metrics[name], str):
      # Random weights paint noise, in which Face Mesh finds no mouth to measure.
      assert metrics[name] == "n/a (no scored clip)"
      continue
    assert isinstance(metrics[name], float) and np.isfinite(metrics[name]), (name, metrics[name])
  if setting == "dubbing":
    assert "psnr" not in metrics
    pairs = json.loads((out / "pairs.json").read_text())["driving_audio"]
    assert sorted(pairs) == sorted(pairs.values()) and all(k != v for k, v in pairs.items())
  with open(out / "per_clip.csv", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  assert {r["clip"] for r in rows} == {f"spk/clip{i:03d}" for i in range(3)}
  assert {r["metric"] for r in rows} >= set(expected) - {"fid"}
  table = (out / "summary.md").read_text()
  assert "| ground truth |" in table and "LSE-C" in table and "pooled" in table


def test_missing_weights_are_na_and_resume_gives_the_same_summary(setup, evaluated, tmp_path,
                                                                  monkeypatch):
  cfg = run.EvalConfig(checkpoint=str(setup["ckpt"]), data=str(setup["data"]),
                       test_list=str(setup["list"]), num_refs=2, batch_size=4)
  calls = []
  original = run._evaluate_clip

  def interrupted(*args, **kwargs):
    if len(calls) == 1:
      raise KeyboardInterrupt
    calls.append(args[1])
    return original(*args, **kwargs)

  monkeypatch.setattr(run, "_evaluate_clip", interrupted)
  with pytest.raises(KeyboardInterrupt):
    run.evaluate(cfg, tmp_path / "resumed", progress=False)
  monkeypatch.setattr(run, "_evaluate_clip", original)
  assert len(list((tmp_path / "resumed" / "clips").glob("*.json"))) == 1
  resumed = run.evaluate(cfg, tmp_path / "resumed", progress=False)
  # The uninterrupted run: the module's reconstruction run (the metric networks do not
  # change what is generated), summarised by evaluate without their weights; every clip
  # is done, so nothing is generated again.
  shutil.copytree(evaluated("reconstruction")[1], tmp_path / "whole")
  (tmp_path / "whole" / "run.json").unlink()  # it records the weights
  whole = run.evaluate(cfg, tmp_path / "whole", progress=False)
  assert len(list((tmp_path / "whole" / "clips").glob("*.json"))) == 3
  assert resumed["metrics"] == whole["metrics"]
  assert resumed["metrics"]["lse_c"] == "n/a (--syncnet CKPT)"
  assert resumed["metrics"]["lpips"] == "n/a (--lpips CKPT)"
  assert resumed["metrics"]["fid"] == "n/a (--inception CKPT)"
  with pytest.raises(ValueError, match="other settings"):
    run.evaluate(dataclass_replace(cfg, num_refs=3), tmp_path / "whole", progress=False)


def dataclass_replace(cfg: run.EvalConfig, **changes) -> run.EvalConfig:
  import dataclasses
  return dataclasses.replace(cfg, **changes)


def test_corrupt_clip_is_recorded_and_skipped(setup, tmp_path, capsys):
  data = tmp_path / "data"
  shutil.copytree(setup["data"], data)
  broken = sorted((data / "faces" / "spk" / "clip001").glob("*.png"))[3]
  broken.write_bytes(b"not a png")
  args = ["--checkpoint", str(setup["ckpt"]), "--data", str(data), "--list", str(setup["list"]),
          "--out", str(tmp_path / "out"), "--num-refs", "2", "--batch-size", "4",
          "--no-progress"]
  assert evaluate_cli.main(args) == 1  # a failed clip makes the exit status non-zero
  summary = json.loads((tmp_path / "out" / "summary.json").read_text())
  assert summary["scored"] == 2 and list(summary["failed"]) == ["spk/clip001"]
  assert "unreadable image" in summary["failed"]["spk/clip001"]
  assert "Failed clips" in capsys.readouterr().out


def test_ground_truth_against_itself(setup):
  """Identical images: PSNR at piq's cap (10 log10(1 / 1e-8) = 80 dB: piq adds eps 1e-8 to
  the MSE, so it is finite), SSIM 1, LPIPS 0, LMD 0."""
  cfg = _config(setup, "reconstruction")
  scorers = run._Scorers(cfg)
  try:
    clip = generate.load_clip(generate.layout.DatasetRoots.under(setup["data"]), "spk/clip000")
    scores, features = run._score(clip, clip.faces, clip.wav, scorers, "reconstruction")
  finally:
    scorers.close()
  assert scores["psnr"] == pytest.approx(80.0)
  assert scores["ssim"] == pytest.approx(1.0, abs=1e-6)
  assert scores["lpips"] == pytest.approx(0.0, abs=1e-6)
  assert scores["lmd"] == 0.0 and scores["lmd_jaw_lips"] == 0.0
  np.testing.assert_allclose(features["generated"], features["gt"])
  assert scores["lse_c"] == pytest.approx(scores["gt_lse_c"])


def test_per_frame_chunks_cover_every_frame_once():
  """Full chunks of run._CHUNK, the last cut to a multiple of run._CHUNK_BUCKET; outputs
  trimmed back to one per frame, in order."""
  sizes = []

  def fn(x: jax.Array, y: jax.Array) -> jax.Array:
    sizes.append(len(x))
    return x * 10 + y

  for t in (1, 5, 8, 13, 32, 45, 64):
    sizes.clear()
    x = np.arange(t, dtype=np.float32)
    np.testing.assert_array_equal(run.per_frame(fn, x, x[::-1].copy()), x * 10 + x[::-1])
    assert all(s % run._CHUNK_BUCKET == 0 and s <= run._CHUNK for s in sizes), (t, sizes)
    assert sizes[:-1] == [run._CHUNK] * (len(sizes) - 1) and sum(sizes) - t < run._CHUNK_BUCKET
