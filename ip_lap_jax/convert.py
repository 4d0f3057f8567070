"""`python -m ip_lap_jax.convert --src X.pth --out DIR [--model NAME]`: official PyTorch
checkpoints, and the evaluation networks' published weights (pytorch-fid's FID
Inception, syncnet_python's SyncNet, torchvision's AlexNet + lpips's heads with
`--model lpips --heads`) -> saved models (`models.store`).

NAME is a registry name (`models.registry.NAMES`), detected from the keys when left
out. Writes DIR/model.json (the official spec), DIR/variables (orbax: params +
batch_stats), DIR/vgg19 (renderer checkpoints that carry `perceptual.*`) and
DIR/provenance.json (source, SHA-256, key count, num_batches_tracked, so torch -> Flax ->
torch is lossless), atomically. Every key is checked before anything is written
(`conversion.state_dict`). The reverse direction is `conversion.pth.export_state_dict`
(`python -m ip_lap_jax.export --pth` for models trained here).
"""

from __future__ import annotations

import argparse
import os
import pathlib
from typing import Any

from ip_lap_jax import files
from ip_lap_jax.conversion import pth
from ip_lap_jax.conversion.keys import MODULE_PREFIX, NBT, strip_module_prefix
from ip_lap_jax.conversion.state_dict import (ConversionError, detect_model, split_state_dict,
                                              state_dict_to_variables)
from ip_lap_jax.models import registry, store


def convert_checkpoint(
    src: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    model: str | None = None,
    *,
    overwrite: bool = False,
) -> dict[str, Any]:
  """Converts a release .pth into the saved model `out_dir`; returns the provenance record.

  Raises:
    ConversionError: listing every unknown, missing and mis-shaped key (nothing written).
    FileExistsError: `out_dir` exists and not `overwrite` (checked before reading `src`).
  """
  src = pathlib.Path(src)
  out_dir = pathlib.Path(out_dir)
  if out_dir.exists() and not overwrite:
    raise FileExistsError(f"{out_dir} exists; pass overwrite=True (--overwrite) to replace it")
  state_dict = pth.read_torch_checkpoint(src)
  model = model or detect_model(state_dict)
  if model not in registry.NAMES:
    raise ValueError(f"unknown model {model!r}; expected one of {registry.NAMES}")
  items = split_state_dict(state_dict, model)
  converted, extras = {}, {}
  for item, sub_state in items.items():
    spec = registry.official_spec("vgg19" if item == "vgg19" else model)
    converted[item], extras[item] = state_dict_to_variables(
        sub_state, registry.variables_template(spec), return_extras=True)

  provenance = {
      "source": str(src.absolute()),
      "sha256": files.file_sha256(src),
      "model": model,
      "num_keys": len(state_dict),
      "data_parallel_prefix": any(k.startswith(MODULE_PREFIX) for k in state_dict),
      "items": sorted(converted),
      "num_batches_tracked": {
          k: int(v) for k, v in sorted(extras["variables"].items()) if k.endswith(NBT)},
  }
  extra_items = {k: v for k, v in converted.items() if k != "variables"}
  store.save_model(out_dir, registry.official_spec(model), converted["variables"],
                   extra_items=extra_items, provenance=provenance, overwrite=True)
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
  alexnet = {k: v for k, v in pth.read_torch_checkpoint(backbone).items()
             if not strip_module_prefix(k).startswith("classifier.")}
  lins = pth.read_torch_checkpoint(heads)
  if any(not strip_module_prefix(k).startswith("lin") for k in lins):
    raise ConversionError(f"{heads}: expected lpips heads `lin<l>.model.1.weight`, got "
                          f"{sorted(lins)[:5]}")
  spec = registry.official_spec("lpips")
  variables = state_dict_to_variables({**alexnet, **lins}, registry.variables_template(spec))
  provenance = {
      "source": [str(backbone.absolute()), str(heads.absolute())],
      "sha256": files.file_sha256(backbone) + " " + files.file_sha256(heads),
      "model": "lpips",
      "num_keys": len(alexnet) + len(lins),
      "items": ["variables"],
  }
  store.save_model(out_dir, spec, variables, provenance=provenance, overwrite=True)
  return provenance


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m ip_lap_jax.convert",
      description="Convert an official IP_LAP PyTorch checkpoint (or pytorch-fid's FID "
                  "Inception weights, for eval/fid) to a saved model (orbax + model.json).")
  parser.add_argument("--src", required=True,
                      help="release .pth file, or pt_inception-2015-12-05-6726825d.pth")
  parser.add_argument("--out", required=True, help="output directory (must not exist)")
  parser.add_argument("--model", choices=registry.NAMES, default=None,
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
