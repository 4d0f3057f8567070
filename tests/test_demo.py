"""`make demo`'s program, shrunk (`--quick`), run from the package as `pip install .` puts it.

The package is built as a wheel and installed, non-editable, into a new virtualenv; the
commands run with the working directory outside the checkout, so nothing outside the
installed package (the top-level `configs/`, `tests/`, the source tree) can be imported.
Third-party dependencies come from the project's own venv: its site-packages is put on
the new venv's path by a `.pth` line, which does not run that venv's editable-install
hook, so `ip_lap_jax` resolves to the installed wheel (asserted).

One run covers every stage of the user's loop with the installed package: the demo
(synthetic data, preprocessing, smoke training of both stages, export, inference), then
the command-line tools on its outputs: export (with `--pth`), convert (of that `.pth`),
preprocess, and the inference API on the converted checkpoint.

The commands share one persistent JAX compilation cache (a fresh folder per test), so a
program compiled by one command (the demo's train and eval steps on its second run, the
inference programs the API call runs again) is compiled once; and they compile with
`jax_disable_most_optimizations`, since the quick demo's programs run a few times on
tiny arrays. Neither changes what runs, only how long XLA spends compiling it.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import venv

import numpy as np
import pytest

from ip_lap_jax.demo import run as demo
from ip_lap_jax.media import video
from ip_lap_jax.media import watermark

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> pathlib.Path:
  """Python of a new venv with the project's wheel installed (not editable)."""
  root = tmp_path_factory.mktemp("installed")
  # A copy of the sources: setuptools builds in-tree, and a stale build/ in the checkout
  # would put modules into the wheel that the sources no longer have.
  source = root / "source"
  shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
      ".git", ".venv", "build", "*.egg-info", "__pycache__", "demo_out", "tests"))
  wheels = root / "wheels"
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "-q", "-w", str(wheels), str(source)], check=True, cwd=root, timeout=600)
  env_dir = root / "venv"
  venv.EnvBuilder(with_pip=False).create(env_dir)
  python = env_dir / "bin" / "python"
  site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        check=True, capture_output=True, text=True).stdout.strip()
  (pathlib.Path(site) / "project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
  wheel = next(wheels.glob("ip_lap_jax-*.whl"))
  subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", site,
                  str(wheel)], check=True, timeout=600)
  where = subprocess.run([str(python), "-c", "import ip_lap_jax; print(ip_lap_jax.__file__)"],
                         check=True, capture_output=True, text=True, cwd=root).stdout.strip()
  assert where.startswith(site), f"ip_lap_jax imported from {where}, not the installed wheel"
  return python


def _run(python: pathlib.Path, *args: str, cwd: pathlib.Path) -> str:
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env.update(JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1",
             JAX_COMPILATION_CACHE_DIR=str(cwd / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
  result = subprocess.run([str(python), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=1800, env=env)
  assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
  return result.stdout


def test_quick_demo_and_tools_from_installed_package(installed, tmp_path):
  out = tmp_path / "demo out"
  _run(installed, "-m", "ip_lap_jax.demo.run", "--quick", "--out", str(out), cwd=tmp_path)

  # Data, preprocessing (official layout), training checkpoints, exported weights.
  assert len(list((out / "data" / "raw" / "train").glob("*.mp4"))) == demo.QUICK.train_clips
  summary = json.loads((out / "data" / "preprocessed" / "preprocess_summary.json").read_text())
  assert not summary.get("failed")
  assert (out / "data" / "preprocessed" / "train.txt").read_text().split() == \
      [f"train/clip{i:03d}" for i in range(demo.QUICK.train_clips)]
  for stage in ("landmark_generator", "renderer"):
    assert any((out / "runs" / stage / "checkpoints").iterdir())
    assert (out / "checkpoint" / stage / "variables").is_dir()
    spec = json.loads((out / "checkpoint" / stage / "model.json").read_text())
    assert spec["name"] == stage
  assert spec["image_size"] == demo.QUICK.renderer_image_size

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
  _run(installed, "-m", "ip_lap_jax.demo.run", "--quick", "--out", str(out), cwd=tmp_path)
  assert {p: p.stat().st_mtime for p in (out / "data" / "raw").rglob("*.mp4")} == mtimes
  metrics = json.loads((out / "runs" / "train_metrics.json").read_text())
  assert np.isfinite(metrics["landmark_generator"]["train"]["loss"])

  # export -> .pth -> convert: the official format round trip, with the installed tools.
  ckpt = tmp_path / "ckpt"
  _run(installed, "-m", "ip_lap_jax.export", "--workdir", str(out / "runs" / "landmark_generator"),
       "--out", str(tmp_path / "exported"), "--pth", str(tmp_path / "lmk.pth"), cwd=tmp_path)
  _run(installed, "-m", "ip_lap_jax.convert", "--src", str(tmp_path / "lmk.pth"),
       "--out", str(ckpt / "landmark_generator"), cwd=tmp_path)
  _run(installed, "-m", "ip_lap_jax.export", "--workdir", str(out / "runs" / "renderer"),
       "--out", str(ckpt / "renderer"), "--step", "best", cwd=tmp_path)

  # preprocess one held-out clip with the installed command.
  template = out / "data" / "raw" / "heldout" / "clip000.mp4"
  (tmp_path / "raw" / "speaker").mkdir(parents=True)
  shutil.copy(template, tmp_path / "raw" / "speaker" / "clip.mp4")
  prep = tmp_path / "prep"
  _run(installed, "-m", "ip_lap_jax.data.preprocess", "--input", str(tmp_path / "raw"),
       "--output", str(prep), "--workers", "1", "--no-progress", cwd=tmp_path)
  assert not json.loads((prep / "preprocess_summary.json").read_text()).get("failed")
  assert len(list((prep / "faces" / "speaker" / "clip").glob("*.png"))) == \
      video.probe(template).num_frames

  # The inference API on the converted + exported checkpoint. The demo's batch size and
  # references, so its inference programs come from the compilation cache.
  script = (
      "import sys\n"
      "from ip_lap_jax import inference\n"
      "options = inference.InferenceOptions(num_refs=1, batch_size=4, progress=False,\n"
      "                                     cache_dir=sys.argv[4])\n"
      "inference.LipSyncer(sys.argv[1], options).run(sys.argv[2], sys.argv[2], sys.argv[3])\n")
  _run(installed, "-c", script, str(ckpt), str(template), str(tmp_path / "api.mp4"),
       str(tmp_path / "cache"), cwd=tmp_path)
  assert video.probe(tmp_path / "api.mp4").num_frames == video.probe(template).num_frames
