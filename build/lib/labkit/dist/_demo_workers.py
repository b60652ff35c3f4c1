"""Small worker functions for :func:`labkit.dist.launch`: a demo and the launcher's tests.

They live in a module, not in a notebook, because spawned children import a worker by
name. Each takes ``rank`` and ``world_size`` first, as :func:`~labkit.dist.launch`
passes them. The failing ones (``raise_on_rank``, ``hang_on_rank``, ``exit_on_rank``)
misbehave on one rank only, so a test can check that the launcher reports that rank and
cleans up the others; with ``pid_dir`` set, every rank first writes its process id to
``<pid_dir>/rank<r>.pid`` so the test can check afterwards that none survived.

Used in chapter 11 (Collectives and the network).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["all_reduce_sum", "exit_on_rank", "hang_on_rank", "raise_on_rank", "rank_info"]


def all_reduce_sum(rank: int, world_size: int, values: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum one tensor per rank with ``all_reduce``: rank ``r`` contributes ``values[r]``.

    Args:
        rank: this process's rank.
        world_size: number of processes.
        values: ``world_size`` tensors of the same shape and dtype.

    Returns:
        ``values[0] + ... + values[world_size - 1]``, as every rank sees it.
    """
    if len(values) != world_size:
        raise ValueError(f"all_reduce_sum: values must hold world_size={world_size} tensors, got {len(values)}")
    tensor = values[rank].clone()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def rank_info(rank: int, world_size: int) -> dict[str, Any]:
    """Describe this process: its rank as given and as the process group sees it.

    Args:
        rank: this process's rank.
        world_size: number of processes.

    Returns:
        A dict with ``rank``, ``world_size``, ``group_rank``, ``group_size``, ``pid``,
        ``backend``, ``torch_threads`` and ``omp_num_threads`` (the env variable).
    """
    return {
        "rank": rank,
        "world_size": world_size,
        "group_rank": dist.get_rank(),
        "group_size": dist.get_world_size(),
        "pid": os.getpid(),
        "backend": str(dist.get_backend()),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }


def raise_on_rank(rank: int, world_size: int, bad_rank: int, *, pid_dir: str | None = None) -> int:
    """Raise on ``bad_rank`` while every other rank waits for it in a barrier.

    The barrier never completes, so the other ranks stay blocked until the launcher
    tears them down: this is the case where the parent must not wait for a timeout.

    Args:
        rank: this process's rank.
        world_size: number of processes.
        bad_rank: the rank that raises ``RuntimeError``.
        pid_dir: folder in which to record this process's id, or ``None``.

    Returns:
        ``rank``, on the ranks that get past the barrier (none, when ``bad_rank`` exists).
    """
    _record_pid(pid_dir, rank)
    if rank == bad_rank:
        raise RuntimeError(f"rank {rank} failed on purpose")
    dist.barrier()
    return rank


def hang_on_rank(rank: int, world_size: int, bad_rank: int, seconds: float, *, pid_dir: str | None = None) -> int:
    """Sleep ``seconds`` on ``bad_rank``; every other rank returns at once.

    Args:
        rank: this process's rank.
        world_size: number of processes.
        bad_rank: the rank that sleeps.
        seconds: how long it sleeps.
        pid_dir: folder in which to record this process's id, or ``None``.

    Returns:
        ``rank``.
    """
    _record_pid(pid_dir, rank)
    if rank == bad_rank:
        time.sleep(seconds)
    return rank


def exit_on_rank(rank: int, world_size: int, bad_rank: int, *, code: int = 3, pid_dir: str | None = None) -> int:
    """End ``bad_rank`` abruptly with ``os._exit(code)``, reporting nothing.

    Args:
        rank: this process's rank.
        world_size: number of processes.
        bad_rank: the rank that exits.
        code: its exit code.
        pid_dir: folder in which to record this process's id, or ``None``.

    Returns:
        ``rank``, on the other ranks.
    """
    _record_pid(pid_dir, rank)
    if rank == bad_rank:
        os._exit(code)
    return rank


def _record_pid(pid_dir: str | None, rank: int) -> None:
    """Write this process's id to ``<pid_dir>/rank<rank>.pid`` when ``pid_dir`` is set."""
    if pid_dir is not None:
        Path(pid_dir, f"rank{rank}.pid").write_text(str(os.getpid()))
