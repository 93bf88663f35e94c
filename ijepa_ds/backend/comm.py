"""DeepSpeed's side of the process group: start it, bound every collective, tear it down.

``init_distributed`` exports the resolved launcher variables (``ijepa_ds.distributed``) and
starts DeepSpeed's communication layer, which creates torch's default group (env://
rendezvous). DeepSpeed keeps a clone of the world group of its own; this module is the one
place that knows it exists.
"""

from __future__ import annotations

import importlib
import os
import sys
from datetime import timedelta

from ijepa_ds.backend.guard import check_deepspeed
from ijepa_ds.distributed import DistEnv, default_backend, dist_timeout, init_process_group


def skip_shm_op_build() -> None:
    """Stop DeepSpeed from JIT-compiling its shared-memory comm op on CPU (40-150 s).

    Training never uses it. ``import deepspeed.comm.torch as m`` would bind torch's own module
    (the name shadows), so look the DeepSpeed module up by its full dotted name.
    """
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def init_distributed(
    dist_env: DistEnv, backend: str | None = None, timeout: timedelta | None = None
) -> None:
    """Start torch's default group (``distributed.init_process_group``) and DeepSpeed's
    communication layer on it, with ``timeout`` (``dist_timeout()`` when None) bounding every
    collective, DeepSpeed's own world group included.
    """
    backend = backend or default_backend()
    timeout = timeout if timeout is not None else dist_timeout()
    check_deepspeed()  # before any rank joins: a wrong DeepSpeed fails here, on every rank
    if backend == "gloo":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        skip_shm_op_build()
    init_process_group(dist_env, backend, timeout)
    import deepspeed

    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, timeout=timeout)
    _create_deepspeed_world_group(timeout)


def _create_deepspeed_world_group(timeout: timedelta) -> None:
    """Create DeepSpeed's clone of the world group ourselves, with ``timeout``.

    Every ZeRO collective (gradient reduction, parameter gathers) runs on that clone, which
    DeepSpeed 0.19.8 creates on first use with a ``new_group`` that passes no timeout, so
    torch's default (30 minutes for gloo, 10 for NCCL) would bound them instead of ``timeout``:
    a hung rank would hold the others in the gradient reduction that long. The loop's own
    collective comes after that reduction in each step, so it cannot notice the hang first.
    """
    import torch.distributed as dist
    from deepspeed.utils import groups

    if groups._WORLD_GROUP is None:
        ranks = list(range(dist.get_world_size()))
        groups._WORLD_GROUP = dist.new_group(ranks=ranks, timeout=timeout)


def shutdown_distributed() -> None:
    """After a clean finish: wait for every rank, then destroy all process groups.

    Without this the groups are torn down by the interpreter's finalisers at exit, in no
    particular order and while a faster peer may already be gone. Call it only once nothing
    needs the groups any more (gathers of ZeRO-3 parameters included), and not on an error
    path: the barrier would wait for ranks that are not coming. A no-op without a group.
    """
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        abandon_distributed()


def abandon_distributed() -> None:
    """Destroy all process groups without a barrier, so none is left to the interpreter's
    finalisers. A no-op without a group.

    Only where this rank has no collective in flight, or destroying its group would wait for
    that collective to time out: after an error every rank raised together at a point they
    agreed on through a collective (a non-finite loss under ``stop``, a failed checkpoint
    save), or after any error in code whose collectives all block (``ijepa-ds eval``). Not
    after an arbitrary training error: DeepSpeed may have asynchronous collectives pending.
    """
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    groups = sys.modules.get("deepspeed.utils.groups")  # never imported: nothing to forget
    if groups is not None:
        groups._WORLD_GROUP = None  # destroyed below with the rest
    dist.destroy_process_group()
