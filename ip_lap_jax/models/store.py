"""Saved models on disk: weights with the spec that rebuilds their architecture.

A saved model is a directory

  model.json        the `ModelSpec` (registry name, constructor fields, image size, ...)
  variables/        orbax tree {'params', 'batch_stats'?} of numpy arrays
  <item>/           further trees (a converted renderer also carries `vgg19`)
  provenance.json   where the weights came from (converted file and its SHA-256, or the
                    training run and step)

written by the converter (`python -m ip_lap_jax.convert`) and by export
(`python -m ip_lap_jax.export`), read by inference, evaluation, training's `init_from` and
the demo. An inference checkpoint is a folder holding `landmark_generator/` and
`renderer/` saved models. Writes are all-or-nothing (`files.atomic_directory`). A
directory converted before model.json existed is read with the official spec of the
model its provenance names.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Mapping

import numpy as np

from ip_lap_jax import files
from ip_lap_jax.models import registry, structure

SPEC_FILE = "model.json"
PROVENANCE_FILE = "provenance.json"
_FORMAT = 1


class CheckpointError(ValueError):
  """A saved model is absent, unreadable, or does not fit the model its spec describes."""


@dataclasses.dataclass(frozen=True)
class SavedModel:
  """A loaded model: its spec, its variables (numpy) and where it was read from."""

  spec: registry.ModelSpec
  variables: dict[str, Any]
  path: pathlib.Path

  def build(self, **kwargs: Any) -> Any:
    """The Flax module (`registry.build(self.spec, **kwargs)`)."""
    return registry.build(self.spec, **kwargs)


def _save_tree(directory: pathlib.Path, tree: Mapping[str, Any]) -> None:
  import orbax.checkpoint as ocp

  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(directory.absolute(), dict(tree))
  checkpointer.wait_until_finished()
  checkpointer.close()


def save_model(out_dir: str | os.PathLike[str], spec: registry.ModelSpec,
               variables: Mapping[str, Any], *, extra_items: Mapping[str, Any] | None = None,
               provenance: Mapping[str, Any] | None = None, overwrite: bool = False) -> None:
  """Writes a saved model (layout: the module docstring), checked and all-or-nothing.

  Raises:
    structure.StructureError: `variables` do not fit `spec`'s model (nothing is written).
    FileExistsError: `out_dir` exists and not `overwrite`.
  """
  variables = {c: variables[c] for c in ("params", "batch_stats") if c in variables}
  structure.check_structure(variables, _template_collections(spec),
                            f"{spec.name} variables")
  with files.atomic_directory(out_dir, overwrite=overwrite) as tmp:
    _save_tree(tmp / "variables", variables)
    for item, tree in (extra_items or {}).items():
      _save_tree(tmp / item, tree)
    (tmp / SPEC_FILE).write_text(json.dumps({"format": _FORMAT, **spec.to_json()}, indent=2) + "\n")
    (tmp / PROVENANCE_FILE).write_text(json.dumps(dict(provenance or {}), indent=2) + "\n")


def _template_collections(spec: registry.ModelSpec) -> dict[str, Any]:
  template = registry.variables_template(spec)
  return {c: template[c] for c in ("params", "batch_stats") if c in template}


def load_tree(directory: str | os.PathLike[str], item: str = "variables") -> dict[str, Any]:
  """Restores one saved tree ('variables', 'vgg19', ...) as numpy arrays, unchecked."""
  import orbax.checkpoint as ocp

  path = pathlib.Path(directory).absolute() / item
  if not path.is_dir():
    raise FileNotFoundError(f"{path}: no saved '{item}' here (write one with "
                            f"`python -m ip_lap_jax.convert` or `python -m ip_lap_jax.export`)")
  checkpointer = ocp.StandardCheckpointer()
  try:
    tree = checkpointer.restore(path)
  finally:
    checkpointer.close()
  return structure.unflatten({p: np.asarray(v) for p, v in structure.flatten(tree).items()})


def read_provenance(directory: str | os.PathLike[str]) -> dict[str, Any]:
  path = pathlib.Path(directory) / PROVENANCE_FILE
  return json.loads(path.read_text()) if path.is_file() else {}


def read_spec(directory: str | os.PathLike[str]) -> registry.ModelSpec:
  """The spec in `model.json`, or the official one of the model `provenance.json` names."""
  directory = pathlib.Path(directory)
  spec_path = directory / SPEC_FILE
  try:
    if spec_path.is_file():
      return registry.ModelSpec.from_json(json.loads(spec_path.read_text()))
    model = read_provenance(directory).get("model")
  except (ValueError, TypeError) as e:  # JSONDecodeError is a ValueError
    raise CheckpointError(f"{spec_path}: unreadable model spec: {e}") from e
  if model not in registry.NAMES:
    raise CheckpointError(f"{directory}: no {SPEC_FILE} (and no provenance naming a model)")
  return registry.official_spec(model)


def load_model(directory: str | os.PathLike[str], *, expect: str | None = None) -> SavedModel:
  """Loads a saved model and checks its variables against its spec's architecture.

  Args:
    directory: the saved model's folder.
    expect: the registry name it must be (e.g. 'renderer').
  Raises:
    CheckpointError: absent, unreadable, of another model than `expect`, or not fitting
      the spec (every missing, unknown and mis-shaped key is listed).
  """
  directory = pathlib.Path(directory)
  if not (directory / "variables").is_dir():
    raise CheckpointError(
        f"{directory}: no saved {expect or 'model'} here (expected {directory}/variables from "
        f"`python -m ip_lap_jax.convert --src <{expect or 'model'}>.pth --out {directory}` or "
        f"`python -m ip_lap_jax.export`)")
  spec = read_spec(directory)
  if expect is not None and spec.name != expect:
    raise CheckpointError(f"{directory}: holds a {spec.name}, not a {expect}")
  try:
    variables = load_tree(directory)
  except Exception as e:  # orbax raises various types for a corrupt checkpoint
    raise CheckpointError(f"{directory}: cannot read the checkpoint: {e}") from e
  try:
    structure.check_structure(variables, _template_collections(spec),
                              f"{directory}: the {spec.name} checkpoint")
  except structure.StructureError as e:
    raise CheckpointError(str(e)) from e
  return SavedModel(spec, variables, directory)
