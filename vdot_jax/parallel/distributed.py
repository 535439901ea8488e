"""Multi-process start-up and per-host data feeding.

``initialize`` is automatic on TPU pods and under SLURM (jax detects both) and explicit for CPU processes
or custom launchers (coordinator address, process count and id).

**Per-host batch rows.** A training batch [A, B, ...] is sharded on its row axis B over the mesh's batch axes.
Which rows a host's devices hold follows the mesh's device order, which on a TPU slice follows the physical
torus: on ``v5p:4x4x4`` with ``fsdp=16,context=4`` host 0 holds rows [0, 4], with ``fsdp=-1`` [0, 4, 16, 20];
hosts on one context group hold the same rows. ``host_rows(mesh, axes, B, p)`` is that set for process p (a pure
function of the mesh: ``vdot plan`` prints it for every host of a topology); the host loads exactly those rows,
in that order, and ``device_shards`` / ``global_batch`` hand each local device its rows, so any order works.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

_initialized = False


def _auto_cluster() -> str | None:
    if os.environ.get("SLURM_JOB_ID") and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return "slurm"
    # Multi-host TPU slices: the runtime's own variables (a single-host VM has one worker and needs nothing).
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if "," in hosts or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "tpu"
    return None


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               local_device_ids: list[int] | None = None) -> str:
    """Join the job's processes; returns how ('explicit', 'slurm', 'tpu' or 'single')."""
    global _initialized
    if _initialized:
        return "already"
    coordinator = coordinator or os.environ.get("VDOT_COORDINATOR")
    if coordinator:
        num_processes = num_processes if num_processes is not None else int(os.environ["VDOT_NUM_PROCESSES"])
        process_id = process_id if process_id is not None else int(os.environ["VDOT_PROCESS_ID"])
        jax.distributed.initialize(coordinator, num_processes, process_id, local_device_ids=local_device_ids)
        how = "explicit"
    else:
        how = _auto_cluster() or "single"
        if how != "single":
            jax.distributed.initialize()  # jax reads the cluster from the TPU metadata / SLURM environment
    _initialized = True
    return how


def batch_sharding(mesh: Mesh, batch_axes, ndim: int) -> NamedSharding:
    """[A, B, ...] sharded on B over ``batch_axes`` (a mesh axis, a tuple of them, or None: replicated)."""
    return NamedSharding(mesh, PartitionSpec(None, batch_axes, *([None] * (ndim - 2))))


@functools.lru_cache(maxsize=64)
def _device_rows(mesh: Mesh, batch_axes, batch: int, process: int) -> dict:
    """{device of ``process``: the global rows it holds} (rows as a range)."""
    index = batch_sharding(mesh, batch_axes, 2).devices_indices_map((1, batch))
    return {d: range(*idx[1].indices(batch)) for d, idx in index.items() if d.process_index == process}


def host_rows(mesh: Mesh, batch_axes, batch: int, process: int) -> tuple[int, ...]:
    """The rows of a B-row batch that the devices of ``process`` hold, ascending (empty: it holds none)."""
    return tuple(sorted({r for rows in _device_rows(mesh, batch_axes, batch, process).values() for r in rows}))


def device_shards(local: np.ndarray, rows, mesh: Mesh, batch_axes, batch: int, process: int) -> dict:
    """{device of ``process``: its shard [A, b_d, ...]} of the host-local batch ``local`` [A, len(rows), ...], whose
    row i is global row ``rows[i]`` (any order). numpy only: the per-host layout is testable without the hosts."""
    where = {int(r): i for i, r in enumerate(rows)}
    out = {}
    for d, need in _device_rows(mesh, batch_axes, batch, process).items():
        missing = [r for r in need if r not in where]
        if missing:
            raise ValueError(f"process {process} holds batch rows {missing} on {d} but loaded only {list(rows)}")
        out[d] = local[:, [where[r] for r in need]]
    return out


def global_batch(arrays: dict, rows, mesh: Mesh, batch_axes, batch: int) -> dict:
    """Host-local numpy {key: [A, len(rows), ...]} -> global jax arrays [A, B, ...] sharded on B: every local
    device gets its own rows (``device_shards``), whatever their order and whichever rows other hosts hold."""
    out = {}
    for k, v in arrays.items():
        shards = device_shards(np.asarray(v), rows, mesh, batch_axes, batch, jax.process_index())
        devices = list(shards)
        placed = jax.device_put([shards[d] for d in devices], devices)
        out[k] = jax.make_array_from_single_device_arrays((v.shape[0], batch, *v.shape[2:]),
                                                          batch_sharding(mesh, batch_axes, v.ndim), placed)
    return out
