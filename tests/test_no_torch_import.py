"""Importing the package for inference, training, export, evaluation or conversion, and
building every model, must not import torch."""

import os
import pathlib
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_no_torch_at_import():
  code = (
      "import sys\n"
      "import ip_lap_jax, ip_lap_jax.convert, ip_lap_jax.export, ip_lap_jax.conversion\n"
      "import ip_lap_jax.inference, ip_lap_jax.training.loop, ip_lap_jax.demo.run\n"
      "from ip_lap_jax.models import registry\n"
      "for name in registry.NAMES: registry.official_template(name)\n"
      "print('torch' in sys.modules)\n"
  )
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO_ROOT)}
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "False"


def test_torch_is_visible_to_the_check():
  # The check above can fail: importing the mirror does put torch in sys.modules.
  code = "import sys, torch_mirror.common\nprint('torch' in sys.modules)\n"
  env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "tests")}
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.stdout.strip() == "True", result.stderr
