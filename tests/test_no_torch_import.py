"""Importing the package, the models and the converter must not import torch."""

import os
import pathlib
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_no_torch_at_import():
  code = (
      "import sys\n"
      "import ip_lap_jax, ip_lap_jax.convert, ip_lap_jax.models.layers\n"
      "import ip_lap_jax.models.landmark_generator, ip_lap_jax.models.inception\n"
      "import ip_lap_jax.training.metrics\n"
      "ip_lap_jax.convert.model_template('landmark_generator')\n"
      "ip_lap_jax.convert.model_template('inception')\n"
      "print('torch' in sys.modules)\n"
  )
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO_ROOT)}
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "False"


def test_torch_is_visible_to_the_check():
  # The check above can fail: importing the mirror does put torch in sys.modules.
  code = "import sys, ip_lap_jax.torch_mirror.common\nprint('torch' in sys.modules)\n"
  env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.stdout.strip() == "True", result.stderr
