"""`.pth` files: reading the release's checkpoints and writing official-format ones.

The only module of the package that imports torch, and only inside its functions, so
that importing it (or the converter's CLI) costs nothing until a file is read.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Mapping

import numpy as np

from ip_lap_jax.conversion.keys import MODULE_PREFIX
from ip_lap_jax.conversion.state_dict import (PE_KEYS, ConversionError, detect_model,
                                              variables_to_state_dict)


# Models whose published files are bare state_dicts (pytorch-fid's, syncnet_python's and
# torchvision's + lpips's), written back the same way.
BARE_STATE_DICT = ("inception", "syncnet", "lpips")


def read_torch_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
  """The state_dict of a release checkpoint (`{'state_dict': ...}` or a bare state_dict)."""
  import torch  # lazily: only conversion reads .pth files

  # weights_only=False: the release's training checkpoints pickle optimizer state.
  checkpoint = torch.load(os.fspath(path), map_location="cpu", weights_only=False)
  if isinstance(checkpoint, Mapping) and "state_dict" in checkpoint:
    checkpoint = checkpoint["state_dict"]
  if not isinstance(checkpoint, Mapping):
    raise ConversionError(f"{path}: expected a state_dict, found {type(checkpoint).__name__}")
  return dict(checkpoint)


def _torch_sinusoid_table(max_len: int = 512, d_model: int = 512) -> np.ndarray:
  """`sinusoid_table` computed with torch's float32 kernels, as the release computes `pe`."""
  import math

  import torch

  position = torch.arange(0, max_len).float().unsqueeze(1)
  div = (torch.arange(0, d_model, 2).float() * -(math.log(10000.0) / d_model)).exp()
  table = torch.zeros(max_len, d_model)
  table[:, 0::2] = torch.sin(position * div)
  table[:, 1::2] = torch.cos(position * div)
  return table.unsqueeze(0).numpy()


def export_state_dict(
    variables: Mapping[str, Any],
    path: str | os.PathLike[str],
    model: str,
    *,
    vgg19: Mapping[str, Any] | None = None,
    num_batches_tracked: Mapping[str, int] | None = None,
    data_parallel_prefix: bool = False,
) -> None:
  """Writes Flax variables as an official-format .pth (`{'state_dict': ...}`).

  An `inception` or `syncnet` is written as a bare state_dict, the format of
  pytorch-fid's and syncnet_python's files; `lpips` as one bare state_dict of the
  AlexNet `features.*` and the `lin<l>.model.1.weight` heads.

  Args:
    variables: the model's {'params', 'batch_stats'?}.
    path: output .pth.
    model: the model's registry name (checked against the variables' layout).
    vgg19: for a renderer, the VGG19 tree, written as `perceptual.model.network.*`.
    num_batches_tracked: official key -> count (e.g. provenance.json's); 0 where absent.
    data_parallel_prefix: prefix every key with `module.`.
  """
  import torch  # lazily: only conversion writes .pth files

  extras = {k: np.array(v, np.int64) for k, v in (num_batches_tracked or {}).items()}
  state = variables_to_state_dict(variables, extras)
  if model == "vgg19":
    state = {"features." + k[len("network."):]: v for k, v in state.items()}
  if vgg19 is not None:
    if model != "renderer":
      raise ValueError("vgg19 weights belong to a renderer checkpoint only")
    state.update(variables_to_state_dict(vgg19, prefix="perceptual.model."))
  if detect_model(state) != model:
    raise ConversionError(f"these variables are a {detect_model(state)}, not a {model}")
  for key in PE_KEYS:
    if key in state:  # bit-identical to the release's buffer (torch's own sin/exp)
      state[key] = _torch_sinusoid_table()
  prefix = MODULE_PREFIX if data_parallel_prefix else ""
  tensors = {prefix + k: torch.from_numpy(np.array(v)) for k, v in state.items()}
  path = pathlib.Path(path)
  tmp = path.with_name(f".{path.name}.tmp")
  torch.save(tensors if model in BARE_STATE_DICT else {"state_dict": tensors}, tmp)
  os.replace(tmp, path)
