"""One device mesh over every device of every process, and data-parallel steps on it.

`global_mesh()` is the single 1-D mesh (axis 'batch') over `jax.devices()` that training
(both stages' train and eval steps) and inference share. Per-device step functions keep
pmap's programming model: they see one device's share of the batch, the full replicated
state, and reduce with `lax.pmean(..., 'batch')` (gradients, metrics, synchronised
BatchNorm); `lax.axis_index('batch')` is the global device index.

They run as `jax.jit(jax.shard_map(fn, mesh=global_mesh(), ...))`, not `jax.pmap`: since
JAX 0.8 pmap is itself a wrapper over shard_map and new code is pointed at shard_map; the
inputs and outputs are ordinary global `jax.Array`s (batches built from each process's
local share with `jax.make_array_from_process_local_data`, the state replicated with
`PartitionSpec()`), which orbax saves and restores across processes as they are, and the
same mesh serves jit-sharded inference. `check_vma=False` keeps pmap's gradient
semantics: the gradient of a per-device loss w.r.t. the replicated parameters stays
per-device until the step's explicit pmean (with the check on, shard_map would insert a
psum in the transpose of the implicit broadcast and the pmean would then double-count).
Both pmap over global devices and this form were checked to run across 2 processes x 4
CPU devices with gloo collectives in JAX 0.10.2.

With several processes, every program that communicates is compiled ahead of its first
run and the processes meet at a barrier in between (`distributed.barrier` says why).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ip_lap_jax import distributed

AXIS = "batch"
REPLICATED = PartitionSpec()
SHARDED = PartitionSpec(AXIS)


def global_mesh(devices: Sequence[Any] | None = None) -> Mesh:
  """1-D mesh (AXIS) over `devices`, default every device of every process."""
  return Mesh(np.asarray(list(devices) if devices is not None else jax.devices()), (AXIS,))


def is_primary() -> bool:
  """Process 0 writes logs, summaries, samples and run files."""
  return jax.process_index() == 0


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Host pytree (identical on every process) -> global arrays with a full copy per device."""
  sharding = NamedSharding(mesh, REPLICATED)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return jax.tree.map(put, tree)


def fetch(tree: Any) -> Any:
  """Replicated global arrays -> host numpy, read from this process's first copy."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def first_device_share(x: jax.Array) -> np.ndarray:
  """The rows of a batch-sharded global array that live on the mesh's first device
  (only on the process that holds that device)."""
  for shard in x.addressable_shards:
    if shard.index[0].start in (0, None):
      return np.asarray(shard.data)
  raise ValueError("the first device's share is not on this process")


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's rows of a global batch -> global arrays sharded over AXIS.

  Every process passes [global_batch / process_count, ...]; its rows go, in order, to its
  own devices of the mesh, so process p holds global rows p*n..(p+1)*n-1 when the mesh
  lists the devices by process (as `jax.devices()` does).
  """
  sharding = NamedSharding(mesh, SHARDED)
  local = len(mesh.local_devices)
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    if v.shape[0] % local:
      raise ValueError(f"{k}: {v.shape[0]} rows do not divide over {local} local devices")
    out[k] = jax.make_array_from_process_local_data(sharding, v)
  return out


class _MeetAfterCompiling:
  """A jitted function that, with several processes, compiles each new input signature
  ahead of time and then waits for every process before the first run."""

  def __init__(self, jitted: Any, name: str):
    self._jitted = jitted
    self._name = name
    self._compiled: dict[Any, Any] = {}

  def __call__(self, *args: Any) -> Any:
    if jax.process_count() == 1:
      return self._jitted(*args)
    leaves, treedef = jax.tree.flatten(args)
    key = (treedef, tuple((np.shape(x), np.result_type(x), getattr(x, "sharding", None))
                          for x in leaves))
    compiled = self._compiled.get(key)
    if compiled is None:
      compiled = self._jitted.lower(*args).compile()
      distributed.barrier(f"compiled {self._name}")
      self._compiled[key] = compiled
    return compiled(*args)


def data_parallel(fn: Callable[..., Any], mesh: Mesh, in_specs: Any, out_specs: Any,
                  donate_argnums: int | tuple[int, ...] = ()) -> Callable[..., Any]:
  """`fn`, a per-device function reducing over AXIS, compiled over `mesh` (see above)."""
  name = getattr(fn, "__name__", None) or getattr(getattr(fn, "func", None), "__name__", "step")
  return _MeetAfterCompiling(
      jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                            check_vma=False), donate_argnums=donate_argnums), name)


def allgather_bytes(data: bytes) -> list[bytes]:
  """Every process's `data`, in process order (the same list on all processes)."""
  if jax.process_count() == 1:
    return [data]
  distributed.barrier("allgather_bytes")  # each call may compile a new program
  sizes = multihost_utils.process_allgather(np.asarray(len(data), np.int64))
  buf = np.zeros(int(np.max(sizes)), np.uint8)
  buf[:len(data)] = np.frombuffer(data, np.uint8)
  distributed.barrier("allgather_bytes rows")
  rows = multihost_utils.process_allgather(buf)
  return [bytes(rows[p, :int(sizes[p])]) for p in range(len(sizes))]


def agree(value: int, what: str) -> int:
  """`value` after checking that every process computed the same; raises naming them."""
  if jax.process_count() == 1:
    return value
  distributed.barrier("agree")
  values = multihost_utils.process_allgather(np.asarray(value, np.int64))
  if len(set(values.tolist())) > 1:
    raise RuntimeError(f"processes disagree on {what}: "
                       + ", ".join(f"process {p}: {v}" for p, v in enumerate(values.tolist())))
  return value
