"""The device side of inference: a checkpoint's two models, compiled for fixed shapes.

`load_checkpoint` reads and checks the two saved models of a checkpoint directory
(`models.store`); each is rebuilt from its own spec (`models.registry`), so any exported
variant runs, also mixed with official ones. `Predictor` puts the variables on every
local device and compiles the landmark generator (`predict_content`) and the renderer
(`render`) ahead of time for one batch size, one render size and fixed reference counts;
executables are cached per process, keyed by everything that shapes them, so a second
run (or `LipSyncer`) with the same models and settings reuses them.

Checkpoint directory layout: two saved models, converted (`python -m ip_lap_jax.convert`)
or exported from training (`python -m ip_lap_jax.export`):
  <checkpoint>/landmark_generator/{model.json,variables}
  <checkpoint>/renderer/{model.json,variables}
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import threading
from typing import Any, Callable, Hashable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ip_lap_jax.constants import WINDOW
from ip_lap_jax.face import landmarks
from ip_lap_jax.media import audio as audio_lib
from ip_lap_jax.models import registry, store

MODELS = ("landmark_generator", "renderer")
_MEL = (80, audio_lib.MEL_STEP, 1)


@functools.partial(jax.jit, static_argnames=("model",))
def predict_content(variables: Mapping[str, Any], mels: jax.Array, pose: jax.Array,
                    ref_pose: jax.Array, ref_content: jax.Array, *, model: Any) -> jax.Array:
  """Content landmarks of a batch of windows; the Nl references are shared by the batch.

  Args:
    variables: the landmark generator's {'params', 'batch_stats'}.
    mels: [B, 5, 80, 16, 1]; pose: [B, 5, 74, 2]; ref_pose: [Nl, 74, 2];
      ref_content: [Nl, 57, 2].
    model: the landmark generator module (`models.registry.build`).
  Returns:
    [B, 5, 57, 2] box-normalised content landmarks.
  """
  b = mels.shape[0]
  ref_pose = jnp.broadcast_to(ref_pose[None], (b,) + ref_pose.shape)
  ref_content = jnp.broadcast_to(ref_content[None], (b,) + ref_content.shape)
  return model.apply(variables, mels, pose, ref_pose, ref_content, train=False)


@functools.partial(jax.jit, static_argnames=("model",))
def render(variables: Mapping[str, Any], faces: jax.Array, sketches: jax.Array,
           ref_images: jax.Array, ref_sketches: jax.Array, mels: jax.Array, *,
           model: Any) -> jax.Array:
  """Renders a batch of centre frames; the N references are shared by the batch.

  Args:
    variables: the renderer's {'params', 'batch_stats'}.
    faces: [B, S, S, 3] template faces; sketches: [B, 5, S, S, 3];
      ref_images, ref_sketches: [N, S, S, 3]; mels: [B, 80, 16, 1].
    model: the renderer module (`models.registry.build`).
  Returns:
    uint8 [B, S, S, 3], the generated faces truncated to uint8 as the release does.
  """
  b = faces.shape[0]
  refs = jnp.broadcast_to(ref_images[None], (b,) + ref_images.shape)
  ref_sk = jnp.broadcast_to(ref_sketches[None], (b,) + ref_sketches.shape)
  generated, _ = model.apply(variables, faces, sketches, refs, ref_sk, mels, train=False)
  return (generated * 255.0).astype(jnp.uint8)


def load_checkpoint(checkpoint_dir: str | os.PathLike[str]) -> dict[str, store.SavedModel]:
  """Loads and checks both saved models (layout: the module docstring).

  Raises:
    CheckpointError: a model is missing or any parameter is missing, unexpected or
      mis-shaped; the message names the directory and the keys.
  """
  root = pathlib.Path(checkpoint_dir)
  if not root.is_dir():
    raise store.CheckpointError(f"{root}: checkpoint directory does not exist")
  return {model: store.load_model(root / model, expect=model) for model in MODELS}


# Executables by `_cache_key`, shared by every Predictor of the process.
_COMPILED: dict[Hashable, Any] = {}
_COMPILE_LOCK = threading.Lock()


def _tree_signature(tree: Any) -> Hashable:
  """Structure, shapes and dtypes of a pytree: what an executable was compiled for."""
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  return treedef, tuple((tuple(x.shape), str(x.dtype)) for x in leaves)


def _compiled(key: Hashable, lower: Callable[[], Any]) -> Any:
  """The cached executable of `key`, compiled with `lower().compile()` on a miss."""
  with _COMPILE_LOCK:
    if key in _COMPILED:
      return _COMPILED[key]
  executable = lower().compile()  # outside the lock: compiling may take minutes
  with _COMPILE_LOCK:
    return _COMPILED.setdefault(key, executable)


class Predictor:
  """Both models of a checkpoint, replicated on each of its devices (by default all).

  Batches are sharded over the devices along their first axis, so the batch size is
  rounded up to a multiple of the device count; references are replicated.

  Attributes:
    specs, models: per model name, its spec and its Flax module (compute `dtype`).
    variables: per model name, its variables on every device.
    batch_size: windows per call (a multiple of the devices).
    render_size: side S of the faces the renderer sees (the argument, or when that is
      None the renderer spec's image size).
    num_refs, num_landmark_refs: N and Nl.
    devices: the devices batches are split over (default: every device of the process).
  """

  def __init__(self, saved: Mapping[str, store.SavedModel], *, dtype: str, batch_size: int,
               render_size: int | None, num_refs: int, num_landmark_refs: int,
               devices: Sequence[jax.Device] | None = None):
    self.specs = {name: saved[name].spec for name in MODELS}
    self.models = {name: registry.build(spec, dtype=dtype) for name, spec in self.specs.items()}
    self.render_size = render_size or self.specs["renderer"].image_size
    self.num_refs, self.num_landmark_refs = num_refs, num_landmark_refs
    self.devices = list(devices) if devices is not None else jax.devices()
    mesh = jax.sharding.Mesh(np.array(self.devices), ("batch",))
    self.batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
    self.replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    self.variables = jax.device_put({name: saved[name].variables for name in MODELS},
                                    self.replicated)
    n = len(self.devices)
    self.batch_size = -(-batch_size // n) * n

  def replicate(self, array: np.ndarray) -> jax.Array:
    """A float32 copy of `array` on every device (references)."""
    return jax.device_put(jnp.asarray(array, jnp.float32), self.replicated)

  def _key(self, name: str, *shapes: tuple[int, ...]) -> Hashable:
    return (name, self.models[name], shapes, tuple(d.id for d in self.devices),
            _tree_signature(self.variables[name]))

  def compile(self) -> CompiledPredictor:
    """Both functions compiled for this predictor's shapes (cached per process)."""
    b, s = self.batch_size, self.render_size
    nl, n = self.num_landmark_refs, self.num_refs

    def batched(*shape: int) -> jax.ShapeDtypeStruct:
      return jax.ShapeDtypeStruct(shape, jnp.float32, sharding=self.batch_sharding)

    def shared(*shape: int) -> jax.ShapeDtypeStruct:
      return jax.ShapeDtypeStruct(shape, jnp.float32, sharding=self.replicated)

    content_args = (batched(b, WINDOW, *_MEL), batched(b, WINDOW, landmarks.NUM_POSE, 2),
                    shared(nl, landmarks.NUM_POSE, 2), shared(nl, landmarks.NUM_CONTENT, 2))
    render_args = (batched(b, s, s, 3), batched(b, WINDOW, s, s, 3), shared(n, s, s, 3),
                   shared(n, s, s, 3), batched(b, *_MEL))
    lg, ren = "landmark_generator", "renderer"
    content_fn = _compiled(
        self._key(lg, *(a.shape for a in content_args)),
        lambda: predict_content.lower(self.variables[lg], *content_args, model=self.models[lg]))
    render_fn = _compiled(
        self._key(ren, *(a.shape for a in render_args)),
        lambda: render.lower(self.variables[ren], *render_args, model=self.models[ren]))
    return CompiledPredictor(self, content_fn, render_fn)


@dataclasses.dataclass(frozen=True)
class CompiledPredictor:
  """A predictor's executables; inputs are numpy batches of its fixed shapes.

  Batch inputs have `predictor.batch_size` rows; references are `Predictor.replicate`d.
  """
  predictor: Predictor
  content_fn: Any
  render_fn: Any

  def _shard(self, array: np.ndarray) -> jax.Array:
    return jax.device_put(array, self.predictor.batch_sharding)

  def predict_content(self, mels: np.ndarray, pose: np.ndarray, ref_pose: jax.Array,
                      ref_content: jax.Array) -> np.ndarray:
    """mels [B, 5, 80, 16, 1], pose [B, 5, 74, 2] -> content [B, 5, 57, 2] (waits)."""
    return np.asarray(self.content_fn(self.predictor.variables["landmark_generator"],
                                      self._shard(mels), self._shard(pose), ref_pose,
                                      ref_content))

  def render(self, faces: np.ndarray, sketches: np.ndarray, ref_images: jax.Array,
             ref_sketches: jax.Array, mels: np.ndarray) -> jax.Array:
    """faces [B, S, S, 3], sketches [B, 5, S, S, 3], mels [B, 80, 16, 1] -> uint8
    [B, S, S, 3], left in flight (read it with np.asarray)."""
    return self.render_fn(self.predictor.variables["renderer"], self._shard(faces),
                          self._shard(sketches), ref_images, ref_sketches, self._shard(mels))
