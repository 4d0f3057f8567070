"""Train the landmark generator or the renderer (+ discriminator) of IP_LAP.

  python train.py --config=configs/landmark_generator.py --workdir=runs/lmk \
      --config.data.landmark_root=DATA/landmarks --config.data.audio_root=DATA/audio \
      --config.data.train_list=filelists/lrs2/train.txt \
      --config.data.test_list=filelists/lrs2/test.txt
  python train.py --config=configs/renderer.py:smoke --workdir=runs/ren ...

Any config field can be overridden (`--config.batch_size=64`); a config argument after
':' picks variants (smoke, lstm, no_warp, no_audio, refs1/5/25). Re-running with the same
workdir resumes from its latest checkpoint. Several processes (one per host, same
command, a workdir shared by all): `--multi_host` joins them with
jax.distributed.initialize() (SLURM's environment under srun, else
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID); a failure on one stops all
(ip_lap_jax.distributed). Only process 0 logs at INFO level.
"""

from __future__ import annotations

import logging
import os

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard events, samples.")
_MULTI_HOST = flags.DEFINE_bool(
    "multi_host", bool(os.environ.get("JAX_COORDINATOR_ADDRESS")),
    "Call jax.distributed.initialize() (default: when JAX_COORDINATOR_ADDRESS is set).")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout_s", 100,
    "With --multi_host: a process silent this long is considered dead and the job stops.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  from ip_lap_jax import distributed  # pylint: disable=g-import-not-at-top
  if _MULTI_HOST.value:
    distributed.initialize(_HEARTBEAT.value)
  logging.getLogger().setLevel(logging.INFO if jax.process_index() == 0 else logging.WARNING)
  from ip_lap_jax.training import loop as train_lib  # pylint: disable=g-import-not-at-top
  logging.info("process %d/%d, local devices %s", jax.process_index(), jax.process_count(),
               jax.local_devices())
  with distributed.fail_together():
    result = train_lib.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  logging.info("done: train %s eval %s", result["train"], result["eval"])


if __name__ == "__main__":
  app.run(main)
