"""Every trained variant exports and runs in inference, mixed with official partners.

Each smoke variant trains one step on the tiny layout of `train_fixtures` (CPU, one
device, batch 1), `ip_lap_jax.export` turns its run into a saved model, and `LipSyncer`
renders a short synthetic clip with it beside a partner of the official architecture:
the LSTM landmark generator with the default renderer, each renderer ablation (one at
32 px) with an official landmark generator. Inference renders at the renderer spec's
image size. Compiling dominates the time, so runs are shared by module fixtures.
Also: the `python -m ip_lap_jax.export` command line (--step N / latest / best / a bad
step, --pth read back by the converter).
"""

from __future__ import annotations

import functools
import importlib
import pathlib
import subprocess
import sys
from typing import Any, Callable

import jax
import numpy as np
import pytest

from ip_lap_jax import export, inference
from ip_lap_jax.conversion import read_torch_checkpoint, state_dict_to_variables
from ip_lap_jax.data import synthetic
from ip_lap_jax.media import audio as audio_lib
from ip_lap_jax.media import video
from ip_lap_jax.models import registry, store, structure
from ip_lap_jax.training import loop as train_lib
from tests import train_fixtures

pytestmark = pytest.mark.usefixtures("fast_compiles")

REPO = pathlib.Path(__file__).resolve().parents[1]
SPEECH_SECONDS = 0.6  # 15 output frames


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> dict[str, str]:
  root = tmp_path_factory.mktemp("variant_layout")
  roots = train_fixtures.build_layout(root, {"s/a": 30, "t/c": 30})
  roots["train"] = train_fixtures.write_list(root / "train.txt", ["s/a"])
  roots["test"] = train_fixtures.write_list(root / "test.txt", ["t/c"])
  return roots


def _train(layout: dict[str, str], workdir: pathlib.Path, stage: str, variant: str,
           steps: int, overrides: dict[str, Any]) -> pathlib.Path:
  """`steps` training steps of a config variant, evaluated and checkpointed at each."""
  cfg = importlib.import_module(f"ip_lap_jax.configs.{stage}").get_config(variant)
  cfg.data.audio_root = layout["audio"]
  cfg.data.train_list, cfg.data.test_list = layout["train"], layout["test"]
  if stage == "landmark_generator":
    cfg.data.landmark_root = layout["landmarks"]
    cfg.model.nlayers = 1  # a smaller variant is still a variant; compiles faster
  else:
    cfg.data.face_root, cfg.data.sketch_root = layout["faces"], layout["sketches"]
    cfg.discriminator.update(num_d=1, n_layers=1, ndf=8)  # not part of the renderer
    # How the 3x3 convolutions compute is speed only and recorded in the spec; CPU's
    # 'auto' (Winograd) quadruples the train step's program and, unoptimised, runs slower.
    cfg.model.conv_algorithm = "direct"
    cfg.num_sample_images = 1
  cfg.batch_size = cfg.eval_batch_size = 1
  cfg.num_train_steps = steps
  cfg.log_every_steps = cfg.eval_every_steps = cfg.checkpoint_every_steps = 1
  cfg.eval_num_batches = 1
  cfg.update_from_flattened_dict(overrides)
  # One device: the conftest's 8 fake CPU devices would run 8 copies of each example.
  train_lib.train_and_evaluate(cfg, workdir, jax.devices()[:1])
  return workdir


# Run name -> (config module, variant, training steps, config overrides).
_RECIPES = {
    "lstm": ("landmark_generator", "smoke,lstm", 2, {}),  # two steps for --step best
    "renderer": ("renderer", "smoke", 1, {}),
    "no_warp": ("renderer", "smoke,no_warp", 1, {}),
    "no_audio_32px": ("renderer", "smoke,no_audio", 1, {"data.image_size": 32}),
}


@pytest.fixture(scope="module")
def runs(layout, tmp_path_factory) -> Callable[[str], pathlib.Path]:
  """Run name -> its training run directory, trained on first use, shared by the module."""

  @functools.cache
  def run(name: str) -> pathlib.Path:
    return _train(layout, tmp_path_factory.mktemp(f"run_{name}"), *_RECIPES[name])

  return run


@pytest.fixture(scope="module")
def saved(runs, tmp_path_factory) -> Callable[[str], pathlib.Path]:
  """Saved-model name -> its directory: an exported run, or 'official_lg' (random init)."""
  root = tmp_path_factory.mktemp("saved")

  @functools.cache
  def model(name: str) -> pathlib.Path:
    if name == "official_lg":
      spec = registry.official_spec("landmark_generator")
      store.save_model(root / name, spec, registry.init_variables(spec, jax.random.key(0)))
    else:
      export.export(runs(name), root / name)
    return root / name

  return model


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
  """(template: 10 frames of the synthetic talking photo, speech: 0.6 s wav)."""
  root = tmp_path_factory.mktemp("media")
  actor = synthetic.TalkingPhoto.from_photo(synthetic.default_photo(size=160))
  synthetic.write_clip(synthetic.make_clip(actor, 0.4, seed=1), root / "template.mp4")
  audio_lib.save_wav(root / "speech.wav", synthetic.synth_speech(SPEECH_SECONDS, seed=2))
  return root / "template.mp4", root / "speech.wav"


@pytest.mark.parametrize("landmark_generator,renderer,size", [
    ("lstm", "renderer", 64),
    ("official_lg", "no_warp", 64),
    ("official_lg", "no_audio_32px", 32),
])
def test_exported_variant_runs_in_inference(saved, media, tmp_path, landmark_generator,
                                            renderer, size):
  ckpt = tmp_path / "ckpt"
  ckpt.mkdir()
  (ckpt / "landmark_generator").symlink_to(saved(landmark_generator))
  (ckpt / "renderer").symlink_to(saved(renderer))
  template, speech = media
  options = inference.InferenceOptions(num_refs=2, batch_size=2, render_size=None,
                                       progress=False, watermark=False,
                                       cache_dir=str(tmp_path.parent / "face_cache"))
  syncer = inference.LipSyncer(ckpt, options)
  specs = syncer.predictor.specs
  assert specs["landmark_generator"].config["generator"] == (
      "lstm" if landmark_generator == "lstm" else "transformer")
  assert specs["renderer"].config["use_warping"] == (renderer != "no_warp")
  assert specs["renderer"].config["use_audio"] == (renderer != "no_audio_32px")
  assert specs["renderer"].image_size == size

  result = syncer.run(template, speech, tmp_path / "out.mp4")
  assert result.render_size == size == syncer.render_size
  assert result.num_frames == round(SPEECH_SECONDS * 25) and result.passthrough_frames == 0
  info = video.probe(tmp_path / "out.mp4")
  assert info.num_frames == result.num_frames and (info.height, info.width) == (160, 160)


def _export_cli(*args: str) -> None:
  """`python -m ip_lap_jax.export ARGS` in this process (its `main`)."""
  assert export.main(list(args)) == 0


def test_export_cli_steps(runs, tmp_path, capsys):
  run = runs("lstm")  # two steps, both evaluated and kept
  exported = {}
  for step in ("1", "2", "latest"):
    _export_cli("--workdir", str(run), "--out", str(tmp_path / step), "--step", step)
    exported[step] = store.read_provenance(tmp_path / step)
  assert [exported[s]["step"] for s in ("1", "2", "latest")] == [1, 2, 2]
  assert "exported landmark_generator step 1" in capsys.readouterr().out
  model = store.load_model(tmp_path / "1", expect="landmark_generator")
  assert model.spec.config["generator"] == "lstm"

  # The real command line: a step that was not kept fails with the kept ones named.
  proc = subprocess.run(
      [sys.executable, "-m", "ip_lap_jax.export", "--workdir", str(run),
       "--out", str(tmp_path / "bad"), "--step", "7"],
      capture_output=True, text=True, timeout=300, cwd=REPO)
  assert proc.returncode == 2
  assert "no checkpoint at step '7'; kept steps: [1, 2]" in proc.stderr
  assert not (tmp_path / "bad").exists()
  with pytest.raises(SystemExit, match="2"):
    export.main(["--workdir", str(run), "--out", str(tmp_path / "bad"), "--step", "first"])
  assert "no checkpoint at step 'first'" in capsys.readouterr().err


def test_export_cli_best_step(runs, tmp_path):
  run = runs("lstm")
  l1 = {}
  for step in ("best", "1", "2"):
    _export_cli("--workdir", str(run), "--out", str(tmp_path / step), "--step", step)
    l1[step] = store.read_provenance(tmp_path / step)["eval_metrics"]["eval/l1"]
  best = store.read_provenance(tmp_path / "best")["step"]
  assert l1["best"] == min(l1["1"], l1["2"]) == l1[str(best)]


def test_export_cli_pth_reads_back(runs, tmp_path):
  pytest.importorskip("torch")
  run = runs("renderer")
  _export_cli("--workdir", str(run), "--out", str(tmp_path / "saved"),
              "--pth", str(tmp_path / "renderer.pth"))
  model = store.load_model(tmp_path / "saved", expect="renderer")
  state_dict = read_torch_checkpoint(tmp_path / "renderer.pth")
  converted = state_dict_to_variables(state_dict, registry.variables_template(model.spec))
  want, got = structure.flatten(model.variables), structure.flatten(converted)
  assert want.keys() == got.keys() and len(want) > 100
  for path, value in want.items():
    np.testing.assert_array_equal(got[path], value, err_msg="/".join(path))
