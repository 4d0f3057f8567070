"""Many clips in one call: a list of (template, audio, output) jobs and their outcomes.

`read_jobs` reads the `infer.py --jobs` file: a CSV with one `template,audio,output` row
per clip (an optional header row naming those three columns; blank lines and lines
starting with `#` are skipped). Relative paths are taken from the CSV's own folder, so
the file means the same from any working directory. `LipSyncer.run_many` runs them with
one set of loaded and compiled models; `summary` words the outcome.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import pathlib
from typing import Any, Sequence

COLUMNS = ("template", "audio", "output")


@dataclasses.dataclass(frozen=True)
class Job:
  """One clip to make: `template` + `audio` -> `output` (paths)."""
  template: str
  audio: str
  output: str


@dataclasses.dataclass(frozen=True)
class JobOutcome:
  """What became of a job: `result` (an InferenceResult) or `error` (its reason)."""
  job: Job
  result: Any = None
  error: str | None = None

  @property
  def ok(self) -> bool:
    return self.error is None


def read_jobs(path: str | os.PathLike[str]) -> list[Job]:
  """The jobs of a CSV file (format: the module docstring).

  Raises:
    ValueError: a row without exactly three non-empty fields (its line is named).
  """
  path = pathlib.Path(path)
  base = path.parent
  jobs: list[Job] = []
  with open(path, newline="", encoding="utf-8") as f:
    for line, row in enumerate(csv.reader(f), start=1):
      fields = [v.strip() for v in row]
      if not any(fields) or fields[0].startswith("#"):
        continue
      if not jobs and tuple(v.lower() for v in fields) == COLUMNS:
        continue  # header
      if len(fields) != 3 or not all(fields):
        raise ValueError(f"{path}:{line}: expected 3 fields template,audio,output, got {row!r}")
      jobs.append(Job(*(str(base / v) for v in fields)))
  return jobs


def as_jobs(jobs: Sequence[Job | Sequence[str | os.PathLike[str]]]) -> list[Job]:
  """Jobs given as `Job`s or (template, audio, output) triples."""
  return [j if isinstance(j, Job) else Job(*(os.fspath(v) for v in j)) for j in jobs]


def summary(outcomes: Sequence[JobOutcome]) -> str:
  """One line per job (`ok` or `FAILED` with the reason) and a count."""
  lines = []
  for o in outcomes:
    if o.ok:
      lines.append(f"ok      {o.job.output} ({o.result.num_frames} frames)")
    else:
      lines.append(f"FAILED  {o.job.output}: {o.error}")
  failed = sum(not o.ok for o in outcomes)
  lines.append(f"{len(outcomes) - failed} of {len(outcomes)} clips written, {failed} failed")
  return "\n".join(lines)
