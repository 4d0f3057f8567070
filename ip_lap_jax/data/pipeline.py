"""Deterministic, resumable grain pipelines shared by both training stages.

Example `i` of a run (a global index: step * global_batch + position) is drawn by a
sampler from `np.random.default_rng([seed, i])`, so every example depends only on the
seed and its index: worker processes, host count and interruptions do not change the
batches. The loader's iterator state (grain's, JSON) is saved in checkpoints; resuming
from it continues with exactly the batches an uninterrupted run would have drawn.

Each process loads only its rows of every global batch (`StepMajorSampler`); the rows
become global arrays sharded over the device mesh (`device_batches`), prefetched.
"""

from __future__ import annotations

import collections
import logging
import pathlib
from typing import Any, Iterator, Protocol

import grain.python as grain
import jax
import numpy as np

from ip_lap_jax import parallel
from ip_lap_jax.data import layout

log = logging.getLogger(__name__)

Example = dict[str, np.ndarray]


class SampleError(Exception):
  """A sample could not be built from this draw and must be replaced by another.

  `quiet` marks draws the release rejects by design (a window over a gap left by a
  faceless frame, a mel window past the audio's end); others (corrupt or missing files)
  are logged.
  """

  def __init__(self, message: str, quiet: bool = False):
    super().__init__(message)
    self.quiet = quiet


class Sampler(Protocol):
  """Draws one example; raises SampleError for a draw that must be replaced."""

  def draw(self, rng: np.random.Generator) -> Example:
    ...


def read_clip_list(list_path: str, root: str) -> list[str]:
  """`speaker/clip` names from a file list, or every `<speaker>/<clip>` folder under root."""
  if list_path:
    return layout.read_filelist(list_path)
  return layout.make_filelist(root)


def load_mel(audio_root: str, clip: str) -> np.ndarray:
  """`<audio_root>/<clip>/audio.npy` -> [80, M] float32; SampleError if missing or bad."""
  path = pathlib.Path(audio_root, clip, "audio.npy")
  try:
    return layout.load_mel(path)
  except (OSError, ValueError, EOFError) as e:
    raise SampleError(f"cannot read {path}: {e}") from e


class IndexedSource(grain.RandomAccessDataSource):
  """Record i = the example drawn with rng seeded by (seed, i), retried on SampleError.

  Retries continue the same generator, as the release's `while 1:` loop continues its
  random stream, so a replaced draw is still a function of (seed, i) only.
  `served_log` (a debug record): a file to which each drawn record's key is appended.
  """

  def __init__(self, sampler: Sampler, num_records: int, seed: int, max_retries: int,
               served_log: str | None = None):
    self._sampler = sampler
    self._num_records = int(num_records)
    self._seed = int(seed)
    self._max_retries = int(max_retries)
    self._served_log = served_log

  def __len__(self) -> int:
    return self._num_records

  def __repr__(self) -> str:
    # Checked by grain on set_state: same sampler kind, clip count and seed.
    clips = len(getattr(self._sampler, "clips", ()))
    return f"IndexedSource({type(self._sampler).__name__}, clips={clips}, seed={self._seed})"

  def __getitem__(self, record_key: int) -> Example:
    rng = np.random.default_rng([self._seed, int(record_key)])
    last = None
    for _ in range(self._max_retries):
      try:
        example = self._sampler.draw(rng)
      except SampleError as e:
        last = e
        if not e.quiet:
          log.warning("replacing sample %d: %s", record_key, e)
        continue
      if self._served_log:
        with open(self._served_log, "a", encoding="utf-8") as f:
          f.write(f"{int(record_key)}\n")
      return example
    raise RuntimeError(f"no valid sample after {self._max_retries} draws for record "
                       f"{record_key}; last problem: {last}")


class StepMajorSampler:
  """Maps grain's sampler indices so that host h's j-th example of step t is always the
  global record `t * global_batch + h * host_batch + j`.

  grain's DataLoader hands index i to worker i % W and each worker batches its own
  consecutive records, emitting batches round-robin; the mapping undoes that, so the
  batches do not depend on the number of workers, hosts, or the run length, and a
  resumed run draws what an uninterrupted one would. `first_step` starts later.
  """

  def __init__(self, num_steps: int, global_batch: int, host: int, num_hosts: int,
               first_step: int = 0, num_workers: int = 0):
    if global_batch % num_hosts:
      raise ValueError(f"global batch {global_batch} not divisible by {num_hosts} hosts")
    self._global = global_batch
    self._host_batch = global_batch // num_hosts
    self._host = host
    self._first = first_step
    self._steps = num_steps
    self._workers = max(num_workers, 1)

  def __len__(self) -> int:
    return (self._steps - self._first) * self._host_batch

  def __repr__(self) -> str:
    # grain checks repr(sampler) on set_state; the run length is left out because the
    # index -> record mapping does not depend on it (a run may be extended on resume).
    return (f"StepMajorSampler(global_batch={self._global}, host={self._host}, "
            f"host_batch={self._host_batch}, first={self._first}, workers={self._workers})")

  def step_and_position(self, index: int) -> tuple[int, int]:
    """Sampler index -> (step, position in this host's batch)."""
    worker, r = index % self._workers, index // self._workers
    q, j = divmod(r, self._host_batch)
    return self._first + q * self._workers + worker, j

  def __getitem__(self, index: int) -> grain.RecordMetadata:
    if index < 0:
      raise IndexError(index)
    step, j = self.step_and_position(index)
    if step >= self._steps:
      raise IndexError(index)
    key = step * self._global + self._host * self._host_batch + j
    return grain.RecordMetadata(index=index, record_key=key)


def make_loader(sampler: Sampler, *, num_steps: int, global_batch: int, seed: int,
                num_workers: int = 0, worker_buffer_size: int = 2,
                max_retries: int = 200, first_step: int = 0,
                served_log: str | pathlib.Path | None = None) -> grain.DataLoader:
  """A grain DataLoader of this host's share of `num_steps` global batches.

  Yields dicts of [global_batch / process_count, ...] numpy arrays. `served_log`: see
  IndexedSource.
  """
  hosts = jax.process_count()
  order = StepMajorSampler(num_steps, global_batch, jax.process_index(), hosts, first_step,
                           num_workers)
  source = IndexedSource(sampler, num_steps * global_batch, seed, max_retries,
                         str(served_log) if served_log else None)
  return grain.DataLoader(
      data_source=source,
      sampler=order,
      operations=[grain.Batch(global_batch // hosts, drop_remainder=True)],
      worker_count=num_workers,
      worker_buffer_size=worker_buffer_size,
      shard_options=grain.NoSharding(),
  )


def device_batches(loader_iter: Any, mesh: jax.sharding.Mesh, prefetch: int = 2
                   ) -> Iterator[tuple[bytes, dict[str, jax.Array]]]:
  """(iterator state after this batch, global batch sharded over `mesh`), `prefetch`
  batches ahead. `loader_iter` yields this process's rows (`parallel.shard_batch`).

  The state travels with its batch so that a checkpoint taken after consuming a batch
  records where the loader stood then, not where prefetching has taken it.
  """
  queue: collections.deque = collections.deque()
  for batch in loader_iter:
    state = loader_iter.get_state()
    queue.append((state, parallel.shard_batch(batch, mesh)))
    if len(queue) > max(prefetch, 0):
      yield queue.popleft()
  while queue:
    yield queue.popleft()
