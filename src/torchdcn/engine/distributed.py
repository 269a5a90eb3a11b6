"""Distributed data parallel runs started by ``torchrun``: process group, ranks, reductions.

``torchrun --nproc-per-node 2 -m torchdcn train ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` reads them and joins
the group (``gloo`` on CPU, ``nccl`` on CUDA). Without them everything here is a single-process
no-op, so the same code runs either way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run: ``rank`` of ``world_size``, ``local_rank`` on its host."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """The process that writes checkpoints, logs and the progress bar."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when the environment of ``torchrun`` (``WORLD_SIZE`` and ``RANK``) is set."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group that ``torchrun`` describes (no-op without it or when joined).

    ``backend``: ``"gloo"`` or ``"nccl"``; default gloo on CPU, nccl when CUDA is available. On CPU
    each process then uses ``cpu_count / local_world_size`` threads (torch and Numba) unless
    ``OMP_NUM_THREADS`` says otherwise, so processes do not oversubscribe the cores.
    """
    if dist.is_available() and dist.is_initialized():
        return info()
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) <= 1:
        return DistInfo()
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend)
    if backend == "gloo":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
        threads = int(os.environ.get("OMP_NUM_THREADS", 0)) or max(
            1, (os.cpu_count() or 1) // local_world
        )
        set_cpu_threads(threads)
    return info()


def set_cpu_threads(threads: int) -> None:
    """Use ``threads`` CPU threads in torch and in the Numba kernels."""
    torch.set_num_threads(threads)
    try:
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    except ImportError:  # pragma: no cover - numba is a dependency
        pass


def info() -> DistInfo:
    """Rank, world size and local rank of this process (``DistInfo()`` when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(
        dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    )


def barrier() -> None:
    """Wait for every process (no-op when not distributed)."""
    if info().world_size > 1:
        dist.barrier()


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum of ``t`` over the processes (in place; ``t`` itself when not distributed)."""
    if info().world_size > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def backend_needs_cuda() -> bool:
    """True when collectives need CUDA tensors (the ``nccl`` backend)."""
    return info().world_size > 1 and dist.get_backend() == "nccl"


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]``: a picklable object from every process (``[obj]``
    when not distributed). For evaluators that keep every prediction (COCO AP)."""
    world = info().world_size
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def cleanup() -> None:
    """Leave the process group (no-op when not in one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
