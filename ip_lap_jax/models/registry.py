"""The one place that builds models: from a `ModelSpec` to a Flax module and its inputs.

A spec is what a saved model records beside its weights (`model.json`, `models.store`):
the model's registry name, its constructor fields (a config's `model` sub-dict), the
image size, the window length, Nl and the default N. Conversion, training, export,
inference, evaluation and the demo all build models through `build`, so a checkpoint
trained with an ablation (`lstm`, `no_warp`, `no_audio`) or at another image size runs
anywhere, and converted official checkpoints get `official_spec`.

  spec = registry.official_spec("renderer")
  module = registry.build(spec, dtype="bfloat16")          # conv_algorithm resolved here
  template = registry.variables_template(spec)             # shapes every load is checked by
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ip_lap_jax import constants

NAMES = ("landmark_generator", "renderer", "discriminator", "vgg19", "inception", "syncnet",
         "lpips")

# Constructor fields of each model and their official values (the release's settings).
_OFFICIAL_CONFIG: dict[str, dict[str, Any]] = {
    "landmark_generator": dict(T=constants.WINDOW, d_model=512, nlayers=4, nhead=4,
                               dim_feedforward=1024, dropout=0.1, generator="transformer",
                               dtype="float32"),
    "renderer": dict(use_warping=True, use_audio=True, dtype="float32", conv_algorithm="auto"),
    "discriminator": dict(ndf=64, n_layers=3, num_d=2, dtype="float32"),
    "vgg19": dict(dtype="float32"),
    "inception": dict(),
    # Evaluation networks: their published architecture; conv_algorithm is speed only.
    "syncnet": dict(conv_algorithm="auto"),
    "lpips": dict(conv_algorithm="auto"),
}
# Input image side of the models that take a fixed one.
_FIXED_IMAGE_SIZE = {"inception": 299, "syncnet": 224}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Everything needed to rebuild a model and its dummy inputs.

  Attributes:
    name: one of NAMES.
    config: the module's constructor fields (JSON values; `dtype` as a string, a renderer's
      `conv_algorithm` possibly 'auto').
    image_size: face crop side (128 official; the smoke configs train at 64).
    window: frames per window (5).
    num_landmark_refs: Nl, reference landmark sets of the landmark generator (15).
    num_refs: N, default reference images of the renderer at inference (25).
  """

  name: str
  config: Mapping[str, Any]
  image_size: int = constants.FACE_SIZE
  window: int = constants.WINDOW
  num_landmark_refs: int = constants.NUM_LANDMARK_REFS
  num_refs: int = constants.NUM_REFS_INFERENCE

  def __post_init__(self):
    if self.name not in NAMES:
      raise ValueError(f"unknown model {self.name!r}; expected one of {NAMES}")
    unknown = set(self.config) - set(_OFFICIAL_CONFIG[self.name])
    if unknown:
      raise ValueError(f"{self.name} has no fields {sorted(unknown)}; it takes "
                       f"{sorted(_OFFICIAL_CONFIG[self.name])}")
    object.__setattr__(self, "config", {**_OFFICIAL_CONFIG[self.name], **dict(self.config)})

  def to_json(self) -> dict[str, Any]:
    return {"name": self.name, "config": dict(self.config), "image_size": self.image_size,
            "window": self.window, "num_landmark_refs": self.num_landmark_refs,
            "num_refs": self.num_refs}

  @classmethod
  def from_json(cls, data: Mapping[str, Any]) -> ModelSpec:
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - fields - {"format"}
    if unknown:
      raise ValueError(f"unknown model.json fields {sorted(unknown)}")
    return cls(**{k: v for k, v in data.items() if k in fields})

  def replace(self, **changes: Any) -> ModelSpec:
    return dataclasses.replace(self, **changes)


def official_spec(name: str) -> ModelSpec:
  """The release's architecture: what a converted official checkpoint holds."""
  return ModelSpec(name, {})


def spec_from_config(cfg: Any, name: str | None = None) -> ModelSpec:
  """The spec of a training config's model (`name` defaults to `cfg.stage`; a renderer
  config also describes its `discriminator`)."""
  name = name or cfg.stage
  if name == "landmark_generator":
    return ModelSpec(name, cfg.model.to_dict(), window=cfg.data.T,
                     num_landmark_refs=cfg.data.Nl)
  if name == "renderer":
    return ModelSpec(name, cfg.model.to_dict(), image_size=cfg.data.image_size,
                     window=cfg.data.window, num_refs=cfg.eval_ref_N)
  if name == "discriminator":
    return ModelSpec(name, {**cfg.discriminator.to_dict(), "dtype": cfg.model.dtype},
                     image_size=cfg.data.image_size)
  if name == "vgg19":
    return ModelSpec(name, {"dtype": cfg.model.dtype}, image_size=cfg.data.image_size)
  if name in ("inception", "syncnet", "lpips"):
    return ModelSpec(name, {})
  raise ValueError(f"unknown model {name!r}; expected one of {NAMES}")


def build(spec: ModelSpec, *, dtype: Any = None, backend: str | None = None) -> Any:
  """The Flax module of `spec`.

  Args:
    spec: what to build.
    dtype: compute dtype overriding the spec's (e.g. 'bfloat16' for inference); params
      stay float32 either way.
    backend: the platform the module will run on (default: `jax.default_backend()`), to
      resolve a renderer's `conv_algorithm='auto'` once, here.
  """
  config = dict(spec.config)
  if "dtype" in config:
    config["dtype"] = jnp.dtype(dtype if dtype is not None else config["dtype"])
  if spec.name == "landmark_generator":
    from ip_lap_jax.models.landmark_generator import LandmarkGenerator
    if config["T"] != spec.window:
      raise ValueError(f"landmark generator T={config['T']} but window={spec.window}")
    return LandmarkGenerator(**config)
  if "conv_algorithm" in config:
    from ip_lap_jax.models.conv import resolve_algorithm
    config["conv_algorithm"] = resolve_algorithm(
        config["conv_algorithm"], config.get("dtype", jnp.float32),
        backend or jax.default_backend())
  if spec.name == "renderer":
    from ip_lap_jax.models.renderer import Renderer
    return Renderer(**config)
  if spec.name == "discriminator":
    from ip_lap_jax.models.discriminator import MultiscaleDiscriminator
    return MultiscaleDiscriminator(**config)
  if spec.name == "vgg19":
    from ip_lap_jax.models.vgg import VGG19Features
    return VGG19Features(**config)
  if spec.name == "syncnet":
    from ip_lap_jax.models.syncnet import SyncNet
    return SyncNet(**config)
  if spec.name == "lpips":
    from ip_lap_jax.models.lpips import LPIPS
    return LPIPS(**config)
  from ip_lap_jax.models.inception import InceptionV3
  return InceptionV3(**config)


def dummy_inputs(spec: ModelSpec, batch: int = 1, num_refs: int | None = None
                 ) -> tuple[np.ndarray, ...]:
  """Zeros shaped like the model's positional inputs, float32 (NHWC images in [0, 1]).

  landmark_generator: mels [B, T, 80, 16, 1], pose [B, T, 74, 2], ref_pose [B, Nl, 74, 2],
    ref_content [B, Nl, 57, 2].
  renderer: face [B, S, S, 3], sketches [B, T, S, S, 3], ref_images and ref_sketches
    [B, N, S, S, 3] (N = `num_refs`, default 1), mels [B, 80, 16, 1].
  discriminator, vgg19, inception: images [B, S, S, 3].
  syncnet: lip clips [B, T, 224, 224, 3], MFCC [B, 13, 20, 1].
  lpips: two image batches [B, S, S, 3].
  """
  from ip_lap_jax.face import landmarks

  f32 = np.float32
  t, s = spec.window, _FIXED_IMAGE_SIZE.get(spec.name, spec.image_size)
  if spec.name == "landmark_generator":
    nl, pose, content = spec.num_landmark_refs, landmarks.NUM_POSE, landmarks.NUM_CONTENT
    return (np.zeros((batch, t, 80, 16, 1), f32), np.zeros((batch, t, pose, 2), f32),
            np.zeros((batch, nl, pose, 2), f32), np.zeros((batch, nl, content, 2), f32))
  if spec.name == "renderer":
    n = 1 if num_refs is None else num_refs
    return (np.zeros((batch, s, s, 3), f32), np.zeros((batch, t, s, s, 3), f32),
            np.zeros((batch, n, s, s, 3), f32), np.zeros((batch, n, s, s, 3), f32),
            np.zeros((batch, 80, 16, 1), f32))
  if spec.name == "syncnet":
    return np.zeros((batch, t, s, s, 3), f32), np.zeros((batch, 13, 20, 1), f32)
  if spec.name == "lpips":
    return np.zeros((batch, s, s, 3), f32), np.zeros((batch, s, s, 3), f32)
  return (np.zeros((batch, s, s, 3), f32),)


def _init_kwargs(spec: ModelSpec) -> dict[str, Any]:
  return {"train": False} if spec.name in ("landmark_generator", "renderer") else {}


def _spec_key(spec: ModelSpec) -> tuple[str, bool]:
  """A hashable identity of what `spec` builds: its JSON, and whether float64 is on (a
  module's float64 compute creates float64 arrays only then)."""
  return json.dumps(spec.to_json(), sort_keys=True, default=repr), bool(jax.config.jax_enable_x64)


# Per process, by _spec_key: the few specs a process meets are each traced (and their
# init compiled) once, not at every save, load and init.
_TEMPLATES: dict[tuple[str, bool], Any] = {}
_INITS: dict[tuple[str, bool], Any] = {}


def _init_fn(spec: ModelSpec) -> Any:
  module, inputs = build(spec), dummy_inputs(spec)
  return lambda rng: module.init(rng, *inputs, **_init_kwargs(spec))


def variables_template(spec: ModelSpec) -> dict[str, Any]:
  """`jax.eval_shape` of the model's init: the shapes every load is checked against.

  Traced once per spec in a process; each call returns its own containers.
  """
  key = _spec_key(spec)
  if key not in _TEMPLATES:
    _TEMPLATES[key] = jax.eval_shape(_init_fn(spec), jax.random.key(0))
  return jax.tree.map(lambda leaf: leaf, _TEMPLATES[key])


def init_variables(spec: ModelSpec, rng: jax.Array) -> dict[str, Any]:
  """Randomly initialised variables of the model (Flax's initialisers), jitted once per
  spec in a process."""
  key = _spec_key(spec)
  if key not in _INITS:
    _INITS[key] = jax.jit(_init_fn(spec))
  return _INITS[key](rng)


def official_template(name: str) -> dict[str, Any]:
  """`variables_template` of the release's architecture of model `name`."""
  return variables_template(official_spec(name))
