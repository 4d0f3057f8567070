"""File helpers shared by every writer: content hashes and all-or-nothing writes.

Outputs are never half written: a file goes to a temporary sibling that is renamed into
place (`os.replace` is atomic on one filesystem), a directory is built beside its final
path and renamed in one step. Pure Python, cheap to import.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any, Iterator


def file_sha256(path: str | os.PathLike[str]) -> str:
  """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
  """Writes `data` as indented JSON; readers see the old file or the new one, never half."""
  path = pathlib.Path(path)
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
  os.replace(tmp, path)


@contextlib.contextmanager
def atomic_directory(out_dir: str | os.PathLike[str], *, overwrite: bool = False
                     ) -> Iterator[pathlib.Path]:
  """Yields a temporary sibling of `out_dir` to fill; renamed into place on success.

  On any exception the temporary directory is removed and `out_dir` is untouched.

  Raises:
    FileExistsError: `out_dir` exists and `overwrite` is False (checked before any work).
  """
  out_dir = pathlib.Path(out_dir)
  if out_dir.exists() and not overwrite:
    raise FileExistsError(f"{out_dir} exists; pass overwrite=True (--overwrite) to replace it")
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
  try:
    yield tmp
    if out_dir.exists():
      shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
