"""Several processes (one per host) as one job: start-up, and stopping together on failure.

`initialize()` joins the job (jax.distributed; SLURM's environment or the
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables).

`fail_together()` bounds how long a failure on one process can leave the others waiting:
without it, the others block in their next collective (gloo on CPU, NCCL on GPU) until a
transport timeout, and the failed process itself waits up to jax's shutdown timeout at
exit. Inside the block, an exception on one process is published in the coordination
service's key-value store ("process P on HOST failed: Error: message"), logged, and the
process exits with status 1; a watcher thread on every other process polls that store
and exits with status 1 after logging the same message, within a few poll intervals. A
process killed outright (no exception to publish) is noticed by the coordination service
after `heartbeat_timeout_s`, which then stops the others with an error naming its task.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import sys
import threading
import time
from typing import Iterator

import jax

log = logging.getLogger(__name__)

_FAILED = "ip_lap_jax/failed/"  # key-value directory: one key per failed process
_STOPPED = "ip_lap_jax/stopped/"  # one key per process that is about to exit


def _others_failed(client, me: int) -> list[str]:
  try:
    failed = client.key_value_dir_get(_FAILED)
  except Exception:  # pylint: disable=broad-except
    return []  # the service is briefly unreachable: look again next time
  return [message for key, message in failed if not key.endswith(f"/{me}")]


def _stop(client, me: int, grace_s: float) -> None:
  """Exits with status 1, process 0 last: it hosts the coordination service, and a peer
  that sees the service gone is aborted by jax (SIGABRT) instead of exiting with 1. Each
  process marks itself stopped and leaves at once; process 0 first waits (up to grace_s)
  for every other process's mark."""
  try:
    client.key_value_set(f"{_STOPPED}{me}", "1")
  except Exception:  # pylint: disable=broad-except
    pass
  if me == 0:
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
      try:
        if len(client.key_value_dir_get(_STOPPED)) >= jax.process_count():
          time.sleep(0.5)  # let them finish exiting
          break
      except Exception:  # pylint: disable=broad-except
        pass
      time.sleep(0.1)
  _exit(1)


# How long a process waits at a barrier for its peers: a large step can take many minutes
# to compile on a busy host.
BARRIER_TIMEOUT_S = 3600
_barriers = itertools.count()


def barrier(what: str, timeout_s: float = BARRIER_TIMEOUT_S) -> None:
  """Returns once every process has called it (in the same order, with the same `what`).

  A barrier of the coordination service, not a collective, so its timeout is ours. XLA's
  CPU collectives (gloo) connect the processes anew for each compiled program on its
  first run and give up after 30 s, so a process that starts a new program while a peer
  is still compiling it fails. Called between compiling and the first run
  (`parallel.data_parallel`), it lines the processes up to within milliseconds there.
  """
  if jax.process_count() == 1:
    return
  _client().wait_at_barrier(f"ip_lap_jax/barrier/{next(_barriers)}/{what}",
                            int(timeout_s * 1000))


def initialize(heartbeat_timeout_s: int = 100) -> None:
  """jax.distributed.initialize(); the process count and id also from JAX_NUM_PROCESSES
  and JAX_PROCESS_ID (jax itself reads only the coordinator address from the
  environment; under SLURM all three come from SLURM's variables)."""
  env = lambda name: int(os.environ[name]) if os.environ.get(name) else None
  jax.distributed.initialize(num_processes=env("JAX_NUM_PROCESSES"),
                             process_id=env("JAX_PROCESS_ID"),
                             heartbeat_timeout_seconds=heartbeat_timeout_s)


def _client():
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  return jax_distributed.global_state.client


def _exit(status: int) -> None:
  """Leaves now: no atexit handlers (jax's would wait for the stopped peers)."""
  for handler in logging.getLogger().handlers:
    handler.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)  # pylint: disable=protected-access


def _watch(client, me: int, stop: threading.Event, poll_s: float, grace_s: float) -> None:
  while not stop.wait(poll_s):
    others = _others_failed(client, me)
    if others:
      log.error("process %d stops because %s", me, "; ".join(others))
      _stop(client, me, grace_s)


@contextlib.contextmanager
def fail_together(poll_s: float = 1.0, grace_s: float = 10.0) -> Iterator[None]:
  """Runs the block; an exception in it on any process stops every process (status 1).

  `grace_s`: how long process 0 (which hosts the coordination service, so leaves last)
  waits at most for the others to stop before exiting.
  """
  if jax.process_count() == 1:
    yield
    return
  client, me = _client(), jax.process_index()
  stop = threading.Event()
  watcher = threading.Thread(target=_watch, args=(client, me, stop, poll_s, grace_s), daemon=True,
                             name="fail_together")
  watcher.start()
  try:
    yield
  except BaseException as e:  # pylint: disable=broad-except
    stop.set()
    others = _others_failed(client, me)
    if others:  # e.g. a collective broken by a peer that failed first: report that one
      log.error("process %d stops because %s (here: %s: %s)", me, "; ".join(others),
                type(e).__name__, e)
      _stop(client, me, grace_s)
    message = f"process {me} on {socket.gethostname()} failed: {type(e).__name__}: {e}"
    log.exception(message)
    try:
      client.key_value_set(f"{_FAILED}{me}", message)
    except Exception:  # pylint: disable=broad-except
      log.error("could not tell the other processes (coordination service unreachable)")
    _stop(client, me, grace_s)
  finally:
    stop.set()
