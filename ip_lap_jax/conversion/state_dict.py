"""Official state_dicts <-> Flax variables, in NumPy, every key checked.

`state_dict_to_variables` maps each key by the naming rule (`conversion.keys`) onto the
model's template (`models.registry.variables_template`) and reports every unknown,
missing, mis-shaped and duplicate key, and wrong buffer values, in one ConversionError;
`variables_to_state_dict` is the reverse. Two special cases live here:
  * `fusion_transformer.position_{v,a}.pe` (1, 512, 512): fixed sinusoidal buffers, computed
    by the Flax model as constants; conversion checks they equal the table.
  * VGG19: `perceptual.model.network.<i>` (renderer checkpoint) and torchvision
    `features.<i>` both map to the `network_<i>` tree of `VGG19Features`
    (`split_state_dict`).
  * FID Inception (`inception`): pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`, a
    bare state_dict (`Conv2d_1a_3x3.conv.weight`, `Mixed_7c.branch_pool.bn.running_var`,
    `fc.weight`, ...) follows the rule as it is; the file may lack `num_batches_tracked`
    (saved before PyTorch had it), which is fine.
  * SyncNet (`syncnet`): `syncnet_python`'s `syncnet_v2.model`, a bare state_dict
    (`netcnnaud.0.weight`, `netcnnlip.1.running_var`, ...) that follows the rule; its
    Conv3d kernels (O, I, d, h, w) become (d, h, w, I, O).
  * LPIPS (`lpips`): two files merged, torchvision's ImageNet AlexNet (`features.<i>.*`;
    its `classifier.*` dropped) and lpips's heads `weights/v0.1/alex.pth`
    (`lin<l>.model.1.weight`), by `convert.convert_lpips` (CLI: `--model lpips --src
    ALEXNET --heads ALEX`).

No torch here: tensors are read through `.detach().cpu().numpy()` when given.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from ip_lap_jax.conversion.keys import (MODULE_PREFIX, NBT, TO_FLAX, TO_TORCH,
                                        flax_path_to_torch_key, strip_module_prefix,
                                        torch_key_to_flax)
from ip_lap_jax.models.structure import StructureError, flatten, report, unflatten

PE_KEYS = ("fusion_transformer.position_v.pe", "fusion_transformer.position_a.pe")
_VGG_PREFIXES = ("perceptual.model.network.", "features.")


class ConversionError(StructureError):
  """A checkpoint does not fit the model; the message lists every problem at once."""


def sinusoid_table() -> np.ndarray:
  """The `pe` buffer the release stores: [1, 512, 512] (see the landmark generator)."""
  from ip_lap_jax.models.landmark_generator import sinusoid_table as table
  return table(512, 512)


# Largest deviation accepted between a checkpoint's `pe` buffer and `sinusoid_table`. Both
# are float32: the angle pos*div of row pos inherits exp()'s last-ulp differences between
# libraries times pos (up to 511), ~3e-5 between torch and numpy. A different table
# (another formula, sin/cos swapped, a learned embedding) differs by O(1).
PE_TOLERANCE = 1e-3


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor, handled without importing torch
    value = value.detach().cpu().numpy()
  return np.asarray(value)


def state_dict_to_variables(
    state_dict: Mapping[str, Any],
    template_variables: Mapping[str, Any],
    *,
    return_extras: bool = False,
) -> dict[str, Any] | tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Converts an official state_dict to Flax variables shaped like the template.

  Every key is checked: unknown keys, template leaves no key fills, and shape mismatches
  are collected and raised together as one ConversionError; nothing is returned then.

  Args:
    state_dict: {official key: tensor or array}; a leading `module.` is stripped.
    template_variables: the model's variables or `jax.eval_shape(model.init, ...)`
      (leaves need `.shape` and `.dtype`); collections other than params / batch_stats
      are ignored.
    return_extras: also return the buffers without a Flax counterpart.
  Returns:
    {'params': ..., 'batch_stats': ...} of numpy arrays in the template dtypes (no
    'batch_stats' if the template has none), and with `return_extras` a second dict
    {official key without prefix: array} holding `num_batches_tracked` and `pe` buffers.
  Raises:
    ConversionError: listing every unknown, missing and mis-shaped key.
  """
  template = {
      (collection, *path): leaf
      for collection in ("params", "batch_stats") if collection in template_variables
      for path, leaf in flatten(template_variables[collection]).items()
  }
  modules_with_bn = {path[1:-1] for path in template if path[0] == "batch_stats"}
  has_fusion = any(path[1] == "fusion_transformer" for path in template if len(path) > 1)
  out: dict[tuple[str, ...], np.ndarray] = {}
  extras: dict[str, np.ndarray] = {}
  unknown, mis_shaped, bad_values, duplicate = [], [], [], []
  seen: set[str] = set()
  reported: set[Any] = set()  # mis-shaped targets: reported once, not again as missing

  for raw_key, raw_value in state_dict.items():
    key = strip_module_prefix(raw_key)
    value = _to_numpy(raw_value)
    collection, path = torch_key_to_flax(key, value.ndim)
    if key in seen:  # e.g. both `x` and `module.x`
      duplicate.append(raw_key)
      continue
    seen.add(key)
    if collection == "extras":
      if path[-1] == NBT and path[:-1] in modules_with_bn:
        extras[key] = value
      elif key in PE_KEYS and has_fusion:
        want = sinusoid_table()
        if value.shape != want.shape:
          mis_shaped.append(f"{raw_key}: checkpoint {value.shape}, expected {want.shape}")
          reported.add(key)
        elif not np.allclose(value, want, rtol=0, atol=PE_TOLERANCE):
          err = float(np.max(np.abs(value.astype(np.float64) - want)))
          bad_values.append(f"{raw_key}: differs from the sinusoidal table by {err:.3g}")
        extras[key] = value
      else:
        unknown.append(raw_key)
      continue
    flat_path = (collection, *path)
    if flat_path not in template and path[-1] in ("kernel", "scale"):
      # Rank-2 `weight` of an Embedding, or rank-1 `weight` of a 1-element kernel.
      for candidate in ("embedding", "kernel", "scale"):
        if (collection, *path[:-1], candidate) in template:
          flat_path = (collection, *path[:-1], candidate)
          break
    if flat_path not in template:
      unknown.append(raw_key)
      continue
    if flat_path[-1] == "kernel" and value.ndim in TO_FLAX:
      value = value.transpose(TO_FLAX[value.ndim])
    want = template[flat_path]
    if tuple(value.shape) != tuple(want.shape):
      mis_shaped.append(
          f"{raw_key} -> {'/'.join(flat_path)}: checkpoint {tuple(value.shape)} "
          f"(after transposition), model {tuple(want.shape)}")
      reported.add(flat_path)
      continue
    out[flat_path] = np.asarray(value, dtype=want.dtype)

  missing = [flax_path_to_torch_key(path[0], path[1:]) + f" ({'/'.join(path)})"
             for path in template if path not in out and path not in reported]
  if has_fusion:
    missing += [k for k in PE_KEYS if k not in extras and k not in reported]
  message = report("checkpoint does not match the model:", {
      "unknown keys": unknown, "missing keys": missing, "mis-shaped keys": mis_shaped,
      "wrong buffer values": bad_values, "duplicate keys": duplicate})
  if message:
    raise ConversionError(message)

  tree = unflatten(out)
  variables = {c: tree[c] for c in ("params", "batch_stats") if c in tree}
  return (variables, extras) if return_extras else variables


def variables_to_state_dict(
    variables: Mapping[str, Any],
    extras: Mapping[str, Any] | None = None,
    *,
    prefix: str = "",
) -> dict[str, np.ndarray]:
  """Flax variables -> official state_dict of numpy arrays (reverse of the above).

  Args:
    variables: {'params': ..., 'batch_stats'?: ...}.
    extras: buffers to emit as they are (`num_batches_tracked`, `pe`), keyed by official
      key without `prefix`; where absent, `num_batches_tracked` is 0 (int64) and `pe` the
      computed sinusoidal table.
    prefix: prepended to every key (e.g. 'perceptual.model.' for VGG19 weights).
  Returns:
    {official key: np.ndarray}.
  """
  extras = dict(extras or {})
  state: dict[str, np.ndarray] = {}
  for collection in ("params", "batch_stats"):
    for path, leaf in flatten(variables.get(collection, {})).items():
      value = np.asarray(leaf)
      if path[-1] == "kernel" and value.ndim in TO_TORCH:
        value = value.transpose(TO_TORCH[value.ndim])
      key = flax_path_to_torch_key(collection, path)
      state[key] = np.ascontiguousarray(value)
      if collection == "batch_stats" and path[-1] == "var":
        nbt_key = key[: -len("running_var")] + NBT
        state[nbt_key] = np.asarray(extras.get(nbt_key, np.array(0, np.int64)))
  if "fusion_transformer" in variables.get("params", {}):
    for key in PE_KEYS:
      state[key] = np.asarray(extras[key]) if key in extras else sinusoid_table()
  return {prefix + k: v for k, v in state.items()}


def detect_model(keys: Any) -> str:
  """Names the model a state_dict belongs to, from its keys (`module.` allowed)."""
  keys = [strip_module_prefix(k) for k in keys]
  firsts = {k.split(".", 1)[0] for k in keys}
  if {"mel_encoder", "fusion_transformer"} & firsts:
    return "landmark_generator"
  if {"flow_module", "translation"} & firsts:
    return "renderer"
  if any(re.match(r"scale\d+_layer\d+$", f) for f in firsts):
    return "discriminator"
  if firsts <= {"features", "network", "perceptual"} and keys:
    return "vgg19"
  if {"Conv2d_1a_3x3", "Mixed_7c"} & firsts:
    return "inception"
  if {"netcnnaud", "netcnnlip"} & firsts:
    return "syncnet"
  if "lin0" in firsts:
    return "lpips"
  raise ConversionError(f"cannot tell which model these keys belong to: {sorted(firsts)[:10]}")


def _vgg_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """VGG19 keys of a renderer or torchvision state_dict, renamed to `network.<i>.*`."""
  out = {}
  for key, value in state_dict.items():
    key = strip_module_prefix(key)
    for prefix in _VGG_PREFIXES:
      if key.startswith(prefix):
        out["network." + key[len(prefix):]] = value
  return out


def split_state_dict(
    state_dict: Mapping[str, Any], model: str
) -> dict[str, dict[str, Any]]:
  """{item name: state_dict} to convert: 'variables', plus 'vgg19' for a renderer."""
  state_dict = {strip_module_prefix(k): v for k, v in state_dict.items()}
  if model == "vgg19":
    return {"variables": _vgg_state_dict(state_dict)}
  if model == "renderer":
    main = {k: v for k, v in state_dict.items() if not k.startswith("perceptual.")}
    items = {"variables": main}
    vgg = _vgg_state_dict(state_dict)
    if vgg:
      items["vgg19"] = vgg
    return items
  return {"variables": state_dict}
