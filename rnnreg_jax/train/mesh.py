"""Data parallelism: one `data` mesh axis over every device of every host.

Parameters and optimizer state are replicated; batches and the carried LM
state are sharded on their batch axis. Each host feeds its own share of the
global batch (`jax.make_array_from_process_local_data`). Dropout masks are
drawn from one per-step key over the GLOBAL batch shape, and
`jax_threefry_partitionable` (the default) makes the random bits independent
of the sharding, so results do not depend on the number of devices.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA = "data"


def maybe_initialize_distributed(enabled: bool, coordinator_address: str | None = None,
                                 num_processes: int | None = None,
                                 process_id: int | None = None) -> None:
    """`jax.distributed.initialize(...)` once per process when `enabled`.

    Arguments left None are auto-detected (TPU pods, SLURM, or
    JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID); local
    multi-process runs pass all three.
    """
    if not enabled:
        return
    try:
        if jax.distributed.is_initialized():
            return
    except AttributeError:  # older jax
        pass
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
    logging.info("jax.distributed: process %d of %d, %d devices in all",
                 jax.process_index(), jax.process_count(), jax.device_count())


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh named `data` over all devices (all hosts)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over `data`; other axes whole."""
    return NamedSharding(mesh, P(DATA))


def batch_sharding_for(mesh: Mesh, global_batch: int) -> NamedSharding:
    """Batch-sharded if the batch divides over the devices, else replicated
    (e.g. the batch-1 PTB test protocol on several devices)."""
    if global_batch % mesh.devices.size == 0:
        return batch_sharded(mesh)
    return replicated(mesh)


def global_batch(mesh: Mesh, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This host's share of a batch -> global arrays sharded on the batch axis.

    With one process this is a `device_put`. With several, every host passes
    its own `[B / num_hosts, ...]` share. A batch that cannot be split over
    the devices (batch 1) is replicated, and every host must then pass the
    same full batch (`train_and_evaluate` refuses evaluation sources that split
    such a batch over the hosts: `task.check_shared_eval_batches`).
    """
    nproc = jax.process_count()
    first = next(iter(local.values()))
    global_b = first.shape[0] * nproc
    if global_b % mesh.devices.size != 0:
        sharding = replicated(mesh)
        if nproc == 1:
            return {k: jax.device_put(v, sharding) for k, v in local.items()}
        return {k: jax.make_array_from_process_local_data(sharding, v, v.shape)
                for k, v in local.items()}
    sharding = batch_sharded(mesh)
    if nproc == 1:
        return {k: jax.device_put(v, sharding) for k, v in local.items()}
    return {k: jax.make_array_from_process_local_data(
        sharding, v, (v.shape[0] * nproc, *v.shape[1:])) for k, v in local.items()}


def global_batch_size(local_batch_size: int, mesh: Mesh) -> int:
    """Global batch size from one host's share (replicated batches stay whole)."""
    b = local_batch_size * jax.process_count()
    return b if b % mesh.devices.size == 0 else local_batch_size


def on_any_process(flag: bool) -> bool:
    """Whether `flag` is set on any process: a collective every process must call."""
    return bool(on_any_process_each(np.asarray(flag)))


def on_any_process_each(flags: np.ndarray) -> np.ndarray:
    """For each of this process's boolean `flags`, whether it is set on any process (a
    collective every process must call, with flags of one shape)."""
    from jax.experimental import multihost_utils

    return np.any(multihost_utils.process_allgather(np.asarray(flags, bool)), axis=0)


def agreed_every(n: int, flag: Callable[[], bool]) -> Callable[[], bool]:
    """A check that every process calls equally often: each `n`-th call returns whether
    `flag()` is set on any process (a collective); the others return False without one."""
    calls = 0

    def check() -> bool:
        nonlocal calls
        calls += 1
        return calls % n == 0 and on_any_process(flag())

    return check


def from_first_process(read: Callable[[], object]):
    """`read()` on process 0 (what only it can see: the metrics file it writes), its
    JSON value on every process; with several, a collective every process must call."""
    if jax.process_count() == 1:
        return read()
    from jax.experimental import multihost_utils

    data = json.dumps(read()).encode() if jax.process_index() == 0 else b""
    size = int(multihost_utils.broadcast_one_to_all(np.int32(len(data))))
    buffer = np.frombuffer(data, np.uint8) if data else np.zeros(size, np.uint8)
    sent = multihost_utils.broadcast_one_to_all(buffer)
    return json.loads(np.asarray(sent, np.uint8).tobytes())
