"""Official IP_LAP PyTorch checkpoints <-> Flax variables (and orbax checkpoints).

The naming rule (docs/CONVENTIONS.md): split a PyTorch key on '.', join every numeric
part to the part before it with '_', rename the leaf, transpose kernels:

    mel_encoder.0.conv_block.1.running_var -> batch_stats mel_encoder_0/conv_block_1/var

Leaves: `weight` -> `kernel` (Conv2d (O,I,kh,kw) -> (kh,kw,I,O), Conv1d (O,I,k) -> (k,I,O),
Linear (out,in) -> (in,out)), `scale` (BatchNorm/LayerNorm) or `embedding` (Embedding),
whichever the template holds; `bias` -> `bias`; `running_mean`/`running_var` ->
batch_stats `mean`/`var`.

Special cases (everything the rule alone does not cover):
  * `<...>.self_attn.in_proj_weight` (3*d, d) / `in_proj_bias` (3*d,): the Flax attention
    keeps q, k, v stacked in one Dense `self_attn/in_proj` (kernel (d, 3*d)), so this is a
    transposition.
  * `fusion_transformer.position_{v,a}.pe` (1, 512, 512): fixed sinusoidal buffers, computed
    by the Flax model as constants; the converter checks they equal the table.
  * `<...>.num_batches_tracked`: no Flax counterpart (Flax BatchNorm uses a fixed momentum);
    kept in `extras` / provenance.json so torch -> Flax -> torch is lossless.
  * VGG19: `perceptual.model.network.<i>` (renderer checkpoint) and torchvision
    `features.<i>` both map to the `network_<i>` tree of `VGG19Features`.
  * FID Inception (`inception`): pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`, a
    bare state_dict (`Conv2d_1a_3x3.conv.weight`, `Mixed_7c.branch_pool.bn.running_var`,
    `fc.weight`, ...) follows the rule as it is; the file may lack `num_batches_tracked`
    (saved before PyTorch had it), which is fine. `export_state_dict` writes it back bare.
  * SyncNet (`syncnet`): `syncnet_python`'s `syncnet_v2.model`, a bare state_dict
    (`netcnnaud.0.weight`, `netcnnlip.1.running_var`, ...) that follows the rule; its
    Conv3d kernels (O, I, d, h, w) become (d, h, w, I, O). Written back bare as well.
  * LPIPS (`lpips`): two files merged, torchvision's ImageNet AlexNet (`features.<i>.*`;
    its `classifier.*` dropped) and lpips's heads `weights/v0.1/alex.pth`
    (`lin<l>.model.1.weight`), by `convert_lpips` (CLI: `--model lpips --src ALEXNET
    --heads ALEX`). Exported as one bare state_dict of both.
  * Reverse direction: a trailing `_<n>` is an index only after the names in
    `_INDEXED_CONTAINERS` (nn.Sequential / nn.ModuleList attributes of the release);
    `spade_layer_1`, `conv_1`, ... are attribute names and stay as they are.

torch is imported lazily, inside the functions that read or write .pth files only.

CLI: python -m ip_lap_jax.convert --src X.pth --out DIR [--model NAME]
(NAME one of MODELS, detected from the keys when left out) writes DIR/variables (orbax:
params + batch_stats), DIR/vgg19 (renderer checkpoints only) and DIR/provenance.json,
atomically (a temp dir renamed into place).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import re
import shutil
import tempfile
from typing import Any, Mapping

import numpy as np

MODELS = ("landmark_generator", "renderer", "discriminator", "vgg19", "inception", "syncnet",
          "lpips")
PE_KEYS = ("fusion_transformer.position_v.pe", "fusion_transformer.position_a.pe")
NBT = "num_batches_tracked"
_MODULE_PREFIX = "module."
_VGG_PREFIXES = ("perceptual.model.network.", "features.")

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
_TO_FLAX = {5: (2, 3, 4, 1, 0), 4: (2, 3, 1, 0), 3: (2, 1, 0), 2: (1, 0)}
_TO_TORCH = {5: (4, 3, 0, 1, 2), 4: (3, 2, 0, 1), 3: (2, 1, 0), 2: (1, 0)}


class ConversionError(ValueError):
  """A checkpoint does not fit the model; the message lists every problem at once."""


# ----------------------------------------------------------------------------- key rule


def strip_module_prefix(key: str) -> str:
  """Drops DataParallel's leading `module.`."""
  return key[len(_MODULE_PREFIX):] if key.startswith(_MODULE_PREFIX) else key


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


# ----------------------------------------------------------------------------- tables


def sinusoid_table() -> np.ndarray:
  """The `pe` buffer the release stores: [1, 512, 512] (see the landmark generator)."""
  from ip_lap_jax.models.landmark_generator import sinusoid_table as table

  return table(512, 512)


# Largest deviation accepted between a checkpoint's `pe` buffer and `sinusoid_table`. Both
# are float32: the angle pos*div of row pos inherits exp()'s last-ulp differences between
# libraries times pos (up to 511), ~3e-5 between torch and numpy. A different table
# (another formula, sin/cos swapped, a learned embedding) differs by O(1).
PE_TOLERANCE = 1e-3


# ----------------------------------------------------------------------------- conversion


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor, handled without importing torch
    value = value.detach().cpu().numpy()
  return np.asarray(value)


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  flat = {}
  for name, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, (*prefix, name)))
    else:
      flat[(*prefix, name)] = value
  return flat


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = value
  return tree


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
      for path, leaf in _flatten(template_variables[collection]).items()
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
    if flat_path[-1] == "kernel" and value.ndim in _TO_FLAX:
      value = value.transpose(_TO_FLAX[value.ndim])
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
  problems = []
  for title, items in (("unknown keys", unknown), ("missing keys", missing),
                       ("mis-shaped keys", mis_shaped), ("wrong buffer values", bad_values),
                       ("duplicate keys", duplicate)):
    if items:
      problems.append(f"{len(items)} {title}:\n  " + "\n  ".join(sorted(items)))
  if problems:
    raise ConversionError("checkpoint does not match the model:\n" + "\n".join(problems))

  tree = _unflatten(out)
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
    for path, leaf in _flatten(variables.get(collection, {})).items():
      value = np.asarray(leaf)
      if path[-1] == "kernel" and value.ndim in _TO_TORCH:
        value = value.transpose(_TO_TORCH[value.ndim])
      key = flax_path_to_torch_key(collection, path)
      state[key] = np.ascontiguousarray(value)
      if collection == "batch_stats" and path[-1] == "var":
        nbt_key = key[: -len("running_var")] + NBT
        state[nbt_key] = np.asarray(extras.get(nbt_key, np.array(0, np.int64)))
  if "fusion_transformer" in variables.get("params", {}):
    for key in PE_KEYS:
      state[key] = np.asarray(extras[key]) if key in extras else sinusoid_table()
  return {prefix + k: v for k, v in state.items()}


# ----------------------------------------------------------------------------- models


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


def model_template(model: str) -> dict[str, Any]:
  """`jax.eval_shape` of the model's init: the shapes every checkpoint is checked against."""
  import jax
  import jax.numpy as jnp

  key = jax.random.key(0)
  f32 = jnp.float32
  if model == "landmark_generator":
    from ip_lap_jax.models.landmark_generator import LandmarkGenerator
    args = (jnp.zeros((1, 5, 80, 16, 1), f32), jnp.zeros((1, 5, 74, 2), f32),
            jnp.zeros((1, 2, 74, 2), f32), jnp.zeros((1, 2, 57, 2), f32))
    return jax.eval_shape(lambda k: LandmarkGenerator().init(k, *args, train=False), key)
  if model == "renderer":
    from ip_lap_jax.models.renderer import Renderer
    args = (jnp.zeros((1, 128, 128, 3), f32), jnp.zeros((1, 5, 128, 128, 3), f32),
            jnp.zeros((1, 1, 128, 128, 3), f32), jnp.zeros((1, 1, 128, 128, 3), f32),
            jnp.zeros((1, 80, 16, 1), f32))
    return jax.eval_shape(lambda k: Renderer().init(k, *args, train=False), key)
  if model == "discriminator":
    from ip_lap_jax.models.discriminator import MultiscaleDiscriminator
    return jax.eval_shape(
        lambda k: MultiscaleDiscriminator().init(k, jnp.zeros((1, 128, 128, 3), f32)), key)
  if model == "vgg19":
    from ip_lap_jax.models.vgg import VGG19Features
    return jax.eval_shape(lambda k: VGG19Features().init(k, jnp.zeros((1, 64, 64, 3), f32)), key)
  if model == "inception":
    from ip_lap_jax.models.inception import InceptionV3
    return jax.eval_shape(lambda k: InceptionV3().init(k, jnp.zeros((1, 299, 299, 3), f32)), key)
  if model == "syncnet":
    from ip_lap_jax.models.syncnet import SyncNet
    args = (jnp.zeros((1, 5, 224, 224, 3), f32), jnp.zeros((1, 13, 20, 1), f32))
    return jax.eval_shape(lambda k: SyncNet().init(k, *args), key)
  if model == "lpips":
    from ip_lap_jax.models.lpips import LPIPS
    image = jnp.zeros((1, 64, 64, 3), f32)
    return jax.eval_shape(lambda k: LPIPS().init(k, image, image), key)
  raise ValueError(f"unknown model {model!r}; expected one of {MODELS}")


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


# ----------------------------------------------------------------------------- files


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


def _sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _save_tree(directory: pathlib.Path, tree: Mapping[str, Any]) -> None:
  import orbax.checkpoint as ocp

  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(directory.absolute(), dict(tree))
  checkpointer.wait_until_finished()
  checkpointer.close()


def load_variables(directory: str | os.PathLike[str], item: str = "variables") -> dict[str, Any]:
  """Restores one converted tree ('variables' or, for a renderer, 'vgg19') as numpy arrays."""
  import orbax.checkpoint as ocp

  path = pathlib.Path(directory).absolute() / item
  if not path.is_dir():
    raise FileNotFoundError(f"{path}: no converted '{item}' here (run ip_lap_jax.convert)")
  checkpointer = ocp.StandardCheckpointer()
  try:
    tree = checkpointer.restore(path)
  finally:
    checkpointer.close()
  return _unflatten({p: np.asarray(v) for p, v in _flatten(tree).items()})


def save_variables(out_dir: str | os.PathLike[str], items: Mapping[str, Mapping[str, Any]],
                   provenance: Mapping[str, Any], *, overwrite: bool = False) -> None:
  """Writes trees (`variables`, optionally `vgg19`) and `provenance.json` into `out_dir`.

  The layout `load_variables` and inference read. Everything goes into a temporary sibling
  directory that is renamed into place at the end: out_dir is either complete or absent.
  Used by the converter and to export models trained here.
  """
  out_dir = pathlib.Path(out_dir)
  if out_dir.exists() and not overwrite:
    raise FileExistsError(f"{out_dir} exists; pass overwrite=True (--overwrite) to replace it")
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
  try:
    for item, tree in items.items():
      _save_tree(tmp / item, tree)
    (tmp / "provenance.json").write_text(json.dumps(dict(provenance), indent=2) + "\n")
    if out_dir.exists():
      shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def convert_checkpoint(
    src: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    model: str | None = None,
    *,
    overwrite: bool = False,
) -> dict[str, Any]:
  """Converts a release .pth into `out_dir`; returns the provenance record.

  Writes out_dir/variables (params + batch_stats), out_dir/vgg19 for renderer checkpoints
  that carry `perceptual.*`, and out_dir/provenance.json. Everything is checked before
  anything is written, and written into a temporary sibling directory that is renamed into
  place at the end: out_dir is either complete or absent.
  """
  src = pathlib.Path(src)
  out_dir = pathlib.Path(out_dir)
  if out_dir.exists() and not overwrite:
    raise FileExistsError(f"{out_dir} exists; pass overwrite=True (--overwrite) to replace it")
  state_dict = read_torch_checkpoint(src)
  model = model or detect_model(state_dict)
  if model not in MODELS:
    raise ValueError(f"unknown model {model!r}; expected one of {MODELS}")
  items = split_state_dict(state_dict, model)
  converted, extras = {}, {}
  for item, sub_state in items.items():
    template = model_template("vgg19" if item == "vgg19" else model)
    converted[item], extras[item] = state_dict_to_variables(sub_state, template, return_extras=True)

  provenance = {
      "source": str(src.absolute()),
      "sha256": _sha256(src),
      "model": model,
      "num_keys": len(state_dict),
      "data_parallel_prefix": any(k.startswith(_MODULE_PREFIX) for k in state_dict),
      "items": sorted(converted),
      "num_batches_tracked": {
          k: int(v) for k, v in sorted(extras["variables"].items()) if k.endswith(NBT)},
  }
  save_variables(out_dir, converted, provenance, overwrite=True)
  return provenance


def convert_lpips(
    backbone: str | os.PathLike[str],
    heads: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> dict[str, Any]:
  """LPIPS (AlexNet, v0.1) from torchvision's ImageNet `alexnet` file (`features.*`; the
  classifier is dropped) and lpips's `weights/v0.1/alex.pth` (`lin<l>.model.1.weight`);
  writes out_dir like `convert_checkpoint` and returns the provenance record."""
  backbone, heads, out_dir = (pathlib.Path(p) for p in (backbone, heads, out_dir))
  if out_dir.exists() and not overwrite:
    raise FileExistsError(f"{out_dir} exists; pass overwrite=True (--overwrite) to replace it")
  alexnet = {k: v for k, v in read_torch_checkpoint(backbone).items()
             if not strip_module_prefix(k).startswith("classifier.")}
  lins = read_torch_checkpoint(heads)
  if any(not strip_module_prefix(k).startswith("lin") for k in lins):
    raise ConversionError(f"{heads}: expected lpips heads `lin<l>.model.1.weight`, got "
                          f"{sorted(lins)[:5]}")
  variables = state_dict_to_variables({**alexnet, **lins}, model_template("lpips"))
  provenance = {
      "source": [str(backbone.absolute()), str(heads.absolute())],
      "sha256": _sha256(backbone) + " " + _sha256(heads),
      "model": "lpips",
      "num_keys": len(alexnet) + len(lins),
      "items": ["variables"],
  }
  save_variables(out_dir, {"variables": variables}, provenance, overwrite=True)
  return provenance


def read_provenance(directory: str | os.PathLike[str]) -> dict[str, Any]:
  return json.loads((pathlib.Path(directory) / "provenance.json").read_text())


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
    model: one of MODELS (checked against the variables' layout).
    vgg19: for a renderer, the VGG19 tree, written as `perceptual.model.network.*`.
    num_batches_tracked: official key -> count (e.g. provenance.json's); 0 where absent.
    data_parallel_prefix: prefix every key with `module.`.
  """
  import torch  # lazily: only conversion writes .pth files

  if model not in MODELS:
    raise ValueError(f"unknown model {model!r}; expected one of {MODELS}")
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
  prefix = _MODULE_PREFIX if data_parallel_prefix else ""
  tensors = {prefix + k: torch.from_numpy(np.array(v)) for k, v in state.items()}
  path = pathlib.Path(path)
  tmp = path.with_name(f".{path.name}.tmp")
  torch.save(tensors if model in ("inception", "syncnet", "lpips") else {"state_dict": tensors}, tmp)
  os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m ip_lap_jax.convert",
      description="Convert an official IP_LAP PyTorch checkpoint (or pytorch-fid's FID "
                  "Inception weights, for eval/fid) to an orbax checkpoint.")
  parser.add_argument("--src", required=True,
                      help="release .pth file, or pt_inception-2015-12-05-6726825d.pth")
  parser.add_argument("--out", required=True, help="output directory (must not exist)")
  parser.add_argument("--model", choices=MODELS, default=None,
                      help="model (default: detected from the keys)")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
  parser.add_argument("--heads", default=None,
                      help="with --model lpips: lpips's weights/v0.1/alex.pth (--src is "
                           "torchvision's ImageNet alexnet .pth)")
  args = parser.parse_args(argv)
  if (args.model == "lpips") != (args.heads is not None):
    parser.error("--heads goes with --model lpips, and --model lpips needs --heads")
  try:
    if args.model == "lpips":
      provenance = convert_lpips(args.src, args.heads, args.out, overwrite=args.overwrite)
    else:
      provenance = convert_checkpoint(args.src, args.out, args.model, overwrite=args.overwrite)
  except (ConversionError, FileExistsError, FileNotFoundError) as e:
    parser.exit(2, f"error: {e}\n")
  print(f"converted {provenance['model']} ({provenance['num_keys']} keys, "
        f"sha256 {provenance['sha256'][:12]}) -> {args.out}: {', '.join(provenance['items'])}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
