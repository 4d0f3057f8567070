"""The landmark generator as a training stage: samplers, state, steps, eval summary.

The per-device steps are in ip_lap_jax.training.landmark_step.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np

from ip_lap_jax import parallel
from ip_lap_jax.data.landmark_data import LandmarkSampler
from ip_lap_jax.training import landmark_step
from ip_lap_jax.training import stage as stage_lib
from ip_lap_jax.training import state as state_lib


class LandmarkStage(stage_lib.Stage):
  """L1 + velocity training of the landmark generator; eval: the same losses."""

  def __init__(self, cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    super().__init__(cfg, mesh)
    self.tx, schedule = state_lib.make_optimizer(cfg.optimizer, cfg.num_train_steps)
    self._train, self._eval = landmark_step.make_steps(cfg, self.tx, schedule, mesh)

  @classmethod
  def make_samplers(cls, cfg: ml_collections.ConfigDict
                    ) -> tuple[LandmarkSampler, LandmarkSampler]:
    d = cfg.data
    make = lambda lst: LandmarkSampler.from_layout(d.landmark_root, d.audio_root, lst, T=d.T,
                                                   Nl=d.Nl, min_len=d.min_len)
    return make(d.train_list), make(d.test_list or d.train_list)

  def init_state(self) -> state_lib.State:
    init_rng, state_rng = jax.random.split(jax.random.PRNGKey(self.cfg.seed))
    variables = landmark_step.init_variables(self.cfg, init_rng)
    if self.cfg.init_from:
      variables = stage_lib.load_converted(self.cfg.init_from, "variables", variables,
                                           "landmark generator")
    if self.cfg.model.dtype == "float64":
      # Full float64 training (equivalence checks): Flax keeps parameters in float32
      # whatever the compute dtype, and float32 storage rounds the ~1e-16 differences
      # between summation orders of the gradient all-reduce (1 x 8 vs 2 x 4 devices) to
      # whole float32 ulps, which training then amplifies ~100x per step.
      variables = jax.tree.map(
          lambda x: x.astype(np.float64) if x.dtype == np.float32 else x, variables)
    return landmark_step.init_state(self.cfg, self.tx, variables, state_rng)

  def train_step(self, state: state_lib.State, batch: dict[str, jax.Array], *, step: int,
                 epoch: int) -> tuple[state_lib.State, dict[str, jax.Array]]:
    del step, epoch  # one loss throughout
    return self._train(state, batch)

  def eval_step(self, state: state_lib.State, batch: dict[str, jax.Array]) -> Any:
    return self._eval(state, batch)

  def summarise(self, outputs: Any, *, want_grid: bool
                ) -> tuple[dict[str, float], np.ndarray | None]:
    del want_grid  # no images
    return {k: float(v) for k, v in parallel.fetch(outputs).items()}, None
