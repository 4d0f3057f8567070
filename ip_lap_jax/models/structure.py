"""Nested variable trees: flatten/unflatten, and the one report of how two trees differ.

Every place that loads weights (the converter, saved models, training's `init_from` /
`vgg_from`) checks them against the model's template and reports all problems at once:
missing, unknown and mis-shaped leaves, by name, through `report`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

Path = tuple[str, ...]


class StructureError(ValueError):
  """Weights do not fit a model; the message lists every problem at once."""


def flatten(tree: Mapping[str, Any], prefix: Path = ()) -> dict[Path, Any]:
  """{'a': {'b': x}} -> {('a', 'b'): x}."""
  flat = {}
  for name, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(flatten(value, (*prefix, name)))
    else:
      flat[(*prefix, name)] = value
  return flat


def unflatten(flat: Mapping[Path, Any]) -> dict[str, Any]:
  """Inverse of `flatten`."""
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = value
  return tree


def report(header: str, problems: Mapping[str, list[str]]) -> str | None:
  """One message listing every problem under its title, or None when there are none.

  Args:
    header: the first line, naming what does not fit what.
    problems: {title ('missing keys', ...): items}; empty lists are left out.
  """
  parts = [f"{len(items)} {title}:\n  " + "\n  ".join(sorted(items))
           for title, items in problems.items() if items]
  return header + "\n" + "\n".join(parts) if parts else None


def shape_problems(found: Mapping[str, Any], expected: Mapping[str, Any],
                   describe: Callable[[Path], str] = "/".join) -> dict[str, list[str]]:
  """Missing, unknown and mis-shaped leaves of `found` against `expected`.

  Args:
    found, expected: nested trees whose leaves have `.shape` (arrays, ShapeDtypeStructs).
    describe: how a path is named in the report.
  """
  got = {p: tuple(v.shape) for p, v in flatten(found).items()}
  want = {p: tuple(v.shape) for p, v in flatten(expected).items()}
  return {
      "missing keys": [f"{describe(p)} {want[p]}" for p in want if p not in got],
      "unknown keys": [f"{describe(p)} {got[p]}" for p in got if p not in want],
      "mis-shaped keys": [f"{describe(p)}: found {got[p]}, model {want[p]}"
                          for p in want if p in got and got[p] != want[p]],
  }


def check_structure(found: Mapping[str, Any], expected: Mapping[str, Any], what: str) -> None:
  """Raises StructureError listing every difference of `found` from `expected`."""
  message = report(f"{what} does not fit the model:", shape_problems(found, expected))
  if message:
    raise StructureError(message)
