"""`python -m ip_lap_jax.export --workdir RUN --out CKPT/<model> [--step latest|best|N] [--pth FILE]`

A training run -> the saved model inference, evaluation and fine-tuning read
(`models.store`): `model.json` (the run's spec, written by training beside its
checkpoints), `variables/` (params + batch_stats of the chosen step) and
`provenance.json` (run, step, eval metrics). With `--pth`, also the official-format
`.pth` the PyTorch release loads (`conversion.pth.export_state_dict`; imports torch).

`--step best` picks the step whose eval metric (`config.best_metric`, `best_mode`) is
best among the kept checkpoints; `latest` (default) the newest; N that step.
Put the exported landmark generator and renderer side by side (`CKPT/landmark_generator`,
`CKPT/renderer`) and pass `CKPT` to `infer.py --checkpoint`; any mix of variants works.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
from typing import Any

from ip_lap_jax.models import registry, store, structure

_RUN_SPEC = "model.json"  # written by training into its workdir


class ExportError(ValueError):
  """The run directory lacks what export needs; the message says what and where."""


def write_run_spec(workdir: str | os.PathLike[str], spec: registry.ModelSpec) -> None:
  """Records the trained model's spec in a run directory (called by training)."""
  path = pathlib.Path(workdir) / _RUN_SPEC
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text(json.dumps(spec.to_json(), indent=2) + "\n")
  os.replace(tmp, path)


def _checkpoint_steps(workdir: pathlib.Path) -> list[int]:
  directory = workdir / "checkpoints"
  if not directory.is_dir():
    raise ExportError(f"{workdir}: no checkpoints/ here (is it a training --workdir?)")
  steps = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()
                 and (p / "state").is_dir())
  if not steps:
    raise ExportError(f"{directory}: no complete checkpoint")
  return steps


def _metrics(workdir: pathlib.Path, step: int) -> dict[str, float]:
  """The eval metrics training recorded with a checkpoint (in its `meta` item)."""
  path = workdir / "checkpoints" / str(step) / "meta" / "metadata"
  return json.loads(path.read_text()).get("eval", {}) if path.is_file() else {}


def choose_step(workdir: str | os.PathLike[str], which: str = "latest") -> int:
  """The checkpoint step `which` ('latest', 'best' or a number) names in a run."""
  workdir = pathlib.Path(workdir)
  steps = _checkpoint_steps(workdir)
  if which == "latest":
    return steps[-1]
  if which == "best":
    config = json.loads((workdir / "config.json").read_text())
    metric, mode = config["best_metric"], config["best_mode"]
    scored = [(m[metric], s) for s in steps if metric in (m := _metrics(workdir, s))]
    if not scored:
      raise ExportError(f"{workdir}: no kept checkpoint has the eval metric {metric!r}")
    return (min(scored) if mode == "min" else max(scored))[1]
  if not which.isdigit() or int(which) not in steps:
    raise ExportError(f"{workdir}: no checkpoint at step {which!r}; kept steps: {steps}")
  return int(which)


def run_spec(workdir: str | os.PathLike[str]) -> registry.ModelSpec:
  """The spec training recorded in its run directory."""
  path = pathlib.Path(workdir) / _RUN_SPEC
  if not path.is_file():
    raise ExportError(f"{path}: missing (training writes it at its start)")
  return registry.ModelSpec.from_json(json.loads(path.read_text()))


def load_run_variables(workdir: str | os.PathLike[str], step: int) -> dict[str, Any]:
  """{'params', 'batch_stats'} of a run's checkpoint at `step`, as numpy arrays."""
  import numpy as np
  import orbax.checkpoint as ocp

  path = pathlib.Path(workdir).absolute() / "checkpoints" / str(step) / "state"
  checkpointer = ocp.StandardCheckpointer()
  try:
    state = checkpointer.restore(path)
  finally:
    checkpointer.close()
  variables = {"params": state["params"]}
  if state.get("batch_stats"):
    variables["batch_stats"] = state["batch_stats"]
  return structure.unflatten({p: np.asarray(v) for p, v in structure.flatten(variables).items()})


def export(workdir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
           step: str = "latest", pth_path: str | os.PathLike[str] | None = None,
           overwrite: bool = False) -> dict[str, Any]:
  """Writes the saved model of a run's checkpoint (and optionally a .pth); returns its
  provenance. Nothing is written when any check fails."""
  workdir = pathlib.Path(workdir)
  spec = run_spec(workdir)
  chosen = choose_step(workdir, step)
  if pathlib.Path(out_dir).exists() and not overwrite:
    raise FileExistsError(f"{out_dir} exists; pass --overwrite to replace it")
  variables = load_run_variables(workdir, chosen)
  provenance = {"model": spec.name, "source": str(workdir.absolute()), "step": chosen,
                "eval_metrics": _metrics(workdir, chosen)}
  store.save_model(out_dir, spec, variables, provenance=provenance, overwrite=overwrite)
  if pth_path is not None:
    from ip_lap_jax.conversion import pth  # pylint: disable=import-outside-toplevel
    pth.export_state_dict(variables, pth_path, spec.name)
  return provenance


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m ip_lap_jax.export",
                                   description=__doc__.split("\n\n")[1])
  parser.add_argument("--workdir", required=True, help="the training run's --workdir")
  parser.add_argument("--out", required=True, help="output saved-model directory")
  parser.add_argument("--step", default="latest", help="'latest' (default), 'best' or a step")
  parser.add_argument("--pth", default=None, help="also write an official-format .pth here")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
  args = parser.parse_args(argv)
  try:
    provenance = export(args.workdir, args.out, step=args.step, pth_path=args.pth,
                        overwrite=args.overwrite)
  except (ExportError, FileExistsError, FileNotFoundError, ValueError) as e:
    parser.exit(2, f"error: {e}\n")
  print(f"exported {provenance['model']} step {provenance['step']} -> {args.out}"
        + (f" and {args.pth}" if args.pth else ""))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
