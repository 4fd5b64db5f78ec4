"""Many hosts: ``jax.distributed`` start-up, each process's slice of a global batch, and
gathering results to the hosts.

TPU pods and GPU clusters run one Python process per host; every process runs the same
program, sees its local devices (``jax.local_devices()``) and, once
:func:`initialize` has run, all devices of all processes (``jax.devices()``), so a mesh
spans hosts and a jitted step runs on all of them at once::

    zoo.distributed.initialize()           # before anything else touches jax
    mesh = zoo.parallel.make_mesh("data=2,fsdp=8")        # all devices of all hosts
    rows = zoo.distributed.process_rows(mesh, global_batch_size)
    batch = zoo.distributed.global_batch(my_rows_of_the_batch, mesh, global_batch_size)

:func:`initialize` is a no-op for a single process. It starts ``jax.distributed``

* from explicit arguments (``zoo finetune --coordinator HOST:PORT --num-processes N
  --process-id I``),
* or from the environment: ``JAX_COORDINATOR_ADDRESS`` + ``JAX_NUM_PROCESSES`` +
  ``JAX_PROCESS_ID`` (any launcher), or what jax detects by itself: Slurm (``srun``), Open
  MPI (``mpirun``), Cloud TPU pods and GKE TPU slices.

On CPU the processes exchange data with gloo collectives over TCP (``cpu_collectives``),
which is how the tests run two processes on one machine with a ``127.0.0.1`` coordinator.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from zoo.parallel import batch_axes, batch_sharding

ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"


def _int_env(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def detected_launcher() -> str | None:
    """The multi-process launcher this process was started by, judged from the environment
    (``"env"`` for the ``JAX_*`` variables, ``"slurm"``, ``"openmpi"``, ``"tpu"``), or None
    for a plain single process. One-task Slurm / MPI jobs count as single processes."""
    if os.environ.get(ENV_COORDINATOR) and (_int_env(ENV_NUM_PROCESSES) or 1) > 1:
        return "env"
    if all(k in os.environ for k in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID")) \
            and (_int_env("SLURM_NTASKS") or 1) > 1:
        return "slurm"
    if "OMPI_MCA_orte_hnp_uri" in os.environ and (_int_env("OMPI_COMM_WORLD_SIZE") or 1) > 1:
        return "openmpi"
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if len([h for h in hosts.split(",") if h]) > 1 or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "tpu"
    return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, local_device_ids: Sequence[int] | None = None,
               cpu_collectives: str = "gloo", timeout_s: int = 300) -> bool:
    """Starts ``jax.distributed`` when this is one process of many; returns whether it is.

    Explicit arguments win (all three of ``coordinator_address`` ``HOST:PORT``,
    ``num_processes`` and ``process_id``, or none); else the environment decides (see the
    module docstring); else this is a single process and nothing happens. Calling it again
    once initialised does nothing. Must run before any other jax call (jax's rule): it
    raises RuntimeError naming that otherwise.
    """
    if jax.distributed.is_initialized():
        return True
    explicit = {"coordinator_address": coordinator_address, "num_processes": num_processes,
                "process_id": process_id}
    given = [k for k, v in explicit.items() if v is not None]
    if given and len(given) != 3:
        missing = [k for k in explicit if k not in given]
        raise ValueError(f"jax.distributed needs coordinator_address, num_processes and process_id together; "
                         f"{', '.join(missing)} missing")
    launcher = "explicit" if given else detected_launcher()
    if launcher is None:
        return False
    if launcher == "env":
        coordinator_address = os.environ[ENV_COORDINATOR]
        num_processes, process_id = _int_env(ENV_NUM_PROCESSES), _int_env(ENV_PROCESS_ID)
        if process_id is None:
            raise ValueError(f"{ENV_COORDINATOR} and {ENV_NUM_PROCESSES} are set but {ENV_PROCESS_ID} is not")
    if num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process_id={process_id} is not in [0, num_processes={num_processes})")
    if cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id,
                                   local_device_ids=local_device_ids, initialization_timeout=timeout_s)
    except RuntimeError as e:
        if "before any JAX" in str(e) or "backend" in str(e):
            raise RuntimeError("zoo.distributed.initialize() must run before any other jax call "
                               "(jax.devices(), an array, a jitted function)") from e
        raise
    return True


def is_primary() -> bool:
    """Whether this is process 0 (the one that writes logs and final files)."""
    return jax.process_index() == 0


def process_rows(mesh: Mesh, global_rows: int) -> slice:
    """The rows of a ``[global_rows, ...]`` batch split over ``("data", "fsdp")`` of ``mesh``
    that this process's devices hold: the rows it must read. Raises ValueError when they are
    not one contiguous range (a mesh whose batch axes interleave the hosts' devices)."""
    sharding = batch_sharding(mesh)
    n = math.prod(mesh.shape[a] for a in batch_axes(mesh))
    if global_rows % n:
        raise ValueError(f"a batch of {global_rows} rows does not split over the {n} devices of the mesh's "
                         f"batch axes ({', '.join(f'{a}={mesh.shape[a]}' for a in batch_axes(mesh))})")
    spans = sorted({idx[0].indices(global_rows)[:2]
                    for idx in sharding.addressable_devices_indices_map((global_rows,)).values()})
    start, stop = spans[0][0], spans[-1][1]
    covered = sum(b - a for a, b in spans)
    if covered != stop - start:
        raise ValueError(f"process {jax.process_index()} holds rows {spans} of the batch, not one contiguous "
                         f"range: order the mesh so that each host's devices are adjacent on the batch axes")
    return slice(start, stop)


def global_batch(local: Any, mesh: Mesh, global_rows: int) -> Any:
    """The global batch (every array ``[global_rows, ...]``, split over the mesh's batch axes)
    from this process's rows ``local`` (``[rows of process_rows(mesh, global_rows), ...]``).
    With one process, ``local`` is the whole batch."""
    sharding = batch_sharding(mesh)
    rows = process_rows(mesh, global_rows)

    def put(x):
        x = np.asarray(x)
        if x.shape[0] != rows.stop - rows.start:
            raise ValueError(f"process {jax.process_index()} must supply rows {rows.start}:{rows.stop} of the "
                             f"batch ({rows.stop - rows.start} rows), got an array of shape {x.shape}")
        return jax.make_array_from_process_local_data(sharding, x, (global_rows, *x.shape[1:]))

    return jax.tree.map(put, local)


def to_host(tree: Any) -> Any:
    """Every array of ``tree`` as a numpy array of its global value, on every process
    (arrays spread over several hosts are gathered; others are copied from the device)."""
    from jax.experimental import multihost_utils

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(get, tree)


def sync(name: str) -> None:
    """A barrier: every process waits here until all have arrived (no-op for one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


__all__ = ["detected_launcher", "global_batch", "initialize", "is_primary", "process_rows", "sync", "to_host"]
