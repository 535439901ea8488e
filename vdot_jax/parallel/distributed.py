"""Multi-process start-up and per-host data feeding.

``initialize`` is automatic on TPU pods and under SLURM (jax detects both) and explicit for CPU processes
or custom launchers (coordinator address, process count and id). Each host then feeds only its own
slice of the global batch; ``global_batch`` assembles the global array without any host holding it all.
"""

from __future__ import annotations

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


def global_batch(local: np.ndarray, mesh: Mesh, spec: PartitionSpec) -> jax.Array:
    """The global array whose process-local part is ``local`` (the leading axis is split across hosts)."""
    local = np.asarray(local)
    global_shape = (local.shape[0] * jax.process_count(), *local.shape[1:])
    return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), local, global_shape)
