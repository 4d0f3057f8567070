"""The naming rule between official PyTorch keys and Flax variable paths.

Split a PyTorch key on '.', join every numeric part to the part before it with '_',
rename the leaf, transpose kernels (docs/CONVENTIONS.md):

    mel_encoder.0.conv_block.1.running_var -> batch_stats mel_encoder_0/conv_block_1/var

Leaves: `weight` -> `kernel` (Conv2d (O,I,kh,kw) -> (kh,kw,I,O), Conv1d (O,I,k) -> (k,I,O),
Linear (out,in) -> (in,out)), `scale` (BatchNorm/LayerNorm) or `embedding` (Embedding),
whichever the template holds; `bias` -> `bias`; `running_mean`/`running_var` ->
batch_stats `mean`/`var`.

Special cases (everything the rule alone does not cover):
  * `<...>.self_attn.in_proj_weight` (3*d, d) / `in_proj_bias` (3*d,): the Flax attention
    keeps q, k, v stacked in one Dense `self_attn/in_proj` (kernel (d, 3*d)), so this is a
    transposition.
  * `fusion_transformer.position_{v,a}.pe` and `<...>.num_batches_tracked`: buffers without
    a Flax parameter (collection 'extras'; `state_dict` checks and keeps them).
  * Reverse direction: a trailing `_<n>` is an index only after the names in
    `_INDEXED_CONTAINERS` (nn.Sequential / nn.ModuleList attributes of the release);
    `spade_layer_1`, `conv_1`, ... are attribute names and stay as they are.
"""

from __future__ import annotations

import re

NBT = "num_batches_tracked"
MODULE_PREFIX = "module."

# nn.Sequential / nn.ModuleList attributes of the release (and `network` of VGG19): only
# after these (and pix2pixHD's `scale<s>_layer<j>`) is a trailing `_<n>` an index.
_INDEXED_CONTAINERS = (
    "mel_encoder", "ref_encoder", "pose_encoder", "audio_encoder", "conv_block", "layers",
    "conv_5", "mlp_shared", "network",
    "netcnnaud", "netcnnlip", "netfcaud", "netfclip",  # SyncNet
    "features", "model",  # LPIPS: torchvision AlexNet, lpips's NetLinLayer
)
_INDEXED_RE = re.compile(
    r"^(" + "|".join(_INDEXED_CONTAINERS) + r"|scale\d+_layer\d+)_(\d+)$")

# Flax kernel layout from the PyTorch weight layout, by rank.
# Rank 5: Conv3d (O, I, d, h, w) <-> (d, h, w, I, O).
TO_FLAX = {5: (2, 3, 4, 1, 0), 4: (2, 3, 1, 0), 3: (2, 1, 0), 2: (1, 0)}
TO_TORCH = {5: (4, 3, 0, 1, 2), 4: (3, 2, 0, 1), 3: (2, 1, 0), 2: (1, 0)}


def strip_module_prefix(key: str) -> str:
  """Drops DataParallel's leading `module.`."""
  return key[len(MODULE_PREFIX):] if key.startswith(MODULE_PREFIX) else key


def torch_key_to_flax(key: str, ndim: int | None = None) -> tuple[str, tuple[str, ...]]:
  """Maps one official key to (collection, path) in the Flax variables.

  Args:
    key: a state_dict key, with or without `module.`.
    ndim: rank of the tensor, to tell `weight` of Conv/Linear (`kernel`, rank >= 2) from
      that of a norm layer (`scale`, rank 1). Embedding weights are rank 2 as well:
      `state_dict_to_variables` resolves `weight` against the template instead.
  Returns:
    ('params' | 'batch_stats' | 'extras', path tuple).
  """
  parts: list[str] = []
  for part in strip_module_prefix(key).split("."):
    if part.isdigit() and parts:
      parts[-1] = f"{parts[-1]}_{part}"
    else:
      parts.append(part)
  *modules, leaf = parts
  if leaf == NBT:
    return "extras", (*modules, leaf)
  if leaf in ("running_mean", "running_var"):
    return "batch_stats", (*modules, leaf[len("running_"):])
  if leaf == "in_proj_weight":
    return "params", (*modules, "in_proj", "kernel")
  if leaf == "in_proj_bias":
    return "params", (*modules, "in_proj", "bias")
  if leaf == "weight":
    return "params", (*modules, "scale" if ndim == 1 else "kernel")
  if leaf == "pe":
    return "extras", (*modules, leaf)
  return "params", (*modules, leaf)


def flax_path_to_torch_key(collection: str, path: tuple[str, ...]) -> str:
  """Inverse of `torch_key_to_flax` (without any `module.` prefix)."""
  *modules, leaf = path
  if collection == "batch_stats":
    leaf = {"mean": "running_mean", "var": "running_var"}[leaf]
  elif modules and modules[-1] == "in_proj":
    modules, leaf = modules[:-1], {"kernel": "in_proj_weight", "bias": "in_proj_bias"}[leaf]
  elif leaf in ("kernel", "scale", "embedding"):
    leaf = "weight"
  parts = []
  for module in modules:
    match = _INDEXED_RE.match(module)
    parts.append(f"{match.group(1)}.{match.group(2)}" if match else module)
  return ".".join([*parts, leaf])
