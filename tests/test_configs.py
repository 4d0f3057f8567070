"""Training configs: official defaults, ablation variants, smoke sizes, overrides."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ip_lap_jax.configs import landmark_generator as lmk_config
from ip_lap_jax.configs import renderer as ren_config

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_landmark_defaults_are_the_release_settings():
  cfg = lmk_config.get_config()
  assert (cfg.batch_size, cfg.optimizer.learning_rate, cfg.optimizer.b1, cfg.optimizer.b2) == (
      128, 1e-4, 0.9, 0.999)
  assert (cfg.model.T, cfg.model.d_model, cfg.model.nlayers, cfg.model.nhead) == (5, 512, 4, 4)
  assert (cfg.model.dim_feedforward, cfg.model.dropout, cfg.data.Nl) == (1024, 0.1, 15)
  assert cfg.model.generator == "transformer" and cfg.data.min_len == 25
  assert cfg.eval_every_steps == 5000 and cfg.optimizer.grad_clip_norm == 0.0
  assert lmk_config.get_config("lstm").model.generator == "lstm"


def test_renderer_defaults_and_ablations():
  cfg = ren_config.get_config()
  assert (cfg.batch_size, cfg.data.ref_N, cfg.optimizer.learning_rate) == (96, 3, 1e-4)
  assert (cfg.disc_optimizer.learning_rate, cfg.disc_optimizer.b1) == (1e-4, 0.5)
  assert cfg.loss.gan_start_epoch == 25 and cfg.model.use_warping and cfg.model.use_audio
  assert (cfg.discriminator.ndf, cfg.discriminator.n_layers, cfg.discriminator.num_d) == (64, 3, 2)
  assert not ren_config.get_config("no_warp").model.use_warping
  assert not ren_config.get_config("no_audio").model.use_audio
  for n in (1, 5, 25):
    assert ren_config.get_config(f"refs{n}").eval_ref_N == n
  with pytest.raises(ValueError):
    ren_config.get_config("refs1,refs5")
  with pytest.raises(ValueError, match="unknown"):
    lmk_config.get_config("bogus")


def test_smoke_variants_are_small():
  for mod in (lmk_config, ren_config):
    full, smoke = mod.get_config(), mod.get_config("smoke")
    assert smoke.batch_size < full.batch_size and smoke.num_train_steps <= 100
    assert smoke.eval_every_steps <= smoke.num_train_steps


def test_command_line_overrides():
  code = ("from absl import flags; from ml_collections import config_flags; import sys;"
          "c = config_flags.DEFINE_config_file('config');"
          "flags.FLAGS(sys.argv);"
          "print(c.value.batch_size, c.value.optimizer.learning_rate, c.value.model.use_audio)")
  out = subprocess.run(
      [sys.executable, "-c", code, "--config=configs/renderer.py:smoke,no_audio",
       "--config.batch_size=4", "--config.optimizer.learning_rate=0.5"],
      cwd=REPO, capture_output=True, text=True, check=True)
  assert out.stdout.split() == ["4", "0.5", "False"]


def test_registry_traces_each_spec_once_and_returns_fresh_containers():
  """variables_template and init_variables are cached per spec (and x64 flag): a second
  call neither re-traces nor shares containers, and init still takes its rng."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from ip_lap_jax.models import registry  # pylint: disable=import-outside-toplevel

  spec = registry.official_spec("lpips")
  first = registry.variables_template(spec)
  traced = dict(registry._TEMPLATES)  # pylint: disable=protected-access
  second = registry.variables_template(registry.ModelSpec.from_json(spec.to_json()))
  assert registry._TEMPLATES == traced  # the same spec, rebuilt from JSON: no new trace
  assert jax.tree.structure(first) == jax.tree.structure(second)
  assert first is not second and first["params"] is not second["params"]
  first["params"]["added"] = None
  assert "added" not in registry.variables_template(spec)["params"]
  other = spec.replace(config={"conv_algorithm": "direct"})
  assert registry._spec_key(other) != registry._spec_key(spec)  # pylint: disable=protected-access
  with jax.enable_x64(True):
    assert registry._spec_key(spec) != registry._spec_key(other)  # pylint: disable=protected-access
    assert registry._spec_key(spec)[1] is True  # pylint: disable=protected-access

  flat = lambda v: np.concatenate([np.ravel(x) for x in jax.tree.leaves(v["params"])])
  a = registry.init_variables(spec, jax.random.key(0))
  b = registry.init_variables(spec, jax.random.key(1))
  again = registry.init_variables(spec, jax.random.key(0))
  assert not np.array_equal(flat(a), flat(b))
  np.testing.assert_array_equal(flat(a), flat(again))
