"""What the generic training loop needs from a stage, and which class serves `cfg.stage`.

A stage owns its models, optimisers, compiled data-parallel steps and everything the
steps need besides the train state (e.g. the renderer's VGG19 variables). The loop
(ip_lap_jax.training.loop) only calls the methods below and never looks at the stage's
name: `stage_class(cfg.stage)` is the one place that maps names to classes.
"""

from __future__ import annotations

import abc
import importlib
from typing import Any

import jax
import ml_collections
import numpy as np

from ip_lap_jax.data.pipeline import Sampler
from ip_lap_jax.models import registry, store, structure
from ip_lap_jax.training import state as state_lib

# cfg.stage -> "module:class"; imported on demand so a stage's models load only when used.
_STAGES = {
    "landmark_generator": "ip_lap_jax.training.landmark_stage:LandmarkStage",
    "renderer": "ip_lap_jax.training.renderer_stage:RendererStage",
}


class Stage(abc.ABC):
  """One training stage on a device mesh (ip_lap_jax.parallel.global_mesh).

  States, metrics and variables handed to the steps are replicated global arrays;
  batches are global arrays sharded over the mesh's axis.
  """

  # The train metric shown on the progress bar.
  progress_metric = "loss"

  def __init__(self, cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    self.cfg = cfg
    self.mesh = mesh

  @classmethod
  @abc.abstractmethod
  def make_samplers(cls, cfg: ml_collections.ConfigDict) -> tuple[Sampler, Sampler]:
    """(train sampler, test sampler) over the config's data."""

  @abc.abstractmethod
  def init_state(self) -> state_lib.State:
    """The initial train state on the host (random or `cfg.init_from`), identical on
    every process (seeded by `cfg.seed`)."""

  @abc.abstractmethod
  def train_step(self, state: state_lib.State, batch: dict[str, jax.Array], *, step: int,
                 epoch: int) -> tuple[state_lib.State, dict[str, jax.Array]]:
    """(new state, replicated metrics) of training step `step` (from 1) in `epoch`
    (from 0); the old state is donated."""

  @abc.abstractmethod
  def eval_step(self, state: state_lib.State, batch: dict[str, jax.Array]) -> Any:
    """Device outputs of one eval batch, to be passed to `summarise`."""

  @abc.abstractmethod
  def summarise(self, outputs: Any, *, want_grid: bool
                ) -> tuple[dict[str, float], np.ndarray | None]:
    """(host metrics of one eval batch, the same on every process; a uint8 [H, W, 3]
    BGR sample grid if `want_grid` and the stage draws one, else None). `want_grid` is
    only set on process 0."""

  def model_spec(self) -> registry.ModelSpec:
    """The spec of the model this stage trains (written beside the run as model.json)."""
    return registry.spec_from_config(self.cfg)


def stage_class(name: str) -> type[Stage]:
  """The Stage subclass of `cfg.stage`."""
  if name not in _STAGES:
    raise ValueError(f"unknown stage {name!r}; expected one of {sorted(_STAGES)}")
  module, cls = _STAGES[name].split(":")
  return getattr(importlib.import_module(module), cls)


def load_converted(directory: str, item: str, template: dict[str, Any], what: str
                   ) -> dict[str, Any]:
  """A saved tree (`models.store`) checked against the variables it replaces."""
  tree = store.load_tree(directory, item)
  if "params" not in tree:
    tree = {"params": tree}
  tree = {k: v for k, v in tree.items() if k in template}
  structure.check_structure(tree, template, f"{what} from {directory}/{item}")
  return tree
