"""Checkpoint conversion: key rule, checked conversion, lossless round trips, files, CLI."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from ip_lap_jax import convert
from ip_lap_jax import conversion
from ip_lap_jax.models import registry, store
from torch_mirror.common import randomize_batchnorm_stats, save_official_checkpoint
from torch_mirror.discriminator import MultiscaleDiscriminatorTorch
from torch_mirror.inception import FIDInceptionV3Torch
from torch_mirror.landmark_generator import Landmark_generator
from torch_mirror.renderer import RendererTorch
from torch_mirror.vgg import vgg19_features
from tests.conversion_asserts import assert_conversion_error

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _mirror_state_dict(model: str) -> dict[str, torch.Tensor]:
  torch.manual_seed(0)
  if model == "landmark_generator":
    module = Landmark_generator()
  elif model == "renderer":
    module = RendererTorch()
  elif model == "discriminator":
    module = MultiscaleDiscriminatorTorch()
  elif model == "inception":
    module = FIDInceptionV3Torch()
  elif model == "syncnet":
    from torch_mirror.syncnet import S
    module = S()
  elif model == "lpips":  # torchvision's AlexNet features + lpips's heads
    from torch_mirror.torchvision_standin import AlexNet
    heads = {f"lin{l}.model.1.weight": torch.randn(1, c, 1, 1)
             for l, c in enumerate((64, 192, 384, 256, 256))}
    return {**{k: v for k, v in AlexNet().state_dict().items() if k.startswith("features.")},
            **heads}
  else:
    return {f"features.{k}": v for k, v in vgg19_features().state_dict().items()}
  return randomize_batchnorm_stats(module, seed=1).state_dict()


@pytest.fixture(scope="module")
def lg_state_dict() -> dict[str, torch.Tensor]:
  return _mirror_state_dict("landmark_generator")


@pytest.fixture(scope="module")
def lg_template() -> dict:
  return registry.official_template("landmark_generator")


def _assert_state_dicts_equal(got, want) -> None:
  assert set(got) == set(want), (sorted(set(got) ^ set(want)))[:10]
  for key, value in want.items():
    value = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
    other = got[key].numpy() if hasattr(got[key], "numpy") else np.asarray(got[key])
    assert other.dtype == value.dtype, key
    assert other.shape == value.shape, key
    assert np.array_equal(other, value), key


@pytest.mark.parametrize("key,expected", [
    ("mel_encoder.0.conv_block.0.weight", ("params", ("mel_encoder_0", "conv_block_0", "kernel"))),
    ("module.mel_encoder.0.conv_block.1.weight",
     ("params", ("mel_encoder_0", "conv_block_1", "scale"))),
    ("mel_encoder.0.conv_block.1.running_var",
     ("batch_stats", ("mel_encoder_0", "conv_block_1", "var"))),
    ("flow_module.conv_5.0.weight", ("params", ("flow_module", "conv_5_0", "kernel"))),
    ("scale0_layer1.0.weight", ("params", ("scale0_layer1_0", "kernel"))),
    ("translation.spade_1.spade_layer_1.gamma.bias",
     ("params", ("translation", "spade_1", "spade_layer_1", "gamma", "bias"))),
    ("fusion_transformer.transformer_encoder.layers.3.self_attn.in_proj_weight",
     ("params", ("fusion_transformer", "transformer_encoder", "layers_3", "self_attn", "in_proj",
                 "kernel"))),
    ("ref_encoder.4.conv_block.1.num_batches_tracked",
     ("extras", ("ref_encoder_4", "conv_block_1", "num_batches_tracked"))),
])
def test_key_rule(key, expected):
  ndim = 1 if key.endswith("1.weight") and "conv_block" in key else 4
  assert conversion.torch_key_to_flax(key, ndim) == expected
  collection, path = expected
  if collection != "extras":
    assert conversion.flax_path_to_torch_key(collection, path) == conversion.strip_module_prefix(key)


@pytest.mark.parametrize("model", registry.NAMES)
def test_round_trip_in_memory_is_lossless(model):
  state = _mirror_state_dict(model)
  assert conversion.detect_model(state) == model
  items = conversion.split_state_dict(state, model)
  rebuilt = {}
  for item, sub_state in items.items():
    template = registry.official_template("vgg19" if item == "vgg19" else model)
    variables, extras = conversion.state_dict_to_variables(sub_state, template, return_extras=True)
    prefix = "perceptual.model." if item == "vgg19" and model == "renderer" else ""
    rebuilt.update(conversion.variables_to_state_dict(variables, extras, prefix=prefix))
  if model == "vgg19":
    rebuilt = {"features." + k[len("network."):]: v for k, v in rebuilt.items()}
  _assert_state_dicts_equal(rebuilt, state)


def test_kernels_are_transposed(lg_state_dict, lg_template):
  variables = conversion.state_dict_to_variables(lg_state_dict, lg_template)
  params, stats = variables["params"], variables["batch_stats"]
  np.testing.assert_array_equal(params["mel_encoder_3"]["conv_block_0"]["kernel"],
                                lg_state_dict["mel_encoder.3.conv_block.0.weight"].numpy()
                                .transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["ref_encoder_1"]["conv_block_0"]["kernel"],
                                lg_state_dict["ref_encoder.1.conv_block.0.weight"].numpy()
                                .transpose(2, 1, 0))
  layer = params["fusion_transformer"]["transformer_encoder"]["layers_2"]
  np.testing.assert_array_equal(
      layer["self_attn"]["in_proj"]["kernel"],
      lg_state_dict["fusion_transformer.transformer_encoder.layers.2.self_attn.in_proj_weight"]
      .numpy().T)
  np.testing.assert_array_equal(params["fusion_transformer"]["modality"]["embedding"],
                                lg_state_dict["fusion_transformer.modality.weight"].numpy())
  np.testing.assert_array_equal(stats["pose_encoder_7"]["conv_block_1"]["var"],
                                lg_state_dict["pose_encoder.7.conv_block.1.running_var"].numpy())


def test_errors_name_every_bad_key_at_once(lg_state_dict, lg_template):
  bad = dict(lg_state_dict)
  bad["fusion_transformer.extra_head.weight"] = torch.zeros(3, 3)
  del bad["mouse_keypoint_map.bias"]
  bad["jaw_keypoint_map.weight"] = torch.zeros(35, 512)
  pe = bad["fusion_transformer.position_a.pe"].clone()
  pe[0, 3, 0] += 0.5
  bad["fusion_transformer.position_a.pe"] = pe
  message = assert_conversion_error(
      bad, lg_template, unknown="fusion_transformer.extra_head.weight",
      missing="mouse_keypoint_map.bias", misshaped="jaw_keypoint_map.weight")
  assert "(512, 35)" in message and "(512, 34)" in message
  assert "fusion_transformer.position_a.pe" in message


def test_duplicate_prefixed_keys_are_rejected(lg_state_dict, lg_template):
  bad = dict(lg_state_dict)
  bad["module.Norm.weight"] = bad["Norm.weight"]
  with pytest.raises(conversion.ConversionError, match="duplicate keys"):
    conversion.state_dict_to_variables(bad, lg_template)


def test_failed_conversion_writes_nothing(lg_state_dict, tmp_path):
  bad = dict(lg_state_dict)
  del bad["Norm.bias"]
  save_official_checkpoint(bad, tmp_path / "bad.pth")
  with pytest.raises(conversion.ConversionError, match="Norm.bias"):
    convert.convert_checkpoint(tmp_path / "bad.pth", tmp_path / "out")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pth"]


@pytest.mark.parametrize("model", ["landmark_generator", "renderer"])
def test_file_round_trip_is_lossless(model, tmp_path):
  state = _mirror_state_dict(model)
  src = tmp_path / "release.pth"
  save_official_checkpoint(state, src, data_parallel_prefix=True, training_extras=True)
  out = tmp_path / "converted"
  provenance = convert.convert_checkpoint(src, out)
  on_disk = store.read_provenance(out)
  assert on_disk == json.loads(json.dumps(provenance))
  assert on_disk["model"] == model and on_disk["num_keys"] == len(state)
  assert on_disk["sha256"] == __import__("hashlib").sha256(src.read_bytes()).hexdigest()
  nbt = {k: int(v) for k, v in state.items() if k.endswith("num_batches_tracked")}
  assert on_disk["num_batches_tracked"] == nbt and nbt
  assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
  vgg19 = store.load_tree(out, "vgg19") if model == "renderer" else None
  assert on_disk["items"] == (["variables", "vgg19"] if model == "renderer" else ["variables"])
  exported = tmp_path / "exported.pth"
  conversion.export_state_dict(store.load_tree(out), exported, model, vgg19=vgg19,
                            num_batches_tracked=on_disk["num_batches_tracked"],
                            data_parallel_prefix=True)
  reloaded = torch.load(exported, map_location="cpu", weights_only=True)["state_dict"]
  _assert_state_dicts_equal(reloaded, {"module." + k: v for k, v in state.items()})


def test_existing_output_is_not_replaced_without_overwrite(lg_state_dict, tmp_path):
  save_official_checkpoint(lg_state_dict, tmp_path / "a.pth")
  (tmp_path / "out").mkdir()
  with pytest.raises(FileExistsError):
    convert.convert_checkpoint(tmp_path / "a.pth", tmp_path / "out")
  assert list((tmp_path / "out").iterdir()) == []


def test_torchvision_vgg_and_unknown_models(tmp_path):
  state = _mirror_state_dict("vgg19")
  src = tmp_path / "vgg19.pth"
  torch.save(state, src)  # a bare torchvision-style state_dict, no 'state_dict' wrapper
  provenance = convert.convert_checkpoint(src, tmp_path / "vgg")
  assert provenance["model"] == "vgg19"
  params = store.load_tree(tmp_path / "vgg")["params"]
  np.testing.assert_array_equal(params["network_34"]["kernel"],
                                state["features.34.weight"].numpy().transpose(2, 3, 1, 0))
  with pytest.raises(conversion.ConversionError, match="cannot tell"):
    conversion.detect_model(["encoder.0.weight"])


def _cli(*args: str) -> subprocess.CompletedProcess:
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO_ROOT)}
  return subprocess.run([sys.executable, "-m", "ip_lap_jax.convert", *args], cwd=REPO_ROOT,
                        env=env, capture_output=True, text=True, timeout=300)


def test_cli(lg_state_dict, tmp_path):
  save_official_checkpoint(lg_state_dict, tmp_path / "lg.pth", data_parallel_prefix=True)
  ok = _cli("--src", str(tmp_path / "lg.pth"), "--out", str(tmp_path / "lg"))
  assert ok.returncode == 0, ok.stderr
  assert "landmark_generator" in ok.stdout
  assert (tmp_path / "lg" / "provenance.json").is_file()
  assert (tmp_path / "lg" / "variables").is_dir()

  bad = {k: v for k, v in lg_state_dict.items() if k != "jaw_keypoint_map.bias"}
  save_official_checkpoint(bad, tmp_path / "bad.pth")
  failed = _cli("--src", str(tmp_path / "bad.pth"), "--out", str(tmp_path / "bad"),
                "--model", "landmark_generator")
  assert failed.returncode == 2
  assert "jaw_keypoint_map.bias" in failed.stderr
  assert not (tmp_path / "bad").exists()
