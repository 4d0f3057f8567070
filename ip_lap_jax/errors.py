"""Errors raised on bad user input (media files), with messages that name the file."""

from __future__ import annotations

import os


class MediaError(ValueError):
  """A media file is missing, unreadable or lacks what is needed.

  The message always starts with the file's path, then the problem, e.g.
  `"speech.mp3: no audio stream"` or `"clip.mp4: cannot decode: Invalid data ..."`.
  """

  def __init__(self, path: str | os.PathLike[str], problem: str):
    self.path = os.fspath(path)
    self.problem = problem
    super().__init__(f"{self.path}: {problem}")

  def __reduce__(self):  # rebuilt from both arguments (raised in a worker process)
    return type(self), (self.path, self.problem)


def require_file(path: str | os.PathLike[str]) -> str:
  """Returns `path` as a string; raises MediaError if it is not an existing file."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise MediaError(path, "no such file")
  if not os.path.isfile(path):
    raise MediaError(path, "not a regular file")
  return path
